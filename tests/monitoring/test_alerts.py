"""Alerts: dedup and cooldown, escalation, acknowledge, audit, and the webhook sink against a real HTTP server."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.monitoring.alerts import AlertManager, AlertSinks, iso
from shepherd.monitoring.webhook import WebhookSender
from shepherd.store import audit
from shepherd.store.schema import MIGRATIONS
from shepherd.store.sqlite import Database

T0 = 1_900_000_000.0
SINKS = AlertSinks(cooldown_s=600)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "s.sqlite", MIGRATIONS, readers=2)
    yield d
    d.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mgr(db: Database, clock: Clock) -> Iterator[AlertManager]:
    m = AlertManager(db, clock=clock, webhook_sender=WebhookSender(max_backoff_s=0.05))
    yield m
    m.close(timeout_s=5)


def raised(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "alert_raised"]


# ------------------------------------------------------------------------------- dedup, cooldown
def test_repeat_within_cooldown_is_one_alert(mgr, clock):
    """Repeats of an open incident within the cooldown update one row (occurrences, last_at, details) and fire the sinks once."""
    with capture_logs() as logs:
        first = mgr.raise_alert("d", "drift", "warning", "data drift", {"psi": 0.3}, sinks=SINKS)
        clock.now += 300
        second = mgr.raise_alert("d", "drift", "warning", "data drift", {"psi": 0.4}, sinks=SINKS)
        clock.now += 599  # cooldown counts from the last occurrence, not the first
        third = mgr.raise_alert("d", "drift", "warning", "data drift", {"psi": 0.5}, sinks=SINKS)
    assert [first.outcome, second.outcome, third.outcome] == ["new", "deduplicated", "deduplicated"]
    assert not third.fired
    [row] = mgr.list()
    assert row.id == first.alert.id
    assert (row.occurrences, row.details, row.first_at, row.last_at) == (3, {"psi": 0.5}, iso(T0), iso(T0 + 899))
    [event] = raised(logs)
    assert event["alert_id"] == row.id and event["log_level"] == "warning" and event["outcome"] == "new"


def test_repeat_after_cooldown_is_new_alert(mgr, clock):
    """An occurrence more than cooldown_s after the last one starts a new alert; the old row is closed but stays unacknowledged."""
    first = mgr.raise_alert("d", "drift", "warning", "data drift", {}, sinks=SINKS)
    clock.now += 601
    with capture_logs() as logs:
        second = mgr.raise_alert("d", "drift", "warning", "data drift", {}, sinks=SINKS)
    assert second.outcome == "new" and second.alert.id != first.alert.id
    old, new = mgr.list()
    assert old.closed_at == iso(T0 + 601) and old.acknowledged_at is None
    assert new.closed_at is None and new.occurrences == 1
    assert len(raised(logs)) == 1
    assert [a.id for a in mgr.list(unacknowledged=True)] == [old.id, new.id]


def test_zero_cooldown_fires_every_time(mgr):
    """cooldown_s = 0 turns deduplication off: every occurrence is a new alert."""
    sinks = AlertSinks(cooldown_s=0)
    mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=sinks)
    mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=sinks)
    assert [a.occurrences for a in mgr.list()] == [1, 1]


def test_key_and_deployment_separate_incidents(mgr):
    """Occurrences with another key or deployment are other incidents; without a key the kind is the key."""
    a = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS)
    b = mgr.raise_alert("d", "drift", "warning", "m", {}, key="feature:x", sinks=SINKS)
    c = mgr.raise_alert("e", "drift", "warning", "m", {}, sinks=SINKS)
    d = mgr.raise_alert("d", "drift", "warning", "m", {}, key="drift", sinks=SINKS)
    assert [a.outcome, b.outcome, c.outcome, d.outcome] == ["new", "new", "new", "deduplicated"]
    assert d.alert.id == a.alert.id and a.alert.key == "drift" and b.alert.key == "feature:x"


def test_escalation_fires_again_and_raises_level(mgr, clock):
    """A higher level on an open incident fires again and raises the row's level; a lower one is deduplicated."""
    with capture_logs() as logs:
        w = mgr.raise_alert("d", "performance", "warning", "drop 3%", {"drop": 0.03}, sinks=SINKS)
        c = mgr.raise_alert("d", "performance", "critical", "drop 7%", {"drop": 0.07}, sinks=SINKS)
        e = mgr.raise_alert("d", "performance", "emergency", "drop 20%", {"drop": 0.2}, sinks=SINKS)
        again = mgr.raise_alert("d", "performance", "critical", "drop 8%", {"drop": 0.08}, sinks=SINKS)
    assert [w.outcome, c.outcome, e.outcome, again.outcome] == ["new", "escalated", "escalated", "deduplicated"]
    [row] = mgr.list()
    assert (row.level, row.message, row.occurrences, row.details) == ("emergency", "drop 20%", 4, {"drop": 0.08})
    assert [(x["alert_level"], x["log_level"]) for x in raised(logs)] == [("warning", "warning"), ("critical", "error"), ("emergency", "critical")]


