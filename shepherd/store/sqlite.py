"""apsw connection handling: WAL, one writer thread fed with closures, a pool of readers, migrations.

Modelled on datasette's `Database`: every write is a function run on the single writer thread
inside one `BEGIN IMMEDIATE ... COMMIT`, so a multi-step change is all-or-nothing. Reads run on a
pool of read-only connections. `synchronous=FULL` makes a committed transaction survive power loss
in WAL mode (NORMAL would not).

Lazy writes (`durable=False`, for high-rate data whose last second may go on power loss:
experiment tracking) commit with `synchronous=NORMAL`, which skips the fsync: the commit is in
the OS page cache, so a process crash loses nothing, and the writer fsyncs the WAL file within
`lazy_sync_s` of the first unsynced commit (or sooner: any durable commit fsyncs the WAL, and the
WAL is sequential, so it covers every lazy commit before it). A durable write is never weakened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import apsw
import structlog

log = structlog.get_logger()
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000


def _connect(path: Path, *, readonly: bool = False) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA foreign_keys=ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def rows(conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
    """Run a query and return its rows as dicts keyed by column name."""
    cur = conn.execute(sql, params)
    try:
        names = [d[0] for d in cur.get_description()]
    except apsw.ExecutionCompleteError:
        return []
    return [dict(zip(names, r)) for r in cur]


def one(conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
    """Run a query and return its first row as a dict, or None."""
    found = rows(conn, sql, params)
    return found[0] if found else None


_after_commit: dict[int, list[Callable[[], None]]] = {}


def after_commit(conn: apsw.Connection, fn: Callable[[], None]) -> None:
    """Run `fn` once the current write transaction on `conn` commits; drop it if it rolls back."""
    _after_commit.setdefault(id(conn), []).append(fn)


def migrate(conn: apsw.Connection, migrations: Sequence[str]) -> int:
    """Apply the migrations beyond `PRAGMA user_version`, each in its own transaction."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(migrations):
        raise RuntimeError(f"database schema version {current} is newer than this Shepherd ({len(migrations)})")
    for number, script in enumerate(migrations[current:], start=current + 1):
        with conn:
            conn.execute(script)
            conn.execute(f"PRAGMA user_version={number}")
        log.info("schema_migrated", version=number)
    return len(migrations)


class Database:
    """One SQLite file: a writer thread that runs closures in transactions, and a reader pool."""

    def __init__(self, path: Path, migrations: Sequence[str], *, readers: int = 4, lazy_sync_s: float = 1.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(path)
        migrate(self._writer, migrations)
        self._jobs: queue.SimpleQueue[tuple[Callable[[apsw.Connection], Any], concurrent.futures.Future, bool] | None]
        self._jobs = queue.SimpleQueue()
        self.lazy_sync_s = lazy_sync_s
        """Longest a lazy (durable=False) commit stays unsynced; 0 makes every write durable."""
        self._unsynced_since: float | None = None
        self._synchronous = "FULL"
        self.wal_syncs = 0
        """fsyncs of the WAL done for lazy commits (observability and tests)."""
        self._readers: queue.SimpleQueue[apsw.Connection] = queue.SimpleQueue()
        self._reader_conns = [_connect(path, readonly=True) for _ in range(readers)]
        for c in self._reader_conns:
            self._readers.put(c)
        self._thread = threading.Thread(target=self._run, name=f"sqlite-writer:{path.name}", daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        conn = self._writer
        while True:
            if self._unsynced_since is None:
                job = self._jobs.get()
            else:
                try:
                    job = self._jobs.get(timeout=max(0.0, self._unsynced_since + self.lazy_sync_s - time.monotonic()))
                except queue.Empty:
                    self._sync_wal()
                    continue
            if job is None:
                break
            fn, fut, durable = job
            if not fut.set_running_or_notify_cancel():
                continue
            durable = durable or self.lazy_sync_s <= 0
            try:
                mode = "FULL" if durable else "NORMAL"
                if mode != self._synchronous:
                    conn.execute(f"PRAGMA synchronous={mode}")
                    self._synchronous = mode
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
                if durable:
                    self._unsynced_since = None  # this commit's fsync covered the lazy ones before it
                elif self._unsynced_since is None:
                    self._unsynced_since = time.monotonic()
                elif time.monotonic() - self._unsynced_since >= self.lazy_sync_s:
                    self._sync_wal()  # a writer that is never idle still syncs on time
            except BaseException as err:  # handed to the caller
                _after_commit.pop(id(conn), None)
                if not conn.get_autocommit():
                    try:
                        conn.execute("ROLLBACK")
                    except apsw.Error:
                        log.exception("sqlite_rollback_failed")
                fut.set_exception(err)
                continue
            fut.set_result(result)
            for callback in _after_commit.pop(id(conn), []):
                try:
                    callback()
                except Exception:  # a logging failure must never stop the writer
                    pass

    def _sync_wal(self) -> None:
        """fsync the WAL file: every commit so far is then on disk."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # no WAL (nothing written since a checkpoint reset it)
            self._unsynced_since = None
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._unsynced_since = None
        self.wal_syncs += 1

    def submit(self, fn: Callable[[apsw.Connection], T], *, durable: bool = True) -> concurrent.futures.Future[T]:
        """Queue `fn(conn)` to run in one transaction on the writer thread.

        durable=False: a lazy write (module docstring): on disk within `lazy_sync_s`, not at once."""
        if self._closed:
            raise RuntimeError("database is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut, durable))
        return fut

    def write(self, fn: Callable[[apsw.Connection], T], *, durable: bool = True) -> T:
        """Run `fn(conn)` in one write transaction and wait for its result (or exception)."""
        return self.submit(fn, durable=durable).result()

    async def awrite(self, fn: Callable[[apsw.Connection], T], *, durable: bool = True) -> T:
        """Like `write`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, durable=durable))

    def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run `fn(conn)` on a pooled read-only connection, in one read transaction."""
        conn = self._readers.get()
        try:
            with conn:
                return fn(conn)
        finally:
            self._readers.put(conn)

    async def aread(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Like `read`, run in a worker thread so the event loop never waits on SQLite."""
        return await anyio.to_thread.run_sync(self.read, fn)

    def backup_to(self, dest: Path) -> int:
        """Copy the database to `dest` with SQLite's online backup API, in one step: one consistent
        snapshot (a read transaction in WAL mode), taken while writes go on. Returns the schema version."""
        src = _connect(self.path, readonly=True)
        try:
            out = apsw.Connection(str(dest))
            try:
                with out.backup("main", src, "main") as b:
                    b.step(-1)
                out.execute("PRAGMA journal_mode = DELETE")
                (version,) = out.execute("PRAGMA user_version").fetchone()
            finally:
                out.close()
        finally:
            src.close()
        return int(version)

    def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join()
        if self._unsynced_since is not None:
            self._sync_wal()
        self._writer.close()
        for c in self._reader_conns:
            c.close()
