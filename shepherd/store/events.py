"""DuckDB: the prediction log, feedback, reference profiles and monitoring results.

One file, `<data_dir>/events.duckdb`. `EventStore` owns one connection; every unit of work
takes its own cursor (`cursor()`), which DuckDB makes safe across threads. Appends arrive as Arrow tables built by
the flusher, so a batch of N requests is one INSERT. The newest appended rows also stay in memory
(`RecentPredictions`), and the monitor's reads of new rows (`window_rows`, `outputs_since`) are
answered from there while they can be.

Tables:
  predictions   one row per request row: seq (monotonic; within a version also in ts order), request_id, row (index inside the
                request), ts, deployment, model, version, slot, latency_us, x (the numeric
                input features of that row, flattened in layout order), y (the outputs, likewise)
  feedback      ground truth by (request_id, row); a later label for the same key replaces
                the earlier one (received_at tells when)
  references    a version's reference profile (msgpack) and where it came from
  drift_windows / drift_features   one row per window, one per feature and window
  performance   one row per version and evaluation
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

log = structlog.get_logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq BIGINT NOT NULL, request_id VARCHAR NOT NULL, "row" INTEGER NOT NULL, ts TIMESTAMPTZ NOT NULL,
    deployment VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL, slot VARCHAR NOT NULL,
    latency_us REAL NOT NULL, x DOUBLE[] NOT NULL, y DOUBLE[] NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id VARCHAR NOT NULL, "row" INTEGER NOT NULL, label DOUBLE NOT NULL, received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (request_id, "row")
);
CREATE TABLE IF NOT EXISTS "references" (
    model VARCHAR NOT NULL, version INTEGER NOT NULL, source VARCHAR NOT NULL, rows BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, actor VARCHAR NOT NULL, profile BLOB NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS drift_windows (
    deployment VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL, window_id BIGINT NOT NULL,
    start_ts TIMESTAMPTZ NOT NULL, end_ts TIMESTAMPTZ NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
    n_rows BIGINT NOT NULL, n_features INTEGER NOT NULL, n_evaluated INTEGER NOT NULL, n_drifted INTEGER NOT NULL,
    share DOUBLE NOT NULL, drifted BOOLEAN NOT NULL, computed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (deployment, version, window_id)
);
CREATE TABLE IF NOT EXISTS drift_features (
    deployment VARCHAR NOT NULL, version INTEGER NOT NULL, window_id BIGINT NOT NULL, feature VARCHAR NOT NULL,
    role VARCHAR NOT NULL, kind VARCHAR NOT NULL, n BIGINT NOT NULL, has_data BOOLEAN NOT NULL,
    psi DOUBLE, ks DOUBLE, ks_pvalue DOUBLE, wasserstein DOUBLE, wasserstein_norm DOUBLE, js DOUBLE,
    chi2 DOUBLE, chi2_pvalue DOUBLE, pvalue_adjusted DOUBLE, missing_rate DOUBLE, ref_missing_rate DOUBLE,
    drifted BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS performance (
    deployment VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL, computed_at TIMESTAMPTZ NOT NULL,
    task VARCHAR NOT NULL, n_labels BIGINT NOT NULL, metrics JSON NOT NULL,
    baseline_metric VARCHAR, baseline DOUBLE, current DOUBLE, drop DOUBLE
);
"""


@contextlib.contextmanager
def _transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN on `cur`, COMMIT when the block ends, ROLLBACK (and re-raise) when it or the COMMIT fails."""
    cur.execute("BEGIN")
    try:
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        _rollback(cur)
        raise


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """End whatever transaction a failure left open on `cur`, for a caller about to re-raise that failure.

    A failed COMMIT (or a BEGIN that never ran) leaves none open, and the ROLLBACK's own error
    ("no transaction is active") must not replace the one that matters."""
    with contextlib.suppress(duckdb.Error):
        cur.execute("ROLLBACK")


def fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, width) float64 matrix as an Arrow list column without copying."""
    rows, width = matrix.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix, dtype=np.float64).ravel()), width)


def list_matrix(table: pa.Table, column: str) -> np.ndarray:
    """An Arrow list column of equal-length lists back as a (rows, width) float64 matrix."""
    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.empty((0, 0))
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return flat.reshape(len(col), -1)