def test_bad_input_is_rejected_and_writes_nothing(mgr):
    """An unknown level, an empty kind, non-JSON details or a bad sink setting is InvalidInput naming the field, and nothing is stored."""
    cases = [
        (("d", "drift", "fatal", "m", {}), SINKS, "level"),
        (("d", "", "warning", "m", {}), SINKS, "kind"),
        (("d", "drift", "warning", "m", {"x": object()}), SINKS, "details"),
        (("d", "drift", "warning", "m", {}), AlertSinks(webhook_retries=-1), "webhook_retries"),
        (("d", "drift", "warning", "m", {}), AlertSinks(webhook_url="ftp://example.invalid/x"), "webhook_url"),
    ]
    for args, sinks, field in cases:
        with pytest.raises(InvalidInput) as err:
            mgr.raise_alert(*args, sinks=sinks)
        assert err.value.field == field
    assert mgr.list() == []


def test_numpy_details_are_stored_as_json(mgr):
    """numpy scalars and arrays in details are stored as plain JSON numbers and lists."""
    np = pytest.importorskip("numpy")
    out = mgr.raise_alert("d", "drift", "warning", "m", {"psi": np.float32(0.5), "bins": np.arange(3)}, sinks=SINKS)
    assert out.alert.details == {"psi": 0.5, "bins": [0, 1, 2]}


# ------------------------------------------------------------------------------------ list filters
def test_list_filters(mgr, clock):
    """list filters by deployment, level, unacknowledged, after id, time range and limit, oldest first."""
    a = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS).alert
    clock.now += 10
    b = mgr.raise_alert("d", "performance", "critical", "m", {}, sinks=SINKS).alert
    clock.now += 10
    c = mgr.raise_alert("e", "performance", "emergency", "m", {}, sinks=SINKS).alert
    mgr.acknowledge(b.id, "op")
    ids = lambda **kw: [x.id for x in mgr.list(**kw)]
    assert ids() == [a.id, b.id, c.id]
    assert ids(deployment="d") == [a.id, b.id]
    assert ids(level="emergency") == [c.id]
    assert ids(unacknowledged=True) == [a.id, c.id]
    assert ids(after_id=a.id) == [b.id, c.id]
    assert ids(limit=1) == [a.id]
    assert ids(since=iso(T0 + 5)) == [b.id, c.id]
    assert ids(until=iso(T0 + 15)) == [a.id, b.id]
    with pytest.raises(InvalidInput) as err:
        mgr.list(level="bogus")
    assert err.value.field == "level"


# ------------------------------------------------------------------------------------- acknowledge
def test_ack_closes_incident_so_next_occurrence_is_new(mgr, clock):
    """Acknowledging records who and when and closes the incident; the next occurrence, even within the cooldown, is a new alert."""
    first = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS).alert
    clock.now += 5
    acked = mgr.acknowledge(first.id, "token:abc")
    assert (acked.acknowledged_by, acked.acknowledged_at, acked.closed_at) == ("token:abc", iso(T0 + 5), iso(T0 + 5))
    clock.now += 5
    with capture_logs() as logs:
        again = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS)
    assert again.outcome == "new" and again.alert.id != first.id
    assert len(raised(logs)) == 1


def test_ack_unknown_or_twice_is_an_error(mgr):
    """Acknowledging an unknown alert is NotFound and acknowledging one twice is Conflict, leaving the first acknowledgement."""
    with pytest.raises(NotFound):
        mgr.acknowledge(999, "op")
    a = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS).alert
    mgr.acknowledge(a.id, "first")
    with pytest.raises(Conflict):
        mgr.acknowledge(a.id, "second")
    assert mgr.get(a.id).acknowledged_by == "first"


