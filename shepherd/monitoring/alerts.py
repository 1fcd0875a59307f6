"""Alerts: three levels, three sinks, and one alert per incident.

Levels: `warning` (data drift), `critical` (a performance drop above 5%), `emergency` (a drop
above 15%). The caller (the monitor) picks the level; this module decides whether and where the
alert goes.

Sinks: every alert that fires is a structlog event `alert_raised` (logged at warning, error or
critical for the three levels), a row in the `alerts` table (`GET /api/v1/alerts`), and, when
`AlertSinks.webhook_url` is set, a JSON POST from a background thread (`webhook.py`).

Dedup and cooldown. The incident key is (deployment, kind, key or kind). When the incident's
alert is open (not acknowledged, not superseded) and its last occurrence is less than
`cooldown_s` seconds old, a new occurrence updates that row (occurrences + 1, last_at, details)
and fires no sink again, unless its level is higher than the row's (warning -> critical ->
emergency): then the row's level and message are raised and the sinks fire once more
("escalated"). Otherwise (no open alert, or its last occurrence is `cooldown_s` or more old) the
old row, if any, is closed as superseded (it stays unacknowledged), a new row is created, and the
sinks fire ("new"). Acknowledging an alert closes its incident, so the next occurrence makes a new
alert. `cooldown_s = 0` turns deduplication off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import structlog

from shepherd.errors import InvalidInput
from shepherd.monitoring.webhook import WebhookSender
from shepherd.store import alerts as alert_store
from shepherd.store.alerts import LEVELS, AlertRecord, Outcome
from shepherd.store.sqlite import Database

__all__ = ["LEVELS", "AlertManager", "AlertOutcome", "AlertRecord", "AlertSinks"]

_LOG_METHOD = {"warning": "warning", "critical": "error", "emergency": "critical"}


class AlertSinks(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where alerts go and how often: the cooldown, and the optional webhook."""

    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 3600
    """Seconds after an incident's last occurrence during which a repeat updates the open alert instead of firing again."""
    webhook_url: Annotated[str, msgspec.Meta(pattern=r"^(https?://\S+)?$")] = ""
    """http(s) URL that receives each alert as a JSON POST; empty: no webhook."""
    webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5
    """Seconds one webhook POST may take."""
    webhook_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    """Retries after a failed POST (connection error, timeout, 5xx, 429); other 4xx are not retried."""
    webhook_backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """Wait before the first retry; it doubles each retry, capped at 30 s."""
    webhook_headers: dict[str, str] = {}
    """Extra HTTP headers for the webhook POST (e.g. Authorization)."""


class AlertOutcome(msgspec.Struct, kw_only=True):
    outcome: Outcome
    """new, escalated or deduplicated."""
    alert: AlertRecord

    @property
    def fired(self) -> bool:
        """Whether the sinks fired (a new or escalated alert)."""
        return self.outcome != "deduplicated"


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds, the format of every time in the database."""
    return datetime.fromtimestamp(max(ts, 0.0), UTC).isoformat(timespec="microseconds")


def _check_sinks(sinks: AlertSinks) -> None:
    # Constraints in msgspec.Meta apply on decode; a Struct built in code is checked here.
    try:
        msgspec.convert(msgspec.to_builtins(sinks), AlertSinks)
    except msgspec.ValidationError as err:
        text = str(err)
        field = text.rsplit("$.", 1)[1].rstrip("`") if "$." in text else None
        raise InvalidInput(f"alert sinks: {text}", field=field) from None


class AlertManager:
    """Raises, deduplicates, lists and acknowledges alerts; fans new ones out to the log and a webhook."""

    def __init__(
        self,
        db: Database,
        *,
        log: Any = None,
        webhook_sender: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.log = log if log is not None else structlog.get_logger()
        self.clock = clock
        self._webhook = webhook_sender
        self._lock = threading.Lock()
        self._closed = False

    @property
    def webhook(self) -> WebhookSender:
        """The webhook sender (created on first use, with this manager's logger)."""
        with self._lock:
            if self._webhook is None:
                self._webhook = WebhookSender(log=self.log)
                if self._closed:  # a closed manager starts no thread: the sender drops (and logs) messages
                    self._webhook.close(0)
            return self._webhook

    def raise_alert(
        self,
        deployment: str,
        kind: str,
        level: str,
        message: str,
        details: dict[str, Any],
        *,
        key: str | None = None,
        sinks: AlertSinks,
    ) -> AlertOutcome:
        """Record one occurrence of an incident and fire the sinks if it is new or escalated (see the module docstring)."""
        for name, value in (("deployment", deployment), ("kind", kind)):
            if not value:
                raise InvalidInput(f"an alert needs a non-empty {name}", field=name)
        if level not in LEVELS:
            raise InvalidInput(f"alert level {level!r} is not one of {', '.join(LEVELS)}", field="level")
        _check_sinks(sinks)
        now = self.clock()
        at, open_after = iso(now), iso(now - sinks.cooldown_s)
        outcome, rec = self.db.write(
            lambda c: alert_store.record(
                c, deployment=deployment, kind=kind, level=level, key=key or kind, message=message,
                details=details, at=at, open_after=open_after,
            )
        )
        result = AlertOutcome(outcome=outcome, alert=rec)
        if result.fired:
            self._fire(result, sinks)
        else:
            self.log.debug("alert_deduplicated", alert_id=rec.id, deployment=deployment, kind=kind, occurrences=rec.occurrences)
        return result

    def _fire(self, result: AlertOutcome, sinks: AlertSinks) -> None:
        a = result.alert
        getattr(self.log, _LOG_METHOD[a.level])(
            "alert_raised",
            alert_id=a.id, deployment=a.deployment, kind=a.kind, alert_level=a.level, key=a.key, message=a.message,
            details=a.details, occurrences=a.occurrences, first_at=a.first_at, outcome=result.outcome,
        )
        if sinks.webhook_url:
            payload = {
                "id": a.id, "deployment": a.deployment, "kind": a.kind, "level": a.level, "message": a.message,
                "details": a.details, "first_at": a.first_at, "last_at": a.last_at, "occurrences": a.occurrences,
                "outcome": result.outcome,
            }
            self.webhook.send(
                sinks.webhook_url, payload, timeout_s=sinks.webhook_timeout_s, retries=sinks.webhook_retries,
                backoff_s=sinks.webhook_backoff_s, headers=sinks.webhook_headers,
            )

    def list(
        self,
        *,
        deployment: str | None = None,
        level: str | None = None,
        unacknowledged: bool = False,
        after_id: int = 0,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]:
        """Alerts with id > `after_id`, oldest first, filtered (see `store.alerts.query`)."""
        return self.db.read(
            lambda c: alert_store.query(
                c, deployment=deployment, level=level, unacknowledged=unacknowledged, after_id=after_id,
                since=since, until=until, limit=limit,
            )
        )

    def get(self, alert_id: int) -> AlertRecord | None:
        return self.db.read(lambda c: alert_store.get(c, alert_id))

    def acknowledge(self, alert_id: int, actor: str) -> AlertRecord:
        """Acknowledge an alert and close its incident (audited); NotFound if unknown, Conflict if already acknowledged."""
        at = iso(self.clock())
        return self.db.write(lambda c: alert_store.acknowledge(c, alert_id, actor=actor, at=at))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the webhook thread after delivering what is queued (for at most `timeout_s`)."""
        with self._lock:
            self._closed = True
            sender = self._webhook
        if sender is not None:
            sender.close(timeout_s)
