"""Experiment tracking: experiments, runs and their lifecycle, batched logging, search, metric history, artifacts.

Rules (MLflow's, where MLflow has one):
  * Limits per `log_batch`: 1000 metrics, 100 params, 100 tags, 1000 entities in all; keys up
    to 250 characters, param values up to 6000, tag values up to 8000. A violation is
    INVALID_PARAMETER_VALUE naming the field, and nothing of the batch is written.
  * A param, once logged, cannot change value (logging the same value again is fine).
  * Writes go to an active run only. A deleted run refuses them, and so does a finished one
    (FINISHED, FAILED, KILLED): its record is frozen, which is what lets a registered version
    point at its params for good. `mlflow.start_run(run_id=...)` resumes a run (the client sets
    it RUNNING again first), after which it takes writes again.
  * One `log_batch` is one SQLite transaction.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.store import audit, registry
from shepherd.store import tracking as store
from shepherd.store.blobs import BlobStore
from shepherd.store.sqlite import Database
from shepherd.tracking import search

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_RESULTS = 50_000
MAX_HISTORY_PAGE = 25_000
KEY = re.compile(r"^[\w./\- :]*$")
TERMINAL = {"FINISHED", "FAILED", "KILLED"}
STATUSES = {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}
ARTIFACT_PATH = re.compile(r"^[^\x00\\]*$")
ADJECTIVES = ("amber", "brisk", "calm", "deft", "eager", "fair", "glad", "keen", "lucid", "merry", "noble", "quiet", "swift", "vivid")
NOUNS = ("otter", "heron", "lynx", "finch", "marten", "ibex", "wren", "bison", "stoat", "crane", "newt", "puffin", "koi", "yak")


def now_ms() -> int:
    return int(time.time() * 1000)


def _check_key(key: Any, field: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{field}: a non-empty string key is required", field=field)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"{field}: key {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_LENGTH}", field=field)
    if not KEY.match(key) or key.startswith("/") or ".." in key.split("/"):
        raise InvalidInput(
            f"{field}: invalid key {key!r}: keys may hold letters, digits, _ - . / space and :, not start with / or contain ..",
            field=field,
        )
    return key


def check_artifact_path(path: str, field: str = "path") -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not ARTIFACT_PATH.match(path) or path.startswith("/"):
        raise InvalidInput(f"{field}: invalid artifact path {path!r}", field=field)
    return "/".join(parts)


class Tracker:
    """The tracking domain over the SQLite single writer and the blob store."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    # -- experiments ---------------------------------------------------------------------

    def create_experiment(self, name: str, artifact_location: str | None = None, tags: list[tuple[str, str]] | None = None) -> str:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("name: an experiment needs a non-empty name", field="name")
        if len(name) > 500:
            raise InvalidInput("name: at most 500 characters", field="name")
        for i, (k, v) in enumerate(tags or []):
            _check_key(k, f"tags[{i}].key")
            self._check_value(v, MAX_TAG_VALUE_LENGTH, f"tags[{i}].value")

        def tx(c: Any) -> str:
            if store.experiment_by_name(c, name) is not None:
                raise Conflict(f"Experiment '{name}' already exists.")
            exp_id = store.create_experiment(c, name, artifact_location, tags or [], now_ms())
            audit.append(c, actor="tracking", action="experiment.create", target=f"experiment:{exp_id}", after={"name": name})
            return str(exp_id)

        return self.db.write(tx)

    def experiment(self, experiment_id: str) -> store.Experiment:
        exp_id = self._int_id(experiment_id, "experiment_id")
        exp = self.db.read(lambda c: store.experiment_by_id(c, exp_id))
        if exp is None:
            raise NotFound(f"No Experiment with id={experiment_id} exists")
        return exp

    def experiment_by_name(self, name: str) -> store.Experiment:
        exp = self.db.read(lambda c: store.experiment_by_name(c, name))
        if exp is None:
            raise NotFound(f"Could not find experiment with name '{name}'")
        return exp

    def search_experiments(
        self, view_type: str = "ACTIVE_ONLY", max_results: int = 1000, filter_string: str | None = None, page_token: str | None = None,
    ) -> tuple[list[store.Experiment], str | None]:
        stage = _stage_clause(view_type, "e.lifecycle_stage")
        where, params = [stage], []
        if filter_string:
            m = re.fullmatch(r"\s*(?:attributes\.|attribute\.)?name\s*(=|!=|LIKE|ILIKE)\s*(['\"])(.*)\2\s*", filter_string, re.I)
            if not m:
                raise InvalidInput(f"invalid filter {filter_string!r}: experiments can be filtered by name (=, !=, LIKE, ILIKE)", field="filter")
            op = m.group(1).upper()
            cond = {"=": "e.name = ?", "!=": "e.name != ?", "LIKE": "e.name GLOB ?", "ILIKE": "lower(e.name) LIKE lower(?)"}[op]
            where.append(cond)
            params.append(search._like_to_glob(m.group(3)) if op == "LIKE" else m.group(3))
        limit = self._max_results(max_results, 50_000)
        offset = search.decode_token(page_token)
        found = self.db.read(lambda c: store.search_experiments(c, " AND ".join(where), params, "e.id ASC", limit + 1, offset))
        token = search.encode_token(offset + limit) if len(found) > limit else None
        return found[:limit], token

    def set_experiment_stage(self, experiment_id: str, stage: str) -> None:
        exp = self.experiment(experiment_id)
        if exp.experiment_id == "0" and stage == "deleted":
            raise InvalidInput("Cannot delete the default experiment '0'.", field="experiment_id")
        self.db.write(lambda c: (
            store.set_experiment_stage(c, int(exp.experiment_id), stage, now_ms()),
            audit.append(c, actor="tracking", action=f"experiment.{'delete' if stage == 'deleted' else 'restore'}",
                         target=f"experiment:{exp.experiment_id}"),
        ))

    def rename_experiment(self, experiment_id: str, name: str) -> None:
        exp = self.experiment(experiment_id)
        if not name or not name.strip():
            raise InvalidInput("new_name: must not be empty", field="new_name")

        def tx(c: Any) -> None:
            other = store.experiment_by_name(c, name)
            if other is not None and other.experiment_id != exp.experiment_id:
                raise Conflict(f"Experiment '{name}' already exists.")
            store.rename_experiment(c, int(exp.experiment_id), name, now_ms())

        self.db.write(tx)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        exp = self.experiment(experiment_id)
        _check_key(key, "key")
        self._check_value(value, MAX_TAG_VALUE_LENGTH, "value")
        self.db.write(lambda c: store.set_experiment_tag(c, int(exp.experiment_id), key, value))

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self, experiment_id: str | None, *, user_id: str = "", start_time: int | None = None, tags: list[tuple[str, str]] | None = None,
        run_name: str | None = None,
    ) -> store.Run:
        return self.db.write(self._create_run(experiment_id, user_id, start_time, tags, run_name), durable=False)

    async def acreate_run(
        self, experiment_id: str | None, *, user_id: str = "", start_time: int | None = None, tags: list[tuple[str, str]] | None = None,
        run_name: str | None = None,
    ) -> store.Run:
        """`create_run` awaited from the event loop, with no worker thread in between."""
        return await self.db.awrite(self._create_run(experiment_id, user_id, start_time, tags, run_name), durable=False)

    def _create_run(
        self, experiment_id: str | None, user_id: str, start_time: int | None, tags: list[tuple[str, str]] | None, run_name: str | None
    ) -> Callable[[Any], store.Run]:
        exp_id = self._int_id(experiment_id if experiment_id not in (None, "") else "0", "experiment_id")
        tags = list(tags or [])
        for i, (k, v) in enumerate(tags):
            _check_key(k, f"tags[{i}].key")
            self._check_value(v, MAX_TAG_VALUE_LENGTH, f"tags[{i}].value")
        tag_name = next((v for k, v in tags if k == "mlflow.runName"), None)
        name = run_name or tag_name or f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(1000)}"
        if not any(k == "mlflow.runName" for k, _ in tags):
            tags.append(("mlflow.runName", name))
        if user_id and not any(k == "mlflow.user" for k, _ in tags):
            tags.append(("mlflow.user", user_id))
        run_uuid = uuid.uuid4().hex

        def tx(c: Any) -> store.Run:
            exp = store.experiment_by_id(c, exp_id)
            if exp is None:
                raise NotFound(f"No Experiment with id={experiment_id} exists")
            if exp.lifecycle_stage != "active":
                raise InvalidInput(
                    f"The experiment {exp.experiment_id} must be in the 'active' state. Current state is deleted.", field="experiment_id"
                )
            rid = store.create_run(
                c, run_uuid=run_uuid, experiment_id=exp_id, name=name, user_id=user_id or "",
                start_time=start_time if start_time is not None else now_ms(),
                artifact_uri=f"{exp.artifact_location.rstrip('/')}/{run_uuid}/artifacts", tags=tags,
            )
            return store.runs_by_ids(c, [rid])[0]

        return tx

    def _run_row(self, c: Any, run_id: str) -> dict[str, Any]:
        if not isinstance(run_id, str) or not run_id:
            raise InvalidInput("run_id: required", field="run_id")
        row = store.run_row(c, run_id)
        if row is None:
            raise NotFound(f"Run with id={run_id} not found")
        return row

    def get_run(self, run_id: str) -> store.Run:
        def q(c: Any) -> store.Run:
            return store.runs_by_ids(c, [self._run_row(c, run_id)["id"]])[0]

        return self.db.read(q)

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None, run_name: str | None = None) -> store.RunInfo:
        return self.db.write(self._update_run(run_id, status, end_time, run_name), durable=False)

    async def aupdate_run(
        self, run_id: str, *, status: str | None = None, end_time: int | None = None, run_name: str | None = None
    ) -> store.RunInfo:
        """`update_run` awaited from the event loop, with no worker thread in between."""
        return await self.db.awrite(self._update_run(run_id, status, end_time, run_name), durable=False)

    def _update_run(self, run_id: str, status: str | None, end_time: int | None, run_name: str | None) -> Callable[[Any], store.RunInfo]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status: {status!r} is not one of {', '.join(sorted(STATUSES))}", field="status")

        def tx(c: Any) -> store.RunInfo:
            row = self._run_row(c, run_id)
            self._check_not_deleted(row)
            end = end_time if status in TERMINAL else None
            if status in TERMINAL and end is None:
                end = now_ms()
            store.update_run(c, row["id"], status=status, end_time=end, name=run_name)
            return store.runs_by_ids(c, [row["id"]])[0].info

        return tx

    def set_run_deleted(self, run_id: str, deleted: bool) -> None:
        def tx(c: Any) -> None:
            row = self._run_row(c, run_id)
            store.set_run_stage(c, row["id"], "deleted" if deleted else "active", now_ms() if deleted else None)
            audit.append(c, actor="tracking", action=f"run.{'delete' if deleted else 'restore'}", target=f"run:{run_id}")

        self.db.write(tx)

    @staticmethod
    def _check_not_deleted(row: dict[str, Any]) -> None:
        if row["lifecycle_stage"] != "active":
            raise InvalidInput(
                f"The run {row['run_uuid']} must be in the 'active' state. Current state is {row['lifecycle_stage']}.", field="run_id"
            )

    def _check_writable(self, row: dict[str, Any]) -> None:
        self._check_not_deleted(row)
        if row["status"] in TERMINAL:
            raise InvalidInput(
                f"The run {row['run_uuid']} is {row['status']}: a finished run takes no more writes "
                "(resume it with mlflow.start_run(run_id=...) to log to it again).",
                field="run_id",
            )

    @staticmethod
    def _check_value(value: Any, limit: int, field: str) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"{field}: a string value is required", field=field)
        if len(value) > limit:
            raise InvalidInput(f"{field}: value is {len(value)} characters; the limit is {limit}", field=field)
        return value

    def log_batch(
        self, run_id: str, metrics: list[dict[str, Any]] | None = None, params: list[dict[str, Any]] | None = None,
        tags: list[dict[str, Any]] | None = None,
    ) -> None:
        """Validate everything first, then write all of it in one transaction (a lazy write:
        storage.tracking_sync_s). Both steps run on the writer thread: one thread hop per batch."""
        self.db.write(self._batch(run_id, metrics, params, tags), durable=False)

    async def alog_batch(
        self, run_id: str, metrics: list[dict[str, Any]] | None = None, params: list[dict[str, Any]] | None = None,
        tags: list[dict[str, Any]] | None = None,
    ) -> None:
        """`log_batch` awaited from the event loop, with no worker thread in between."""
        await self.db.awrite(self._batch(run_id, metrics, params, tags), durable=False)

    def _batch(
        self, run_id: str, metrics: list[dict[str, Any]] | None, params: list[dict[str, Any]] | None, tags: list[dict[str, Any]] | None
    ) -> Callable[[Any], None]:
        def tx(c: Any) -> None:
            m_rows, p_rows, t_rows = self._batch_rows(metrics or [], params or [], tags or [])  # nothing written yet
            row = self._run_row(c, run_id)
            self._check_writable(row)
            old = store.existing_params(c, row["id"], [k for k, _ in p_rows])
            for i, (k, v) in enumerate(p_rows):
                if k in old and old[k] != v:
                    raise InvalidInput(
                        f"Changing param values is not allowed. Param with key='{k}' was already logged with value='{old[k]}' "
                        f"for run ID='{run_id}'. Attempted logging new value '{v}'.",
                        field=f"params[{i}].value",
                    )
            store.log_batch(c, row["id"], m_rows, p_rows, t_rows)
            for k, v in t_rows:
                if k == "mlflow.runName":
                    c.execute("UPDATE runs SET name = ? WHERE id = ?", (v, row["id"]))

        return tx

    def _batch_rows(
        self, metrics: list[dict[str, Any]], params: list[dict[str, Any]], tags: list[dict[str, Any]]
    ) -> tuple[list[tuple[str, float, int, int]], list[tuple[str, str]], list[tuple[str, str]]]:
        """Check a batch against MLflow's limits and rules; the rows to store, or InvalidInput naming the field."""
        for name, items in (("metrics", metrics), ("params", params), ("tags", tags)):
            _objects(items, name)
        if len(metrics) > MAX_METRICS_PER_BATCH:
            raise InvalidInput(f"metrics: {len(metrics)} in one batch; the limit is {MAX_METRICS_PER_BATCH}", field="metrics")
        if len(params) > MAX_PARAMS_TAGS_PER_BATCH:
            raise InvalidInput(f"params: {len(params)} in one batch; the limit is {MAX_PARAMS_TAGS_PER_BATCH}", field="params")
        if len(tags) > MAX_PARAMS_TAGS_PER_BATCH:
            raise InvalidInput(f"tags: {len(tags)} in one batch; the limit is {MAX_PARAMS_TAGS_PER_BATCH}", field="tags")
        if len(metrics) + len(params) + len(tags) > MAX_ENTITIES_PER_BATCH:
            raise InvalidInput(f"a batch holds at most {MAX_ENTITIES_PER_BATCH} metrics, params and tags in all", field="metrics")
        m_rows = []
        now = now_ms()
        keys: set[str] = set()  # a batch repeats few keys many times (one per step): check each once
        for i, m in enumerate(metrics):
            key = m.get("key")
            if type(key) is not str or key not in keys:
                keys.add(_check_key(key, f"metrics[{i}].key"))
            value = m.get("value")
            if type(value) is not float:
                if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
                    value = float(value.replace("Infinity", "inf"))
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise InvalidInput(f"metrics[{i}].value: a number is required (got {value!r})", field=f"metrics[{i}].value")
                value = float(value)
            ts, step = m.get("timestamp", now), m.get("step", 0) or 0
            if type(ts) is not int or not INT64_MIN <= ts <= INT64_MAX:
                ts = self._int(ts, f"metrics[{i}].timestamp")
            if type(step) is not int or not INT64_MIN <= step <= INT64_MAX:
                step = self._int(step, f"metrics[{i}].step")
            m_rows.append((key, value, ts, step))
        p_rows = []
        seen: dict[str, str] = {}
        for i, p in enumerate(params):
            key = _check_key(p.get("key"), f"params[{i}].key")
            value = self._check_value(_str(p.get("value")), MAX_PARAM_VALUE_LENGTH, f"params[{i}].value")
            if key in seen and seen[key] != value:
                raise InvalidInput(f"params[{i}]: param {key!r} is given twice with different values in one batch", field=f"params[{i}].value")
            seen[key] = value
            p_rows.append((key, value))
        t_rows = [
            (_check_key(t.get("key"), f"tags[{i}].key"), self._check_value(_str(t.get("value")), MAX_TAG_VALUE_LENGTH, f"tags[{i}].value"))
            for i, t in enumerate(tags)
        ]
        return m_rows, p_rows, t_rows

    @staticmethod
    def _int(value: Any, field: str) -> int:
        try:
            out = int(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"{field}: an integer is required (got {value!r})", field=field) from None
        if isinstance(value, float) and not value.is_integer() or isinstance(value, bool):
            raise InvalidInput(f"{field}: an integer is required (got {value!r})", field=field)
        if not INT64_MIN <= out <= INT64_MAX:
            raise InvalidInput(f"{field}: {out} is outside the 64-bit integer range", field=field)
        return out

    @staticmethod
    def _int_id(value: Any, field: str) -> int:
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{field}: {value!r} is not an id of this server", field=field) from None
        if not 0 <= out <= INT64_MAX:
            raise InvalidInput(f"{field}: {value!r} is not an id of this server", field=field)
        return out

    def delete_tag(self, run_id: str, key: str) -> None:
        def tx(c: Any) -> None:
            row = self._run_row(c, run_id)
            self._check_not_deleted(row)
            if not store.delete_tag(c, row["id"], key):
                raise NotFound(f"No tag with name: {key} in run with id {run_id}")

        self.db.write(tx, durable=False)

    def log_inputs(self, run_id: str, datasets: list[dict[str, Any]]) -> None:
        clean = []
        for i, d in enumerate(_objects(datasets, "datasets")):
            ds = d.get("dataset")
            if not isinstance(ds, dict):
                raise InvalidInput(f"datasets[{i}].dataset: an object is required", field=f"datasets[{i}].dataset")
            for f in ("name", "digest", "source_type", "source"):
                if not isinstance(ds.get(f), str):
                    raise InvalidInput(f"datasets[{i}].dataset.{f}: required", field=f"datasets[{i}].dataset.{f}")
            for f in ("schema", "profile"):
                if ds.get(f) is not None and not isinstance(ds[f], str):
                    raise InvalidInput(f"datasets[{i}].dataset.{f}: a string is required", field=f"datasets[{i}].dataset.{f}")
            tags = _objects(d.get("tags") or [], f"datasets[{i}].tags")
            for j, t in enumerate(tags):
                _check_key(t.get("key"), f"datasets[{i}].tags[{j}].key")
            clean.append({**ds, "tags": tags})

        def tx(c: Any) -> None:
            row = self._run_row(c, run_id)
            self._check_writable(row)
            store.log_inputs(c, row["id"], clean)

        self.db.write(tx, durable=False)

    def search_runs(
        self, experiment_ids: list[str], filter_string: str | None = None, view_type: str = "ACTIVE_ONLY",
        max_results: int = 1000, order_by: list[str] | None = None, page_token: str | None = None,
    ) -> tuple[list[store.Run], str | None]:
        if not experiment_ids:
            raise InvalidInput("experiment_ids: at least one experiment is required", field="experiment_ids")
        ids = [self._int_id(e, "experiment_ids") for e in experiment_ids]
        cond, params = search.compile_filter(filter_string)
        order, order_params = search.compile_order(order_by)
        limit = self._max_results(max_results, MAX_RESULTS)
        offset = search.decode_token(page_token)
        marks = ",".join("?" * len(ids))
        where = f"r.experiment_id IN ({marks}) AND {_stage_clause(view_type, 'r.lifecycle_stage')} AND {cond}"

        def q(c: Any) -> tuple[list[store.Run], bool]:
            found = store.search_run_ids(c, where, [*ids, *params, *order_params], order, limit + 1, offset)
            return store.runs_by_ids(c, found[:limit]), len(found) > limit

        runs, more = self.db.read(q)
        return runs, (search.encode_token(offset + limit) if more else None)

    @staticmethod
    def _max_results(value: Any, cap: int) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"max_results: {value!r} is not a number", field="max_results") from None
        if not 1 <= n <= cap:
            raise InvalidInput(f"max_results: must be between 1 and {cap} (got {n})", field="max_results")
        return n

    def metric_history(self, run_id: str, key: str, max_results: int | None = None, page_token: str | None = None) -> tuple[list[store.Metric], str | None]:
        """One page of a metric's history (never the whole of it at once)."""
        limit = self._max_results(max_results if max_results is not None else MAX_HISTORY_PAGE, MAX_HISTORY_PAGE)
        after = _decode_cursor(page_token)

        def q(c: Any) -> tuple[list[store.Metric], str | None]:
            rid = self._run_row(c, run_id)["id"]
            page = store.metric_history(c, rid, key, limit + 1, after)
            metrics = [entry for entry, _ in page[:limit]]
            return metrics, (_encode_cursor(page[limit - 1][1]) if len(page) > limit else None)

        return self.db.read(q)

    def resolve_experiment(self, ref: str) -> store.Experiment:
        """An experiment by id or by name."""
        if ref.isdigit():
            try:
                return self.experiment(ref)
            except NotFound:
                pass
        return self.experiment_by_name(ref)

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        """Runs side by side: for every param, latest metric and tag, the value in each run (None when absent)."""
        if not 2 <= len(run_ids) <= 20:
            raise InvalidInput("compare needs 2 to 20 run ids", field="ids")
        runs = [self.get_run(r) for r in run_ids]

        def table(section: str, value: str = "value") -> dict[str, list[Any]]:
            keys = sorted({e["key"] for r in runs for e in r.data[section]})
            by_run = [{e["key"]: e[value] for e in r.data[section]} for r in runs]
            return {k: [d.get(k) for d in by_run] for k in keys}

        return {
            "runs": [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time}
                     for r in runs],
            "params": table("params"), "metrics": table("metrics"),
            "tags": {k: v for k, v in table("tags").items() if not k.startswith("mlflow.")},
        }

    def registered_versions(self, run_id: str) -> list[dict[str, Any]]:
        """The registry versions made from this run (the run -> version side of the lineage link)."""
        self.get_run(run_id)
        found = self.db.read(lambda c: c.execute(
            "SELECT m.name, v.version FROM versions v JOIN models m ON m.id = v.model_id "
            "WHERE json_extract(v.lineage, '$.run_id') = ? ORDER BY m.name, v.version", (run_id,)
        ).fetchall())
        return [{"model": n, "version": v} for n, v in found]

    # -- artifacts -----------------------------------------------------------------------

    def put_artifact(self, rel_path: str, src: Path) -> None:
        """Store an uploaded file under the artifact path (experiment/run/artifacts/...)."""
        path = check_artifact_path(rel_path)
        if not path:
            raise InvalidInput("path: an artifact needs a file name", field="path")
        self._check_artifact_owner(path, write=True)
        sha = self.blobs.put_file(src, move=True)
        size = self.blobs.path(sha).stat().st_size
        self.db.write(lambda c: store.put_artifact(c, "mlflow", path, sha, size))

    def _check_artifact_owner(self, path: str, *, write: bool) -> None:
        parts = path.split("/")
        if len(parts) >= 3 and parts[2] == "artifacts" and len(parts[1]) == 32:
            row = self.db.read(lambda c: store.run_row(c, parts[1]))
            if row is None:
                raise NotFound(f"Run with id={parts[1]} not found")
            if write:
                self._check_not_deleted(row)

    def artifact_file(self, rel_path: str) -> tuple[Path, int]:
        path = check_artifact_path(rel_path)
        found = self.db.read(lambda c: store.get_artifact(c, "mlflow", path))
        if found is None:
            raise NotFound(f"artifact {rel_path!r} does not exist")
        return self.blobs.path(found["sha256"]), int(found["size"])

    def list_artifacts(self, rel_path: str) -> list[dict[str, Any]]:
        """Direct children of a directory: files with sizes, subdirectories with is_dir (MLflow's list_artifacts)."""
        prefix = check_artifact_path(rel_path)
        found = self.db.read(lambda c: store.list_artifacts(c, "mlflow", prefix))
        out: dict[str, dict[str, Any]] = {}
        for f in found:
            if f["path"] == prefix:
                continue  # a file, not a directory
            rest = f["path"][len(prefix) + 1:] if prefix else f["path"]
            head, sep, _ = rest.partition("/")
            if sep:
                out.setdefault(head, {"path": head, "is_dir": True})
            else:
                out[head] = {"path": head, "is_dir": False, "file_size": int(f["size"])}
        return [out[k] for k in sorted(out)]

    def delete_artifacts(self, rel_path: str) -> int:
        prefix = check_artifact_path(rel_path)
        return self.db.write(lambda c: store.delete_artifacts(c, "mlflow", prefix))

    # -- registry bridge -----------------------------------------------------------------

    def register_from_artifacts(
        self, model: str, source_prefix: str, *, run_id: str | None, description: str, actor: str, logged_model_id: str | None = None,
    ) -> registry.VersionRecord:
        """Register the files under an artifact prefix as the next version of `model` in Shepherd's registry.

        The version's lineage points at the run (and its params and dataset digests); the run gets
        a `shepherd.registered_versions` tag back, so the link goes both ways.
        """
        prefix = check_artifact_path(source_prefix)
        files = self.db.read(lambda c: store.list_artifacts(c, "mlflow", prefix))
        if not files:
            raise InvalidInput(f"source: no artifacts under {source_prefix!r}", field="source")
        run = self.get_run(run_id) if run_id else None
        vfiles = [
            registry.VersionFile(path=f["path"][len(prefix) + 1:] if f["path"] != prefix else f["path"].rsplit("/", 1)[-1],
                                 sha256=f["sha256"], size=int(f["size"]))
            for f in files
        ]
        lineage: dict[str, Any] = {"source": f"mlflow-artifacts:/{prefix}"}
        if logged_model_id:
            lineage["logged_model_id"] = logged_model_id
        if run is not None:
            lineage.update(
                run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                params={p["key"]: p["value"] for p in run.data["params"]},
                dataset_digests=[d["dataset"]["digest"] for d in run.inputs.get("dataset_inputs", [])],
                metrics={m["key"]: m["value"] for m in run.data["metrics"] if not math.isnan(m["value"])},
            )
        metrics = lineage.get("metrics", {})
        digest = hashlib.sha256(
            msgspec.json.encode({"files": [(f.path, f.sha256) for f in vfiles], "lineage": lineage, "nonce": uuid.uuid4().hex})
        ).hexdigest()
        new = registry.NewVersion(
            model=model, bundle_digest=digest, signed_by=None, description=description,
            signature={"inputs": [], "outputs": []}, metrics=metrics, lineage=lineage,
            card={"overview": description} if description else {}, manifest={"format": "mlflow", "files": [f.path for f in vfiles]},
            files=vfiles,
        )

        def tx(c: Any) -> registry.VersionRecord:
            rec, _ = registry.register_version(c, new, actor=actor)
            if run is not None:
                row = store.run_row(c, run.info.run_id)
                # the tag as it is now, in this transaction: another registration from the run may have added to it
                tag = c.execute(
                    "SELECT value FROM run_tags WHERE run_id = ? AND key = 'shepherd.registered_versions'", (row["id"],)
                ).fetchall()
                value = ",".join(filter(None, [tag[0][0] if tag else "", f"{model}/{rec.version}"]))
                c.execute("INSERT OR REPLACE INTO run_tags VALUES (?, 'shepherd.registered_versions', ?)", (row["id"], value))
            return rec

        return self.db.write(tx)


