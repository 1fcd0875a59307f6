"""Experiment tracking records: experiments, runs, params, tags, metric history, inputs, artifacts, logged models.

The SQL behind shepherd/tracking/. Every write function runs inside the caller's write
transaction (Database.write), so a whole `log_batch` is one transaction. Times are epoch
milliseconds, as MLflow uses them. NaN metric values are stored as 0 with is_nan = 1;
+-inf are stored as +-1.7976931348623157e308, as MLflow's SQL store does.
"""

from __future__ import annotations

import math
from typing import Any

import apsw
import msgspec

from shepherd.store.sqlite import one, rows

MAX_FLOAT = 1.7976931348623157e308


class Experiment(msgspec.Struct, kw_only=True):
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int
    last_update_time: int
    tags: list[dict[str, str]] = []


class RunInfo(msgspec.Struct, kw_only=True):
    run_id: str
    run_uuid: str
    run_name: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None = None
    artifact_uri: str
    lifecycle_stage: str


class Metric(msgspec.Struct, kw_only=True):
    key: str
    value: float
    timestamp: int
    step: int


class Run(msgspec.Struct, kw_only=True):
    info: RunInfo
    data: dict[str, Any]
    inputs: dict[str, Any] = {}


def _metric_value(value: float | None, is_nan: int) -> float:
    return math.nan if is_nan else float(value)  # type: ignore[arg-type]


def store_value(value: float) -> tuple[float, int]:
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return (MAX_FLOAT if value > 0 else -MAX_FLOAT), 0
    return value, 0


# -- experiments ---------------------------------------------------------------------------------


def _experiment(conn: apsw.Connection, row: dict[str, Any]) -> Experiment:
    tags = rows(conn, "SELECT key, value FROM experiment_tags WHERE experiment_id = ? ORDER BY key", (row["id"],))
    return Experiment(
        experiment_id=str(row["id"]), name=row["name"], artifact_location=row["artifact_location"],
        lifecycle_stage=row["lifecycle_stage"], creation_time=row["creation_time"], last_update_time=row["last_update_time"],
        tags=tags,
    )


def experiment_by_id(conn: apsw.Connection, experiment_id: int) -> Experiment | None:
    row = one(conn, "SELECT * FROM experiments WHERE id = ?", (experiment_id,))
    return None if row is None else _experiment(conn, row)


def experiment_by_name(conn: apsw.Connection, name: str) -> Experiment | None:
    row = one(conn, "SELECT * FROM experiments WHERE name = ?", (name,))
    return None if row is None else _experiment(conn, row)


def create_experiment(conn: apsw.Connection, name: str, artifact_location: str | None, tags: list[tuple[str, str]], now: int) -> int:
    conn.execute(
        "INSERT INTO experiments(name, artifact_location, creation_time, last_update_time) VALUES (?, '', ?, ?)", (name, now, now)
    )
    exp_id = conn.last_insert_rowid()
    conn.execute("UPDATE experiments SET artifact_location = ? WHERE id = ?", (artifact_location or f"mlflow-artifacts:/{exp_id}", exp_id))
    # a key given twice keeps its last value, as set_experiment_tag and a run's tags do
    conn.executemany("INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)", [(exp_id, k, v) for k, v in tags])
    return exp_id


def set_experiment_tag(conn: apsw.Connection, experiment_id: int, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)", (experiment_id, key, value))


def set_experiment_stage(conn: apsw.Connection, experiment_id: int, stage: str, now: int) -> None:
    conn.execute("UPDATE experiments SET lifecycle_stage = ?, last_update_time = ? WHERE id = ?", (stage, now, experiment_id))


def rename_experiment(conn: apsw.Connection, experiment_id: int, name: str, now: int) -> None:
    conn.execute("UPDATE experiments SET name = ?, last_update_time = ? WHERE id = ?", (name, now, experiment_id))


def search_experiments(conn: apsw.Connection, where: str, params: list[Any], order: str, limit: int, offset: int) -> list[Experiment]:
    found = rows(conn, f"SELECT * FROM experiments e WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?", (*params, limit, offset))
    return [_experiment(conn, r) for r in found]


# -- runs --------------------------------------------------------------------------------------


def run_row(conn: apsw.Connection, run_uuid: str) -> dict[str, Any] | None:
    return one(conn, "SELECT * FROM runs WHERE run_uuid = ?", (run_uuid,))


def create_run(
    conn: apsw.Connection, *, run_uuid: str, experiment_id: int, name: str, user_id: str, start_time: int, artifact_uri: str,
    tags: list[tuple[str, str]],
) -> int:
    conn.execute(
        "INSERT INTO runs(run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri) VALUES (?, ?, ?, ?, 'RUNNING', ?, ?)",
        (run_uuid, experiment_id, name, user_id, start_time, artifact_uri),
    )
    rid = conn.last_insert_rowid()
    conn.executemany("INSERT OR REPLACE INTO run_tags VALUES (?, ?, ?)", [(rid, k, v) for k, v in tags])
    return rid


