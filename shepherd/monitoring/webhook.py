"""Alert webhooks: JSON POSTs delivered by one background daemon thread, with retries and backoff.

`send` only queues (the queue is bounded; a full queue drops the message and logs
`alert_webhook_dropped`), so no caller ever waits on a slow receiver. The thread retries
connection errors, timeouts, 5xx and 429 with exponential backoff (`backoff_s`, doubling each try,
capped at `max_backoff_s`; a numeric Retry-After is honoured up to the cap). Any other 4xx is
permanent and not retried. After the last try it logs `alert_webhook_failed` and moves on.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import httpx
import msgspec
import structlog

_STOP = object()


class WebhookJob(msgspec.Struct, kw_only=True, frozen=True):
    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float
    retries: int
    """Retries after the first try: at most `retries + 1` POSTs."""
    backoff_s: float
    alert_id: int | None = None


def redact(url: str) -> str:
    """The URL without credentials or query string, fit for a log line."""
    try:
        u = httpx.URL(url)
        return str(u.copy_with(userinfo=b"", query=None, fragment=None))
    except Exception:  # noqa: BLE001 - a malformed URL is logged as a placeholder
        return "<invalid url>"


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class WebhookSender:
    """Queues webhook POSTs and delivers them from one daemon thread, started on first use."""

    def __init__(self, *, queue_size: int = 1000, max_backoff_s: float = 30.0, log: Any = None) -> None:
        self.queue_size = queue_size
        self.max_backoff_s = max_backoff_s
        self.log = log if log is not None else structlog.get_logger()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._abandon = threading.Event()

    def send(
        self,
        url: str,
        payload: Any,
        *,
        timeout_s: float = 5.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Queue one POST of `payload` as JSON; False (and a log event) when closed or the queue is full."""
        alert_id = payload.get("id") if isinstance(payload, dict) else None
        with self._lock:
            if self._closed or self._queue.qsize() >= self.queue_size:
                self.log.warning("alert_webhook_dropped", url=redact(url), alert_id=alert_id, reason="closed" if self._closed else "queue full")
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
                self._thread.start()
            self._queue.put(
                WebhookJob(
                    url=url, body=msgspec.json.encode(payload), headers={"Content-Type": "application/json", **(headers or {})},
                    timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, alert_id=alert_id,
                )
            )
        return True

    def pending(self) -> int:
        """Messages queued and not yet taken by the thread."""
        return self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, deliver what is queued for up to `timeout_s`, then drop the rest."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join(timeout_s)
        if thread.is_alive():
            self._abandon.set()  # backoff waits end at once; what is left is dropped
            thread.join(1.0)

    def _run(self) -> None:
        with httpx.Client(follow_redirects=False) as client:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                if self._abandon.is_set():
                    self.log.warning("alert_webhook_dropped", url=redact(job.url), alert_id=job.alert_id, reason="shutting down")
                    continue
                try:
                    self.deliver(client, job)
                except Exception:  # the thread must outlive any one message
                    self.log.exception("alert_webhook_failed", url=redact(job.url), alert_id=job.alert_id)

    def deliver(self, client: httpx.Client, job: WebhookJob) -> bool:
        """POST `job` until it succeeds, fails permanently, or runs out of retries; True on a 2xx.

        A redirect is a permanent failure, not a delivery: the alert never reached a receiver, and following it
        would send the alert's body (and its headers) wherever the redirect points. The log names the target."""
        url = redact(job.url)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            error: str | None = None
            hint: float | None = None
            try:
                resp = client.post(job.url, content=job.body, headers=job.headers, timeout=job.timeout_s)
                status = resp.status_code
                if 200 <= status < 300:
                    self.log.debug("alert_webhook_sent", url=url, alert_id=job.alert_id, status=status, attempts=attempt)
                    return True
                if 300 <= status < 400:
                    error = (f"redirected to {redact(resp.headers.get('location', '(no Location)'))}: redirects are not followed; "
                             "set webhook_url to the address the receiver takes POSTs at")
                retryable = status == 429 or status >= 500
                hint = _retry_after(resp) if retryable else None
            except httpx.TransportError as err:  # connection refused, DNS, timeouts, protocol errors
                error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                retryable = not isinstance(err, httpx.UnsupportedProtocol)
            if not retryable or attempt > job.retries:
                self.log.error(
                    "alert_webhook_failed", url=url, alert_id=job.alert_id, attempts=attempt, status=status, error=error, retryable=retryable
                )
                return False
            wait = min(job.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
            if hint is not None:
                wait = min(max(wait, hint), self.max_backoff_s)
            self.log.info("alert_webhook_retry", url=url, alert_id=job.alert_id, attempt=attempt, status=status, error=error, delay_s=wait)
            if self._abandon.wait(wait):
                self.log.error(
                    "alert_webhook_failed", url=url, alert_id=job.alert_id, attempts=attempt, status=status, error=error, retryable=True,
                    reason="shutting down",
                )
                return False

