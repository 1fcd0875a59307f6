"""The SQLite layer: durability pragmas, migrations, all-or-nothing writes, append-only audit."""

from __future__ import annotations

import threading

import apsw
import pytest

from shepherd.store import audit
from shepherd.store.schema import MIGRATIONS
from shepherd.store.sqlite import Database, one


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "s.sqlite", MIGRATIONS, readers=2)
    yield d
    d.close()


def test_wal_and_full_sync(db):
    """Connections use WAL and synchronous=FULL, so a commit survives power loss."""
    assert db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert db.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2


def test_migrations_set_user_version_and_are_idempotent(tmp_path):
    """Opening migrates to len(MIGRATIONS) once; reopening applies nothing again."""
    Database(tmp_path / "m.sqlite", MIGRATIONS).close()
    d = Database(tmp_path / "m.sqlite", MIGRATIONS)
    assert d.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
    d.close()


def test_newer_schema_is_refused(tmp_path):
    """A database from a newer Shepherd is not opened (no silent downgrade)."""
    conn = apsw.Connection(str(tmp_path / "n.sqlite"))
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Database(tmp_path / "n.sqlite", MIGRATIONS)


def test_failed_write_rolls_back_everything(db):
    """An exception inside a write closure undoes every statement of that closure."""

    def work(c):
        c.execute("INSERT INTO models(name, created_at) VALUES ('a', 'now')")
        audit.append(c, actor="t", action="x", target="y")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        db.write(work)
    assert db.read(lambda c: one(c, "SELECT count(*) AS n FROM models")["n"]) == 0
    assert db.read(lambda c: one(c, "SELECT count(*) AS n FROM audit")["n"]) == 0


def test_writes_are_serialised(db):
    """Concurrent writers from many threads lose no update (one writer thread)."""

    def bump(_):
        def work(c):
            n = c.execute("SELECT count(*) FROM models").fetchone()[0]
            c.execute("INSERT INTO models(name, created_at) VALUES (?, 'now')", (f"m{n}",))

        db.write(work)

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.read(lambda c: c.execute("SELECT count(*) FROM models").fetchone()[0]) == 40


def test_audit_is_append_only(db):
    """UPDATE and DELETE on the audit log are refused by the database itself."""
    db.write(lambda c: audit.append(c, actor="a", action="x.y", target="t", before={"v": 1}, after={"v": 2}))
    for sql in ("UPDATE audit SET actor = 'b'", "DELETE FROM audit"):
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            db.write(lambda c, sql=sql: c.execute(sql))
    [entry] = db.read(lambda c: audit.query(c))
    assert (entry.actor, entry.before, entry.after) == ("a", {"v": 1}, {"v": 2})


def test_audit_query_filters(db):
    """Audit queries filter by actor, action prefix (LIKE-safe) and target, and page by id."""
    for i, action in enumerate(["alias.set", "alias.delete", "version_tag", "versionXtag"]):
        db.write(lambda c, i=i, action=action: audit.append(c, actor=f"u{i % 2}", action=action, target=f"t{i}"))
    assert [e.action for e in db.read(lambda c: audit.query(c, action="alias."))] == ["alias.set", "alias.delete"]
    assert [e.action for e in db.read(lambda c: audit.query(c, action="version_"))] == ["version_tag"]
    assert [e.target for e in db.read(lambda c: audit.query(c, actor="u1"))] == ["t1", "t3"]
    assert [e.id for e in db.read(lambda c: audit.query(c, after_id=2, limit=1))] == [3]


def test_audited_change_is_logged_only_after_commit(db):
    """An audited mutation emits one structlog event after commit, and none when it rolls back."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        db.write(lambda c: audit.append(c, actor="a", action="alias.set", target="model:m@prod", after={"version": 2}))

        def failing(c):
            audit.append(c, actor="a", action="alias.delete", target="model:m@prod")
            raise ValueError("no")

        with pytest.raises(ValueError):
            db.write(failing)
    events = [e for e in logs if e["event"].startswith("alias_")]
    assert events == [{"event": "alias_set", "actor": "a", "target": "model:m@prod", "before": None, "after": {"version": 2}, "log_level": "info"}]


def test_lazy_writes_skip_the_commit_fsync_and_are_synced_within_the_interval(tmp_path, monkeypatch):
    """durable=False commits at synchronous=NORMAL; the writer fsyncs the WAL within lazy_sync_s;
    a durable write still commits at FULL and makes the lazy ones before it durable."""
    import os
    import time

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    db = Database(tmp_path / "t.sqlite", MIGRATIONS, readers=1, lazy_sync_s=0.3)
    try:
        mode = lambda c: c.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
        assert db.write(mode, durable=False) == 1  # NORMAL inside the lazy transaction
        t0 = time.monotonic()
        while db.wal_syncs == 0 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert synced == [f"{tmp_path / 't.sqlite'}-wal"] and db.wal_syncs == 1
        assert time.monotonic() - t0 >= 0.2  # not at commit: after the interval

        assert db.write(mode) == 2  # a durable write is FULL whatever came before
        db.write(mode, durable=False)
        db.write(mode)  # its commit fsync covers the lazy one: nothing left to sync
        time.sleep(0.5)
        assert db.wal_syncs == 1
        db.write(mode, durable=False)
    finally:
        db.close()
    assert db.wal_syncs == 2  # close syncs what is pending


def test_lazy_sync_interval_zero_makes_every_write_durable(tmp_path):
    db = Database(tmp_path / "t.sqlite", MIGRATIONS, readers=1, lazy_sync_s=0)
    try:
        assert db.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0], durable=False) == 2
    finally:
        db.close()
    assert db.wal_syncs == 0