def update_run(conn: apsw.Connection, rid: int, *, status: str | None, end_time: int | None, name: str | None) -> None:
    if status is not None:
        conn.execute("UPDATE runs SET status = ?, end_time = ? WHERE id = ?", (status, end_time, rid))
    if name is not None:
        conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, rid))
        conn.execute("INSERT OR REPLACE INTO run_tags VALUES (?, 'mlflow.runName', ?)", (rid, name))


def set_run_stage(conn: apsw.Connection, rid: int, stage: str, deleted_time: int | None) -> None:
    conn.execute("UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE id = ?", (stage, deleted_time, rid))


def existing_params(conn: apsw.Connection, rid: int, keys: list[str]) -> dict[str, str]:
    if not keys:
        return {}
    marks = ",".join("?" * len(keys))
    return {r["key"]: r["value"] for r in rows(conn, f"SELECT key, value FROM run_params WHERE run_id = ? AND key IN ({marks})", (rid, *keys))}


def log_batch(
    conn: apsw.Connection, rid: int, metrics: list[tuple[str, float, int, int]], params: list[tuple[str, str]], tags: list[tuple[str, str]]
) -> None:
    """Append metric values (key, value, timestamp, step), add params (already checked), upsert tags; keep latest metrics."""
    if params:
        conn.executemany("INSERT OR IGNORE INTO run_params VALUES (?, ?, ?)", [(rid, k, v) for k, v in params])
    if tags:
        conn.executemany("INSERT OR REPLACE INTO run_tags VALUES (?, ?, ?)", [(rid, k, v) for k, v in tags])
    if not metrics:
        return
    stored = [(rid, k, *store_value(v), ts, step) for k, v, ts, step in metrics]
    conn.executemany("INSERT OR IGNORE INTO run_metrics(run_id, key, value, is_nan, timestamp, step) VALUES (?, ?, ?, ?, ?, ?)", stored)
    # latest = largest (step, timestamp, value) per key; NaN sorts below every number
    best: dict[str, tuple] = {}
    for _, k, value, is_nan, ts, step in stored:
        order = (step, ts, -math.inf if is_nan else value)
        if k not in best or order > best[k][0]:
            best[k] = (order, value, is_nan, ts, step)
    conn.executemany(
        "INSERT INTO run_latest_metrics VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(run_id, key) DO UPDATE SET "
        "value = excluded.value, is_nan = excluded.is_nan, timestamp = excluded.timestamp, step = excluded.step "
        "WHERE (excluded.step, excluded.timestamp, CASE WHEN excluded.is_nan THEN -1e309 ELSE excluded.value END) > "
        "(run_latest_metrics.step, run_latest_metrics.timestamp, CASE WHEN run_latest_metrics.is_nan THEN -1e309 ELSE run_latest_metrics.value END)",
        [(rid, k, b[1], b[2], b[3], b[4]) for k, b in best.items()],
    )


def delete_tag(conn: apsw.Connection, rid: int, key: str) -> bool:
    conn.execute("DELETE FROM run_tags WHERE run_id = ? AND key = ?", (rid, key))
    return conn.changes() > 0


def log_inputs(conn: apsw.Connection, rid: int, datasets: list[dict[str, Any]]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO run_inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (rid, d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"), d.get("profile"),
             msgspec.json.encode(d.get("tags") or []).decode())
            for d in datasets
        ],
    )


def _run_info(r: dict[str, Any]) -> RunInfo:
    return RunInfo(
        run_id=r["run_uuid"], run_uuid=r["run_uuid"], run_name=r["name"], experiment_id=str(r["experiment_id"]), user_id=r["user_id"],
        status=r["status"], start_time=r["start_time"], end_time=r["end_time"], artifact_uri=r["artifact_uri"],
        lifecycle_stage=r["lifecycle_stage"],
    )