def test_open_version_alerts_take_the_model_scoped_key_on_upgrade(tmp_path, clock):
    """A database from before keys named the model: its open data-drift incident takes the new key (migration 6), so
    the monitor's next occurrence is folded into it, not raised as a second open alert. Closed ones and other keys stay."""
    path = tmp_path / "old.sqlite"
    old = Database(path, MIGRATIONS[:5], readers=1)
    rows = [("data_drift", "data_drift:1", '{"model": "iris", "version": 1}', None),
            ("error_stream_drift", "error_stream:12", '{"model": "m-2", "version": 12}', None),
            ("data_drift", "data_drift:2", '{"model": "iris", "version": 2}', iso(T0 - 5)),
            ("custom", "custom:1", '{"model": "iris"}', None)]
    for kind, key, details, closed in rows:
        old.write(lambda c, kind=kind, key=key, details=details, closed=closed: c.execute(
            "INSERT INTO alerts (deployment, kind, level, dedup_key, message, details, first_at, last_at, closed_at) "
            "VALUES ('d', ?, 'warning', ?, 'm', ?, ?, ?, ?)", (kind, key, details, iso(T0 - 10), iso(T0 - 10), closed)))
    old.close()
    db = Database(path, MIGRATIONS, readers=1)
    try:
        keys = [k for (k,) in db.read(lambda c: c.execute("SELECT dedup_key FROM alerts ORDER BY id").fetchall())]
        assert keys == ["data_drift:iris:1", "error_stream:m-2:12", "data_drift:2", "custom:1"]
        mgr = AlertManager(db, clock=clock)
        out = mgr.raise_alert("d", "data_drift", "warning", "again", {"model": "iris", "version": 1}, key="data_drift:iris:1", sinks=SINKS)
        assert out.alert.id == 1 and out.alert.occurrences == 2
        mgr.close(timeout_s=5)
    finally:
        db.close()


def test_ack_is_audited(mgr, db):
    """An acknowledgement writes one audit entry (actor, action, target, before, after) in the same transaction; a refused one writes none."""
    a = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=SINKS).alert
    mgr.acknowledge(a.id, "token:abc")
    with pytest.raises(Conflict):
        mgr.acknowledge(a.id, "token:def")
    [entry] = db.read(lambda c: audit.query(c, action="alert."))
    assert (entry.actor, entry.action, entry.target) == ("token:abc", "alert.acknowledge", f"alert:{a.id}")
    assert entry.before["acknowledged_at"] is None and entry.after["acknowledged_by"] == "token:abc"


# ---------------------------------------------------------------------------------------- webhook
class Receiver:
    """A loopback HTTP server answering POSTs with scripted statuses (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), body))
                status = receiver.statuses[min(len(receiver.posts), len(receiver.statuses)) - 1]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "https://elsewhere.example/hook")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def hook(url: str, **kw: Any) -> AlertSinks:
    return AlertSinks(**{"cooldown_s": 600, "webhook_url": url, "webhook_backoff_s": 0.01, "webhook_timeout_s": 2, **kw})


def test_webhook_retries_5xx_with_backoff_then_delivers(mgr, receiver):
    """A webhook answering 500 twice then 200 receives three POSTs of the alert's JSON, with backoff doubling between tries."""
    r = receiver([500, 500, 200])
    with capture_logs() as logs:
        out = mgr.raise_alert("d", "drift", "warning", "data drift", {"psi": 0.3}, sinks=hook(r.url, webhook_headers={"X-Token": "s3"}))
        mgr.close(timeout_s=5)
    assert len(r.posts) == 3
    headers, body = r.posts[-1]
    assert headers["Content-Type"] == "application/json" and headers["X-Token"] == "s3"
    sent = json.loads(body)
    assert {k: sent[k] for k in ("id", "deployment", "kind", "level", "message", "details", "first_at", "occurrences")} == {
        "id": out.alert.id, "deployment": "d", "kind": "drift", "level": "warning", "message": "data drift",
        "details": {"psi": 0.3}, "first_at": out.alert.first_at, "occurrences": 1,
    }
    assert all(b == body for _, b in r.posts)
    assert [e["delay_s"] for e in logs if e["event"] == "alert_webhook_retry"] == [0.01, 0.02]
    assert not [e for e in logs if e["event"] == "alert_webhook_failed"]