def _str(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return str(value)
    return value


def _stage_clause(view_type: str | None, column: str) -> str:
    vt = (view_type or "ACTIVE_ONLY").upper()
    if vt in ("ACTIVE_ONLY", "1"):
        return f"{column} = 'active'"
    if vt in ("DELETED_ONLY", "2"):
        return f"{column} = 'deleted'"
    if vt in ("ALL", "3"):
        return "1"
    raise InvalidInput(f"run_view_type: {view_type!r} is not ACTIVE_ONLY, DELETED_ONLY or ALL", field="run_view_type")


def _encode_cursor(cursor: store.Cursor) -> str:
    import base64

    return base64.b64encode(msgspec.json.encode({"after": list(cursor)})).decode()


def _objects(items: Any, field: str) -> list[dict[str, Any]]:
    """`items` as a list of JSON objects, or InvalidInput naming the first that is not."""
    if not isinstance(items, list):
        raise InvalidInput(f"{field}: a list is required", field=field)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"{field}[{i}]: an object is required", field=f"{field}[{i}]")
    return items


def _decode_cursor(token: str | None) -> store.Cursor | None:
    if not token:
        return None
    import base64
    import binascii

    try:
        after = msgspec.json.decode(base64.b64decode(token, validate=True))["after"]
        if len(after) != 4 or not all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in after[:3]) or type(after[3]) not in (int, float):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, msgspec.DecodeError):
        raise InvalidInput(f"invalid page_token {token!r}", field="page_token") from None
    return (after[0], after[1], after[2], float(after[3]))