def runs_by_ids(conn: apsw.Connection, ids: list[int]) -> list[Run]:
    """Full runs (info, latest metrics, params, tags, inputs) for row ids, in the given order."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    infos = {r["id"]: r for r in rows(conn, f"SELECT * FROM runs WHERE id IN ({marks})", ids)}
    metrics: dict[int, list] = {i: [] for i in ids}
    params: dict[int, list] = {i: [] for i in ids}
    tags: dict[int, list] = {i: [] for i in ids}
    inputs: dict[int, list] = {i: [] for i in ids}
    nan = math.nan
    for rid, key, value, is_nan, ts, step in conn.execute(
        f"SELECT run_id, key, value, is_nan, timestamp, step FROM run_latest_metrics WHERE run_id IN ({marks})", ids
    ):  # the bulk of a search's rows (100 runs x their metrics): no call per row
        metrics[rid].append({"key": key, "value": nan if is_nan else value, "timestamp": ts, "step": step})
    for r in conn.execute(f"SELECT run_id, key, value FROM run_params WHERE run_id IN ({marks})", ids):
        params[r[0]].append({"key": r[1], "value": r[2]})
    for r in conn.execute(f"SELECT run_id, key, value FROM run_tags WHERE run_id IN ({marks})", ids):
        tags[r[0]].append({"key": r[1], "value": r[2]})
    for r in conn.execute(f"SELECT run_id, name, digest, source_type, source, schema, profile, context FROM run_inputs WHERE run_id IN ({marks})", ids):
        ds = {"name": r[1], "digest": r[2], "source_type": r[3], "source": r[4]}
        if r[5] is not None:
            ds["schema"] = r[5]
        if r[6] is not None:
            ds["profile"] = r[6]
        inputs[r[0]].append({"tags": msgspec.json.decode(r[7] or "[]"), "dataset": ds})
    return [
        Run(info=_run_info(infos[i]), data={"metrics": metrics[i], "params": params[i], "tags": tags[i]},
            inputs={"dataset_inputs": inputs[i]} if inputs[i] else {})
        for i in ids if i in infos
    ]


def search_run_ids(conn: apsw.Connection, where: str, params: list[Any], order: str, limit: int, offset: int) -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT r.id FROM runs r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?", (*params, limit, offset))]


Cursor = tuple[int, int, int, float]
"""Where a metric-history page ends: (step, timestamp, is_nan, value), the table's key order."""


def metric_history(conn: apsw.Connection, rid: int, key: str, limit: int, after: Cursor | None) -> list[tuple[Metric, Cursor]]:
    """One page of a metric's history in primary-key order, after the cursor; each entry with its own cursor."""
    cols = "SELECT key, value, is_nan, timestamp, step FROM run_metrics WHERE run_id = ? AND key = ?"
    order = "ORDER BY step, timestamp, is_nan, value LIMIT ?"
    if after is None:
        found = conn.execute(f"{cols} {order}", (rid, key, limit))
    else:
        found = conn.execute(f"{cols} AND (step, timestamp, is_nan, value) > (?, ?, ?, ?) {order}", (rid, key, *after, limit))
    return [(Metric(key=r[0], value=_metric_value(r[1], r[2]), timestamp=r[3], step=r[4]), (r[4], r[3], r[2], r[1])) for r in found]


# -- artifacts ---------------------------------------------------------------------------------


def put_artifact(conn: apsw.Connection, root: str, path: str, sha256: str, size: int) -> None:
    conn.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)", (root, path, sha256, size))


def get_artifact(conn: apsw.Connection, root: str, path: str) -> dict[str, Any] | None:
    return one(conn, "SELECT path, sha256, size FROM artifacts WHERE root = ? AND path = ?", (root, path))


def list_artifacts(conn: apsw.Connection, root: str, prefix: str) -> list[dict[str, Any]]:
    """Every file under `prefix` ('' = everything) of a root."""
    if not prefix:
        return rows(conn, "SELECT path, sha256, size FROM artifacts WHERE root = ? ORDER BY path", (root,))
    return rows(
        conn, "SELECT path, sha256, size FROM artifacts WHERE root = ? AND (path = ? OR substr(path, 1, ?) = ?) ORDER BY path",
        (root, prefix, len(prefix) + 1, prefix + "/"),
    )


def delete_artifacts(conn: apsw.Connection, root: str, prefix: str) -> int:
    if not prefix:
        conn.execute("DELETE FROM artifacts WHERE root = ?", (root,))
    else:
        conn.execute("DELETE FROM artifacts WHERE root = ? AND (path = ? OR substr(path, 1, ?) = ?)", (root, prefix, len(prefix) + 1, prefix + "/"))
    return conn.changes()


# -- logged models (MLflow 3) ------------------------------------------------------------------


def create_logged_model(conn: apsw.Connection, rec: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO logged_models(model_id, experiment_id, name, source_run_id, status, model_type, creation_time, last_updated_time, "
        "artifact_location, params, tags) VALUES ($model_id, $experiment_id, $name, $source_run_id, $status, $model_type, $creation_time, "
        "$last_updated_time, $artifact_location, $params, $tags)",
        rec,
    )


def logged_model(conn: apsw.Connection, model_id: str) -> dict[str, Any] | None:
    return one(conn, "SELECT * FROM logged_models WHERE model_id = ?", (model_id,))


def update_logged_model(conn: apsw.Connection, model_id: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE logged_models SET {sets} WHERE model_id = ?", (*fields.values(), model_id))


def search_logged_models(conn: apsw.Connection, experiment_ids: list[int], limit: int, offset: int) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(experiment_ids)) or "NULL"
    return rows(
        conn,
        f"SELECT * FROM logged_models WHERE experiment_id IN ({marks}) AND lifecycle_stage = 'active' "
        "ORDER BY creation_time DESC, id DESC LIMIT ? OFFSET ?",
        (*experiment_ids, limit, offset),
    )