def test_webhook_4xx_is_not_retried(mgr, receiver):
    """A 400 from the webhook is permanent: one POST, then `alert_webhook_failed`."""
    r = receiver([400])
    with capture_logs() as logs:
        mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=hook(r.url))
        mgr.close(timeout_s=5)
    assert len(r.posts) == 1
    [failed] = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert (failed["status"], failed["attempts"], failed["retryable"]) == (400, 1, False)


@pytest.mark.parametrize("status", [301, 307, 308])
def test_webhook_redirect_is_a_failure_not_a_delivery(mgr, receiver, status):
    """A webhook that answers with a redirect did not take the alert: one POST, not followed, and `alert_webhook_failed`
    naming where it points (a 3xx is not a delivery)."""
    r = receiver([status])
    with capture_logs() as logs:
        mgr.raise_alert("d", "drift", "emergency", "m", {}, sinks=hook(r.url))
        mgr.close(timeout_s=5)
    assert len(r.posts) == 1
    [failed] = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert (failed["status"], failed["attempts"], failed["retryable"]) == (status, 1, False)
    assert "https://elsewhere.example/hook" in failed["error"]
    assert not [e for e in logs if e["event"] == "alert_webhook_sent"]


def test_webhook_429_is_retried(mgr, receiver):
    """A 429 from the webhook is retried like a 5xx."""
    r = receiver([429, 200])
    mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=hook(r.url))
    mgr.close(timeout_s=5)
    assert len(r.posts) == 2


def test_unreachable_webhook_gives_up_without_raising(mgr):
    """An unreachable webhook is tried 1 + webhook_retries times with capped exponential backoff, then logged as `alert_webhook_failed`; the alert is still stored."""
    with capture_logs() as logs:
        out = mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=hook(_dead_url(), webhook_retries=4))
        mgr.close(timeout_s=5)
    assert out.outcome == "new" and mgr.list()[0].id == out.alert.id
    retries = [e for e in logs if e["event"] == "alert_webhook_retry"]
    assert [e["delay_s"] for e in retries] == [0.01, 0.02, 0.04, 0.05]  # capped at max_backoff_s = 0.05
    assert all(e["error"].startswith("ConnectError") for e in retries)
    [failed] = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert failed["attempts"] == 5 and failed["alert_id"] == out.alert.id


def test_deduplicated_alert_does_not_post_but_escalation_does(mgr, receiver):
    """Only new and escalated alerts reach the webhook."""
    r = receiver([200])
    mgr.raise_alert("d", "performance", "critical", "m", {}, sinks=hook(r.url))
    mgr.raise_alert("d", "performance", "critical", "m", {}, sinks=hook(r.url))
    mgr.raise_alert("d", "performance", "emergency", "m", {}, sinks=hook(r.url))
    mgr.close(timeout_s=5)
    assert [(json.loads(b)["level"], json.loads(b)["outcome"]) for _, b in r.posts] == [("critical", "new"), ("emergency", "escalated")]


def test_raise_never_waits_for_webhook_and_close_is_bounded(db, clock):
    """raise_alert returns at once while the webhook backs off for a long time, and close() gives up after its timeout."""
    mgr = AlertManager(db, clock=clock)
    start = time.monotonic()
    with capture_logs() as logs:
        mgr.raise_alert("d", "drift", "warning", "m", {}, sinks=hook(_dead_url(), webhook_backoff_s=30))
        raised_in = time.monotonic() - start
        mgr.close(timeout_s=0.3)
        closed_in = time.monotonic() - start
        mgr.raise_alert("d", "other", "warning", "m", {}, sinks=hook(_dead_url()))  # after close: stored, webhook dropped
    assert raised_in < 0.5 and closed_in < 3
    [failed] = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert failed["reason"] == "shutting down"
    assert [e["reason"] for e in logs if e["event"] == "alert_webhook_dropped"] == ["closed"]
    assert len(mgr.list()) == 2


def test_close_delivers_what_is_queued(db, clock, receiver):
    """close() drains the queue: every alert raised before it reaches the webhook."""
    r = receiver([200])
    mgr = AlertManager(db, clock=clock)
    for n in range(20):
        mgr.raise_alert("d", f"kind{n}", "warning", "m", {}, sinks=hook(r.url))
    mgr.close(timeout_s=10)
    assert sorted(json.loads(b)["kind"] for _, b in r.posts) == sorted(f"kind{n}" for n in range(20))