RECENT_BYTES = 64 << 20
"""Most bytes of appended rows (seq, ts, x, y) kept in memory for the monitor; the oldest go first."""
RECENT_COLUMNS = ["seq", "ts", "x", "y"]
RECENT_SCHEMA = pa.schema([("seq", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")),
                           ("x", pa.list_(pa.float64())), ("y", pa.list_(pa.float64()))])


class RecentPredictions:
    """The newest appended rows of each (deployment, model, version), kept after their INSERT.

    The monitor reads every logged row once, a few seconds after the flusher wrote it: the rows
    of complete windows, and the outputs for the score stream. Read back from DuckDB that is a
    scan, a sort and a conversion to Arrow (14 ms of a 25-window pass, benchmarks/README.md); the
    flusher had the same rows as Arrow a moment before. So `add` keeps them, zero-copy where a
    flush holds one version, and `rows` answers from them when it can prove the answer complete:

    - every row of (deployment, model, version) with seq >= floor is here, in seq order. The floor starts
      at the first seq this process could append (rows before are in DuckDB only) and rises past
      each chunk evicted for RECENT_BYTES;
    - so a request for the rows after `after_seq` is complete here when after_seq + 1 >= floor;
      otherwise `rows` returns None and the caller asks DuckDB.

    Anything unexpected drops everything and starts again from the next seq: an append whose seq
    does not increase past every seq before it, rows of a version that `versions` did not name,
    and deletions (`reset`, after retention deleted rows). An append that leaves a gap after the last
    seq kept (rows in between may be in DuckDB only) is kept from its first seq on. `add` may raise
    only on a failure of its own (memory), and the caller then resets.

    Answers from memory carry x and y as fixed-size lists where DuckDB's carry lists: read them
    with `list_matrix`, which takes both.
    """

    def __init__(self, next_seq: int, max_bytes: int = RECENT_BYTES) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._chunks: dict[tuple[str, str, int], deque[tuple[np.ndarray, pa.Table]]] = {}
        self._order: deque[tuple[tuple[str, str, int], int, int]] = deque()  # (key, bytes, last seq), oldest first
        self._floor: dict[tuple[str, str, int], int] = {}
        self._base = next_seq  # the floor of a key not in _floor
        self._next = next_seq  # above every seq added so far
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def reset(self) -> None:
        """Forget every row: from now on only rows appended later are answered from memory."""
        with self._lock:
            self._forget(self._next)

    def _forget(self, base: int) -> None:
        """(Lock held.) Drop every row kept; rows from seq `base` on will be kept again."""
        self._chunks, self._order, self._floor, self._bytes = {}, deque(), {}, 0
        self._base = self._next = base

    def add(self, table: pa.Table, versions: set[tuple[str, str, int]]) -> None:
        """Keep an appended table's rows; `versions` names the (deployment, model, version) rows it holds."""
        if table.num_rows == 0:
            return
        seq = table.column("seq").to_numpy()
        with self._lock:
            if seq[0] < self._next or (len(seq) > 1 and not (np.diff(seq) > 0).all()):
                self._forget(max(self._next, int(seq.max()) + 1))
                return
            if seq[0] > self._next:  # a gap: rows in between may be in DuckDB only
                self._forget(int(seq[0]))
            self._next = int(seq[-1]) + 1
        parts = []
        for d, m, v in sorted({(d, m, int(v)) for d, m, v in versions}):
            mask = pc.and_(pc.and_(pc.equal(table.column("deployment"), d), pc.equal(table.column("model"), m)),
                           pc.equal(table.column("version"), v))
            if pc.all(mask).as_py():  # the usual flush: one version, kept as appended (no copy)
                parts.append(((d, m, v), seq, table.select(RECENT_COLUMNS)))
                break
            # each version's rows apart (a copy); flushes of several versions are the rarer case
            parts.append(((d, m, v), seq[np.asarray(mask, dtype=bool)], table.filter(mask).select(RECENT_COLUMNS)))
        with self._lock:
            if sum(len(s) for _, s, _ in parts) != len(seq):  # `versions` did not name every row's version
                self._forget(self._next)
                return
            for key, s, t in parts:
                if len(s) == 0:
                    continue
                self._chunks.setdefault(key, deque()).append((s, t))
                self._order.append((key, t.nbytes, int(s[-1])))
                self._bytes += t.nbytes
            while self._bytes > self._max_bytes and self._order:
                key, nbytes, last = self._order.popleft()
                self._chunks[key].popleft()
                self._floor[key] = last + 1
                self._bytes -= nbytes

    def rows(self, deployment: str, model: str, version: int, after_seq: int, limit: int) -> pa.Table | None:
        """The first `limit` rows with seq > after_seq, in seq order; None when they may not all be here."""
        key = (deployment, model, version)
        with self._lock:
            if after_seq + 1 < self._floor.get(key, self._base):
                self.misses += 1
                return None
            self.hits += 1
            pieces, need = [], limit
            for s, t in self._chunks.get(key, ()):
                if need <= 0:
                    break
                if s[-1] <= after_seq:
                    continue
                start = int(np.searchsorted(s, after_seq, side="right"))
                take = min(len(s) - start, need)
                pieces.append(t.slice(start, take))
                need -= take
        if not pieces:
            return RECENT_SCHEMA.empty_table()
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


class EventStore:
    """The DuckDB file and the SQL around it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One DuckDB worker thread and a larger WAL before automatic checkpoints: the appends and
        # window queries are small, and DuckDB's default (a thread per core, checkpoints every
        # 16 MB of WAL) took cores away from serving under load (benchmarks/README.md).
        self.con = duckdb.connect(str(path), config={"threads": 1, "checkpoint_threshold": "256MB"})
        self.con.execute(SCHEMA)
        # No ART indexes: appends arrive in seq order, so DuckDB's zone maps already prune by
        # seq and ts, and indexes would slow every append. What the monitor asks each pass is
        # kept in memory instead: which versions each deployment has logged, and a counter
        # that moves whenever feedback arrives.
        self._logged: set[tuple[str, str, int]] = {
            (r[0], r[1], int(r[2])) for r in self.con.execute("SELECT DISTINCT deployment, model, version FROM predictions").fetchall()
        }
        self.feedback_generation = 0
        # Writes that may insert a key another write inserts at the same moment (feedback, references)
        # run one at a time. DuckDB's transactions are optimistic: two that insert the same new key
        # conflict, and one fails (at its INSERT or its COMMIT) instead of waiting. A client resending
        # labels while its first send is in flight, or a reference built by a request while the
        # monitor builds it, would get an error; in turn, each write sees the one before it.
        self._keyed_writes = threading.Lock()
        # The newest received_at stamped: each write of labels gets a later one (see upsert_feedback).
        (self._last_received,) = self.con.execute("SELECT max(received_at) FROM feedback").fetchone()
        self.recent = RecentPredictions(self.next_seq())

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor for one unit of work: thread-safe, and no half-read result leaks into the next query."""
        return self.con.cursor()

    def close(self) -> None:
        try:
            self.con.execute("CHECKPOINT")
        finally:
            self.con.close()

    # -- prediction log -------------------------------------------------------------------

    def next_seq(self) -> int:
        """The seq after every one ever used: past the rows logged and past the stored drift windows. Retention may delete
        every row (a quiet week), but each version's newest window stays, and the monitor resumes after its last_seq;
        seqs that started again from 1 would sit behind it, unread, until they passed it."""
        (value,) = self.cursor().execute(
            "SELECT greatest((SELECT coalesce(max(seq), 0) FROM predictions), (SELECT coalesce(max(last_seq), 0) FROM drift_windows)) + 1"
        ).fetchone()
        return int(value)

    def append_predictions(self, table: pa.Table, versions: set[tuple[str, str, int]]) -> None:
        """Append a batch; `versions` names the (deployment, model, version) rows it holds."""
        cur = self.cursor()
        cur.register("batch_in", table)
        try:
            cur.execute(
                "INSERT INTO predictions SELECT seq, request_id, \"row\", ts, deployment, model, version, slot, latency_us, x, y FROM batch_in"
            )
        finally:
            cur.unregister("batch_in")
        self._logged |= versions
        # The rows are committed: nothing here may raise now, or the flusher would put the segments
        # back and insert them a second time. Memory that cannot keep them keeps nothing.
        try:
            self.recent.add(table, versions)
        except Exception:
            log.exception("recent_predictions_add_failed", rows=table.num_rows)
            self.recent.reset()

    def apply_retention(self, older_than: datetime | None, keep_rows: int) -> int:
        """Delete predictions older than `older_than` and beyond the newest `keep_rows` (0: no limit), and their feedback."""
        cur = self.cursor()
        deleted = 0
        if older_than is not None:
            deleted += cur.execute("DELETE FROM predictions WHERE ts < ?", [older_than]).fetchone()[0]
        if keep_rows:
            deleted += cur.execute(
                "DELETE FROM predictions WHERE seq <= (SELECT max(seq) FROM predictions) - ?", [keep_rows]
            ).fetchone()[0]
        if deleted:
            # After the DELETE, not before: a pass that finds nothing to delete (most) keeps memory. A
            # read in between may still get deleted rows from memory, as a read just before would have.
            self.recent.reset()
            with self._keyed_writes:
                cur.execute("DELETE FROM feedback f WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = f.request_id)")
        return int(deleted)

    def apply_results_retention(self, older_than: datetime) -> int:
        """Delete drift windows (and their feature rows) and performance evaluations older than `older_than`.

        The newest drift window and evaluation of each (deployment, model, version) stay, however old: the
        monitor resumes from the model's newest window (its last_seq; window ids go on from the newest of the
        deployment's version, kept with it), and the API shows the latest evaluation. Returns the windows and
        evaluations deleted.
        """
        with _transaction(self.cursor()) as cur:
            gone = cur.execute(
                "DELETE FROM drift_windows w WHERE end_ts < ? AND window_id < "
                "(SELECT max(window_id) FROM drift_windows x WHERE x.deployment = w.deployment AND x.model = w.model AND x.version = w.version) "
                "RETURNING deployment, version, window_id",
                [older_than],
            ).fetchall()
            windows = len(gone)
            if windows:
                # the feature rows of exactly the deleted windows (an anti-join against the windows left
                # would hash every remaining window, each time, however little is deleted)
                deployments, versions, ids = zip(*gone)
                cur.register("gone", pa.table({"deployment": deployments, "version": versions, "window_id": ids}))
                try:
                    cur.execute(
                        "DELETE FROM drift_features f USING gone g "
                        "WHERE f.deployment = g.deployment AND f.version = g.version AND f.window_id = g.window_id"
                    )
                finally:
                    cur.unregister("gone")
            (evaluations,) = cur.execute(
                "DELETE FROM performance p WHERE computed_at < ? AND computed_at < "
                "(SELECT max(computed_at) FROM performance x WHERE x.deployment = p.deployment AND x.model = p.model AND x.version = p.version)",
                [older_than],
            ).fetchone()
        return int(windows) + int(evaluations)

    def export_parquet(
        self, dest: Path, deployment: str, start: datetime | None, end: datetime | None,
        names: Callable[[str, int], tuple[list[str], list[str]] | None] | None = None,
    ) -> int:
        """Write the deployment's logged predictions in [start, end) (with any feedback) to a Parquet file; returns rows.

        `names(model, version)` gives a version's feature and output names (the monitor's layout). When
        every version in the range has the same ones, x and y are written as one column per name
        (`x.<feature>`, `y.<output>`); otherwise as the stored lists. Either way the file's key-value
        metadata `shepherd.features` maps each "model:version" to its names ({"x": [...], "y": [...]})."""
        where, params = _range("p.ts", deployment, start, end)
        cur = self.cursor()
        # One transaction, so one snapshot: the versions (and so the columns and metadata) and the rows written agree
        # however many rows are appended meanwhile.
        with _transaction(cur):
            versions = cur.execute(f"SELECT DISTINCT p.model, p.version FROM predictions p WHERE {where} ORDER BY 1, 2", params).fetchall()
            layouts = {(m, int(v)): names(m, int(v)) if names is not None else None for m, v in versions}
            shapes = {(tuple(n[0]), tuple(n[1])) if n is not None else None for n in layouts.values()}
            features = "p.x, p.y"
            if len(shapes) == 1 and None not in shapes:
                x_names, y_names = shapes.pop()
                features = ", ".join(
                    [f"p.x[{i + 1}] AS {sql_ident('x.' + n)}" for i, n in enumerate(x_names)]
                    + [f"p.y[{i + 1}] AS {sql_ident('y.' + n)}" for i, n in enumerate(y_names)]
                ) or "p.x, p.y"
            query = (
                f"SELECT p.seq, p.request_id, p.\"row\", p.ts, p.deployment, p.model, p.version, p.slot, p.latency_us, {features}, "
                "f.label, f.received_at AS label_received_at FROM predictions p "
                f"LEFT JOIN feedback f ON f.request_id = p.request_id AND f.\"row\" = p.\"row\" WHERE {where} ORDER BY p.seq"
            )
            metadata = json.dumps({f"{m}:{v}": {"x": n[0], "y": n[1]} for (m, v), n in layouts.items() if n is not None})
            (count,) = cur.execute(
                f"COPY ({query}) TO {sql_literal(str(dest))} (FORMAT parquet, KV_METADATA {{'shepherd.features': {sql_literal(metadata)}}})",
                params,
            ).fetchone()
        return int(count)

    def outputs_since(self, deployment: str, model: str, version: int, after_seq: int, limit: int) -> pa.Table:
        recent = self.recent.rows(deployment, model, version, after_seq, limit)
        if recent is not None:
            return recent.select(["seq", "y"])
        return self.cursor().sql(
            "SELECT seq, y FROM predictions WHERE deployment = ? AND model = ? AND version = ? AND seq > ? ORDER BY seq LIMIT ?",
            params=[deployment, model, version, after_seq, limit],
        ).to_arrow_table()

    def window_rows(self, deployment: str, model: str, version: int, after_seq: int, limit: int) -> pa.Table:
        recent = self.recent.rows(deployment, model, version, after_seq, limit)
        if recent is not None:
            return recent
        return self.cursor().sql(
            "SELECT seq, ts, x, y FROM predictions WHERE deployment = ? AND model = ? AND version = ? AND seq > ? ORDER BY seq LIMIT ?",
            params=[deployment, model, version, after_seq, limit],
        ).to_arrow_table()

    def window_by_time(self, deployment: str, model: str, version: int, start: datetime, end: datetime) -> pa.Table:
        return self.cursor().sql(
            "SELECT seq, ts, x, y FROM predictions WHERE deployment = ? AND model = ? AND version = ? AND ts >= ? AND ts < ? ORDER BY seq",
            params=[deployment, model, version, start, end],
        ).to_arrow_table()

    def first_rows(self, model: str, version: int, limit: int) -> pa.Table:
        return self.cursor().sql(
            "SELECT seq, x, y FROM predictions WHERE model = ? AND version = ? ORDER BY seq LIMIT ?", params=[model, version, limit]
        ).to_arrow_table()

    def first_ts(self, deployment: str, model: str, version: int, since: datetime | None = None) -> datetime | None:
        """The time of a version's first logged row (at or after `since`), or None."""
        return self.cursor().execute(
            "SELECT min(ts) FROM predictions WHERE deployment = ? AND model = ? AND version = ? "
            "AND ts >= coalesce(?, TIMESTAMPTZ '-infinity')",
            [deployment, model, version, since],
        ).fetchone()[0]

    def versions_logged(self, deployment: str) -> list[tuple[str, int]]:
        """(model, version) pairs this deployment has logged predictions for (kept in memory)."""
        return sorted((m, v) for d, m, v in set(self._logged) if d == deployment)

    # -- feedback -------------------------------------------------------------------------

    def served_by(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], set[tuple[str, str, int]]]:
        """The logged (request id, row) keys among `keys`, each with the (deployment, model, version) that answered it
        (more than one when a client reused an id)."""
        if not keys:
            return {}
        cur = self.cursor()
        cur.register("keys_in", pa.table({"request_id": [k[0] for k in keys], "row": [k[1] for k in keys]}))
        try:
            found = cur.execute(
                "SELECT DISTINCT k.request_id, k.\"row\", p.deployment, p.model, p.version FROM keys_in k JOIN predictions p "
                "ON p.request_id = k.request_id AND p.\"row\" = k.\"row\""
            ).fetchall()
        finally:
            cur.unregister("keys_in")
        out: dict[tuple[str, int], set[tuple[str, str, int]]] = {}
        for request_id, row, deployment, model, version in found:
            out.setdefault((request_id, int(row)), set()).add((deployment, model, int(version)))
        return out

    def upsert_feedback(self, keys: Sequence[tuple[str, int]], labels: Sequence[float]) -> int:
        """Store labels; a key already labelled is replaced (the newest label wins). Returns how many replaced an earlier label.

        received_at is stamped here, under the lock that puts the writes in turn, and each write's is later than the one
        before (by a microsecond when the clock has not moved or went back). The error stream reads labels whose
        received_at is after the newest it read; a write stamped before another but committed after it would sit behind
        that mark, unread."""
        if not keys:
            return 0
        cur = self.cursor()
        incoming = pa.table({
            "request_id": [k[0] for k in keys], "row": pa.array([k[1] for k in keys], pa.int32()), "label": pa.array(labels, pa.float64()),
        })
        cur.register("fb_in", incoming)
        try:
            with self._keyed_writes:
                now = datetime.now(UTC)
                if self._last_received is not None and now <= self._last_received:
                    now = self._last_received + timedelta(microseconds=1)
                with _transaction(cur):
                    (replaced,) = cur.execute(
                        "SELECT count(*) FROM feedback f JOIN fb_in i ON f.request_id = i.request_id AND f.\"row\" = i.\"row\""
                    ).fetchone()
                    cur.execute("INSERT OR REPLACE INTO feedback SELECT request_id, \"row\", label, ? FROM fb_in", [now])
                self._last_received = now
                self.feedback_generation += 1
        finally:
            cur.unregister("fb_in")
        return int(replaced)

    def labelled(self, deployment: str, model: str, version: int, limit: int) -> pa.Table:
        """The most recent `limit` labelled rows of a version: seq, y (outputs) and label, oldest first."""
        return self.cursor().sql(
            "SELECT * FROM (SELECT p.seq, p.y, f.label FROM predictions p JOIN feedback f "
            "ON f.request_id = p.request_id AND f.\"row\" = p.\"row\" WHERE p.deployment = ? AND p.model = ? AND p.version = ? "
            "ORDER BY p.seq DESC LIMIT ?) ORDER BY seq",
            params=[deployment, model, version, limit],
        ).to_arrow_table()

    def window_labelled(self, deployment: str, windows: Sequence[tuple[str, int, int, int, int]]) -> pa.Table:
        """The labelled rows of drift windows given as (model, version, window_id, first_seq, last_seq): version, window_id,
        y and label, in window and seq order. A window's rows are its version's rows with seq in [first_seq, last_seq]: a
        count window's by definition, and a time window's too, because within a version seq follows ts (predlog's "Order")."""
        cur = self.cursor()
        cur.register("shepherd_windows_in", pa.table({
            "model": pa.array([w[0] for w in windows], pa.string()), "version": pa.array([w[1] for w in windows], pa.int32()),
            "window_id": pa.array([w[2] for w in windows], pa.int64()),
            "first_seq": pa.array([w[3] for w in windows], pa.int64()), "last_seq": pa.array([w[4] for w in windows], pa.int64()),
        }))
        try:
            return cur.sql(
                "SELECT w.version, w.window_id, p.y, f.label FROM shepherd_windows_in w JOIN predictions p "
                "ON p.deployment = ? AND p.model = w.model AND p.version = w.version AND p.seq BETWEEN w.first_seq AND w.last_seq "
                "JOIN feedback f ON f.request_id = p.request_id AND f.\"row\" = p.\"row\" ORDER BY w.version, w.window_id, p.seq",
                params=[deployment],
            ).to_arrow_table()
        finally:
            cur.unregister("shepherd_windows_in")

    def labelled_since(self, deployment: str, model: str, version: int, after_received: datetime | None) -> pa.Table:
        """Labelled rows whose label arrived after `after_received`, in arrival order (the error stream)."""
        return self.cursor().sql(
            "SELECT p.seq, p.y, f.label, f.received_at FROM predictions p JOIN feedback f "
            "ON f.request_id = p.request_id AND f.\"row\" = p.\"row\" WHERE p.deployment = ? AND p.model = ? AND p.version = ? "
            "AND f.received_at > coalesce(?, TIMESTAMPTZ '1970-01-01') ORDER BY f.received_at, p.seq",
            params=[deployment, model, version, after_received],
        ).to_arrow_table()

    # -- reference profiles ---------------------------------------------------------------

    def save_reference(self, model: str, version: int, source: str, rows: int, actor: str, profile: bytes, at: datetime) -> bool:
        """Store a version's reference profile unless it has one (a reference never changes); False when it had."""
        with self._keyed_writes:
            stored = self.cursor().execute(
                "INSERT INTO \"references\" VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [model, version, source, rows, at, actor, profile],
            ).fetchall()
        return bool(stored)

    def reference(self, model: str, version: int) -> dict[str, Any] | None:
        row = self.cursor().execute(
            "SELECT source, rows, created_at, actor, profile FROM \"references\" WHERE model = ? AND version = ?", [model, version]
        ).fetchone()
        if row is None:
            return None
        return {"source": row[0], "rows": row[1], "created_at": row[2], "actor": row[3], "profile": row[4]}

    # -- drift and performance results ----------------------------------------------------

    def last_window(self, deployment: str, model: str, version: int) -> tuple[int, int, datetime | None]:
        """(the last window id of the deployment's version `version`, whatever its model; the last seq and end of the
        model's last window), or 0, 0 and None where there is none.

        A deployment's name may serve another model after an undeploy, whose versions count from 1 again: window ids
        go on from the other model's (drift_windows' key is deployment, version and window id), and each model's
        windows resume after its own rows."""
        row = self.cursor().execute(
            "SELECT (SELECT coalesce(max(window_id), 0) FROM drift_windows WHERE deployment = $1 AND version = $3), m.last_seq, m.end_ts "
            "FROM (SELECT 1) LEFT JOIN (SELECT last_seq, end_ts FROM drift_windows WHERE deployment = $1 AND model = $2 AND version = $3 "
            "ORDER BY window_id DESC LIMIT 1) m ON true",
            [deployment, model, version],
        ).fetchone()
        return int(row[0]), int(row[1] or 0), row[2]

    def save_windows(self, windows: list[dict[str, Any]], features: pa.Table) -> None:
        """Store windows (drift_windows rows) and their per-feature rows, all in one transaction."""
        if not windows:
            return
        cur = self.cursor()
        # One call: the transaction and both INSERTs as one script, the tables found by DuckDB's
        # replacement scan (local names). Each call into DuckDB lets the GIL go and takes it back,
        # and the monitor's thread winning it back is what keeps the serving event loop waiting
        # (register, BEGIN, two INSERTs, COMMIT and unregister were eight; benchmarks/README.md).
        # (Names no table of the schema has: the catalog comes before the replacement scan.)
        shepherd_windows_in = pa.Table.from_pylist(windows)  # noqa: F841 - read by name in the SQL
        shepherd_features_in = features  # noqa: F841
        try:
            cur.execute(
                "BEGIN; "
                "INSERT INTO drift_windows SELECT deployment, model, version, window_id, start_ts, end_ts, first_seq, last_seq, "
                "n_rows, n_features, n_evaluated, n_drifted, share, drifted, computed_at FROM shepherd_windows_in; "
                "INSERT INTO drift_features SELECT * FROM shepherd_features_in; "
                "COMMIT"
            )
        except BaseException:
            _rollback(cur)
            raise

    def windows(self, deployment: str, start: datetime | None, end: datetime | None, limit: int) -> list[dict[str, Any]]:
        where, params = _range("end_ts", deployment, start, end)
        cur = self.cursor()
        cur.execute(f"SELECT * FROM drift_windows WHERE {where} ORDER BY end_ts DESC, version, window_id DESC LIMIT ?", [*params, limit])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def window_features(self, deployment: str, keys: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        if not keys:
            return []
        cur = self.cursor()
        cur.register("wk", pa.table({"version": [k[0] for k in keys], "window_id": [k[1] for k in keys]}))
        try:
            cur.execute(
                "SELECT f.* FROM drift_features f JOIN wk ON f.version = wk.version AND f.window_id = wk.window_id "
                "WHERE f.deployment = ? ORDER BY f.version, f.window_id, f.role, f.feature",
                [deployment],
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
        finally:
            cur.unregister("wk")

    def save_performance(self, row: dict[str, Any]) -> None:
        self.cursor().execute(
            "INSERT INTO performance VALUES ($deployment, $model, $version, $computed_at, $task, $n_labels, $metrics, "
            "$baseline_metric, $baseline, $current, $drop)",
            row,
        )

    def performance(self, deployment: str, start: datetime | None, end: datetime | None, limit: int) -> list[dict[str, Any]]:
        where, params = _range("computed_at", deployment, start, end)
        cur = self.cursor()
        cur.execute(f"SELECT * FROM performance WHERE {where} ORDER BY computed_at DESC LIMIT ?", [*params, limit])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def sql_literal(text: str) -> str:
    """A SQL string literal, for the places a DuckDB statement takes no parameter (COPY's options, ATTACH's path)."""
    return "'" + text.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _range(column: str, deployment: str, start: datetime | None, end: datetime | None) -> tuple[str, list[Any]]:
    clauses, params = ["deployment = ?"], [deployment]
    if start is not None:
        clauses.append(f"{column} >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"{column} < ?")
        params.append(end)
    return " AND ".join(clauses), params
