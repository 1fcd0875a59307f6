"""MLflow's REST protocol (what the unmodified mlflow 3.x client sends) mapped onto Shepherd.

Each handler takes the request's fields as a dict (the JSON body, or the query string for GET)
and returns the response dict. Registered models and model versions are Shepherd's own models
and versions (shepherd.store.registry), not a copy: an MLflow registration creates the next
Shepherd version, whose files are the logged model's artifacts (the same blobs), and a bundle
imported the Shepherd way shows up in MLflow as a version whose files download through
`mlflow-artifacts:/registry/<model>/<version>`.

Logged models (MLflow 3): created by `log_model`, their files under
`<experiment>/models/<model_id>/artifacts`, finalised with a status update.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from shepherd.errors import InvalidInput, NotFound
from shepherd.store import registry
from shepherd.store import tracking as store
from shepherd.tracking import search
from shepherd.tracking.service import INT64_MAX, INT64_MIN, Tracker, now_ms

Handler = Callable[["MlflowApi", dict[str, Any], str], dict[str, Any]]
REGISTRY_PREFIX = "registry"


def _req(body: dict[str, Any], name: str, *alts: str) -> Any:
    for key in (name, *alts):
        value = body.get(key)
        if value not in (None, ""):
            return value
    raise InvalidInput(f"Missing value for required parameter '{name}'.", field=name)


def _tags(items: Any, field: str = "tags") -> list[tuple[str, str]]:
    if items in (None, ""):
        return []
    if not isinstance(items, list):
        raise InvalidInput(f"{field}: a list of {{key, value}} is required", field=field)
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, dict) or "key" not in t:
            raise InvalidInput(f"{field}[{i}]: a {{key, value}} object is required", field=f"{field}[{i}]")
        if not isinstance(t["key"], str) or not t["key"]:
            raise InvalidInput(f"{field}[{i}].key: a non-empty string is required", field=f"{field}[{i}].key")
        value = t.get("value", "")
        if isinstance(value, list | dict):
            raise InvalidInput(f"{field}[{i}].value: a string is required", field=f"{field}[{i}].value")
        out.append((t["key"], "" if value is None else str(value)))
    return out


# The MLflow protocol's request fields by type, as its protobuf messages declare them. Every handler
# reads its fields from a raw dict; `check_fields` holds each field a request carries to its type
# first, so that a number where a name belongs, or a list where a string does, is a 400 naming the
# field and never reaches SQL or string code. ("value" is a string in tags and params and a number
# in metrics: the handlers check it.)
STRING_FIELDS = frozenset({
    "name", "new_name", "run_id", "run_uuid", "experiment_id", "experiment_name", "key", "metric_key", "alias", "version",
    "source", "source_run_id", "description", "status", "run_name", "user_id", "artifact_location", "filter", "view_type",
    "run_view_type", "model_type", "model_id", "page_token",
})
INT_FIELDS = frozenset({"start_time", "end_time", "timestamp", "step", "max_results"})
"""int64 in the protobuf; JSON may carry them as numbers or, as proto3 allows, decimal strings (a GET's query always does)."""
STRING_LIST_FIELDS = frozenset({"experiment_ids", "order_by", "run_ids"})
MAX_LIST_ITEMS = 1000
"""Most items in one of STRING_LIST_FIELDS (an SQL statement holds one variable per experiment id)."""


def check_fields(body: dict[str, Any]) -> None:
    """Refuse, naming it, a request field whose JSON type does not fit MLflow's protocol (None means absent)."""
    for name, value in body.items():
        if value is None:
            continue
        if name in STRING_FIELDS:
            if not isinstance(value, str):
                raise InvalidInput(f"{name}: a string is required (got {type(value).__name__})", field=name)
        elif name in INT_FIELDS:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 30:
                value = int(value)
            if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
                raise InvalidInput(f"{name}: a 64-bit integer is required (got {value!r})", field=name)
            if name == "max_results" and value < 1:
                raise InvalidInput(f"max_results: must be at least 1 (got {value})", field=name)
        elif name in STRING_LIST_FIELDS:
            if not isinstance(value, list):
                raise InvalidInput(f"{name}: a list of strings is required", field=name)
            if len(value) > MAX_LIST_ITEMS:
                raise InvalidInput(f"{name}: {len(value)} items; the limit is {MAX_LIST_ITEMS}", field=name)
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise InvalidInput(f"{name}[{i}]: a string is required", field=f"{name}[{i}]")


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


class MlflowApi:
    """The handlers, bound to one Tracker and the registry's database."""

    def __init__(self, tracker: Tracker) -> None:
        self.t = tracker
        self.db = tracker.db

    # -- experiments -------------------------------------------------------------------

    def create_experiment(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"experiment_id": self.t.create_experiment(_req(b, "name"), b.get("artifact_location") or None, _tags(b.get("tags")))}

    def get_experiment(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"experiment": msgspec.to_builtins(self.t.experiment(_req(b, "experiment_id")))}

    def get_experiment_by_name(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"experiment": msgspec.to_builtins(self.t.experiment_by_name(_req(b, "experiment_name")))}

    def search_experiments(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        found, token = self.t.search_experiments(
            b.get("view_type") or "ACTIVE_ONLY", b.get("max_results") or 1000, b.get("filter"), b.get("page_token")
        )
        out: dict[str, Any] = {"experiments": [msgspec.to_builtins(e) for e in found]}
        if token:
            out["next_page_token"] = token
        return out

    def delete_experiment(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.set_experiment_stage(_req(b, "experiment_id"), "deleted")
        return {}

    def restore_experiment(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.set_experiment_stage(_req(b, "experiment_id"), "active")
        return {}

    def update_experiment(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.rename_experiment(_req(b, "experiment_id"), _req(b, "new_name"))
        return {}

    def set_experiment_tag(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.set_experiment_tag(_req(b, "experiment_id"), _req(b, "key"), str(b.get("value", "")))
        return {}

    # -- runs ----------------------------------------------------------------------------

    # The calls of a training script's loop (create_run, the logging calls, update_run) are
    # coroutines: checked and written on the SQLite writer thread, awaited from the event loop,
    # with no worker thread in between. Every other handler runs in a worker thread.

    async def create_run(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        run = await self.t.acreate_run(
            b.get("experiment_id"), user_id=b.get("user_id") or "", start_time=b.get("start_time"), tags=_tags(b.get("tags")),
            run_name=b.get("run_name") or None,
        )
        return {"run": _run(run)}

    async def update_run(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        info = await self.t.aupdate_run(
            _req(b, "run_id", "run_uuid"), status=b.get("status") or None, end_time=b.get("end_time"), run_name=b.get("run_name") or None
        )
        return {"run_info": _info(info)}

    def delete_run(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.set_run_deleted(_req(b, "run_id"), True)
        return {}

    def restore_run(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.set_run_deleted(_req(b, "run_id"), False)
        return {}

    def get_run(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"run": _run(self.t.get_run(_req(b, "run_id", "run_uuid")))}

    async def log_metric(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        metric = {"key": _req(b, "key"), "value": b.get("value"), "timestamp": b.get("timestamp") or now_ms(), "step": b.get("step") or 0}
        if metric["value"] is None:
            raise InvalidInput("Missing value for required parameter 'value'.", field="value")
        await self.t.alog_batch(_req(b, "run_id", "run_uuid"), metrics=[metric])
        return {}

    async def log_param(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        await self.t.alog_batch(_req(b, "run_id", "run_uuid"), params=[{"key": _req(b, "key"), "value": b.get("value", "")}])
        return {}

    async def set_tag(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        await self.t.alog_batch(_req(b, "run_id", "run_uuid"), tags=[{"key": _req(b, "key"), "value": b.get("value", "")}])
        return {}

    def delete_tag(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.delete_tag(_req(b, "run_id"), _req(b, "key"))
        return {}

    async def log_batch(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        for field in ("metrics", "params", "tags"):
            if b.get(field) is not None and not isinstance(b[field], list):
                raise InvalidInput(f"{field}: a list is required", field=field)
        await self.t.alog_batch(_req(b, "run_id"), metrics=b.get("metrics"), params=b.get("params"), tags=b.get("tags"))
        return {}

    def log_inputs(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        datasets = b.get("datasets") or []
        if datasets:
            self.t.log_inputs(_req(b, "run_id"), datasets)
        return {}

    def log_outputs(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self.t.get_run(_req(b, "run_id"))  # the run must exist; the link is kept on the logged model (source_run_id)
        return {}

    def search_runs(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        order_by = b.get("order_by") or []
        if isinstance(order_by, str):
            order_by = [order_by]
        runs, token = self.t.search_runs(
            [str(e) for e in (b.get("experiment_ids") or [])], b.get("filter"), b.get("run_view_type") or "ACTIVE_ONLY",
            b.get("max_results") or 1000, order_by, b.get("page_token"),
        )
        out: dict[str, Any] = {"runs": [_run(r) for r in runs]}
        if token:
            out["next_page_token"] = token
        return out

    def get_metric_history(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        page, token = self.t.metric_history(
            _req(b, "run_id", "run_uuid"), _req(b, "metric_key"), b.get("max_results"), b.get("page_token")
        )
        out: dict[str, Any] = {"metrics": [msgspec.to_builtins(m) for m in page]}
        if token:
            out["next_page_token"] = token
        return out

    # -- logged models -------------------------------------------------------------------

    def create_logged_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        exp = self.t.experiment(_req(b, "experiment_id"))
        model_id = f"m-{uuid.uuid4().hex}"
        now = now_ms()
        params = dict(_tags(b.get("params"), "params"))
        tags = dict(_tags(b.get("tags")))
        if b.get("source_run_id"):
            self.t.get_run(b["source_run_id"])
        rec = {
            "model_id": model_id, "experiment_id": int(exp.experiment_id), "name": b.get("name") or model_id,
            "source_run_id": b.get("source_run_id"), "status": "LOGGED_MODEL_PENDING", "model_type": b.get("model_type") or "",
            "creation_time": now, "last_updated_time": now,
            "artifact_location": f"{exp.artifact_location.rstrip('/')}/models/{model_id}/artifacts",
            "params": msgspec.json.encode(params).decode(), "tags": msgspec.json.encode(tags).decode(),
        }
        self.db.write(lambda c: store.create_logged_model(c, rec))
        return {"model": self._logged_model(model_id)}

    def _logged_model(self, model_id: str) -> dict[str, Any]:
        row = self.db.read(lambda c: store.logged_model(c, model_id))
        if row is None:
            raise NotFound(f"Logged model with ID '{model_id}' not found.")
        return _logged(row)

    def get_logged_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"model": self._logged_model(_req(b, "model_id"))}

    def finalize_logged_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        model_id = _req(b, "model_id")
        status = _req(b, "status")
        if status not in ("LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED", "LOGGED_MODEL_PENDING"):
            raise InvalidInput(f"status: {status!r} is not a logged-model status", field="status")
        self._logged_model(model_id)
        self.db.write(lambda c: store.update_logged_model(c, model_id, status=status, last_updated_time=now_ms()))
        return {"model": self._logged_model(model_id)}

    def set_logged_model_tags(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self._merge_logged_model(_req(b, "model_id"), "tags", dict(_tags(b.get("tags"))), last_updated_time=now_ms())
        return {}

    def log_logged_model_params(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        self._merge_logged_model(_req(b, "model_id"), "params", dict(_tags(b.get("params"), "params")))
        return {}

    def _merge_logged_model(self, model_id: str, column: str, new: dict[str, str], **also: Any) -> None:
        """Add keys to a logged model's tags or params (a JSON object), read and written in one
        transaction: two calls at once each keep the other's keys."""

        def tx(c: Any) -> None:
            row = store.logged_model(c, model_id)
            if row is None:
                raise NotFound(f"Logged model with ID '{model_id}' not found.")
            merged = msgspec.json.decode(row[column]) | new
            store.update_logged_model(c, model_id, **{column: msgspec.json.encode(merged).decode()}, **also)

        self.db.write(tx)

    def delete_logged_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        model_id = _req(b, "model_id")
        self._logged_model(model_id)
        self.db.write(lambda c: store.update_logged_model(c, model_id, lifecycle_stage="deleted"))
        return {}

    def search_logged_models(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        exp_ids = [Tracker._int_id(e, "experiment_ids") for e in (b.get("experiment_ids") or [])]
        conds = _simple_filter(b.get("filter"), {"name", "source_run_id", "status", "model_type"})
        limit = int(b.get("max_results") or 100)
        offset = search.decode_token(b.get("page_token"))
        found = self.db.read(lambda c: store.search_logged_models(c, exp_ids, 10_000, 0))
        found = [r for r in found if all(_match(str(r.get(k) or ""), op, v) for k, op, v in conds)]
        page = found[offset:offset + limit]
        out: dict[str, Any] = {"models": [_logged(r) for r in page]} if page else {}
        if offset + limit < len(found):
            out["next_page_token"] = search.encode_token(offset + limit)
        return out

    # -- registry ------------------------------------------------------------------------

    def _model_row(self, c: Any, name: str) -> dict[str, Any]:
        row = c.execute("SELECT id, name, created_at FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"Registered Model with name={name} not found")
        return {"id": row[0], "name": row[1], "created_at": row[2]}

    def _registered(self, c: Any, name: str) -> dict[str, Any]:
        m = self._model_row(c, name)
        versions = registry.list_versions(c, name)
        aliases = [{"alias": a, "version": str(v)} for a, v in registry._aliases(c, m["id"]).items()]
        created = _ms(m["created_at"])
        updated = max([created, *(_ms(v.created_at) for v in versions)])
        out: dict[str, Any] = {"name": name, "creation_timestamp": created, "last_updated_timestamp": updated, "description": ""}
        if versions:
            out["latest_versions"] = [_version(versions[-1])]
        if aliases:
            out["aliases"] = aliases
        return out

    def create_registered_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name = _req(b, "name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
            raise InvalidInput(f"name = {name!r}: letters, digits, '_', '.', '-' (up to 128, starting with a letter or digit)", field="name")

        def tx(c: Any) -> dict[str, Any]:
            if c.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                from shepherd.errors import Conflict

                raise Conflict(f"Registered Model (name={name}) already exists.")
            from shepherd.store import audit

            c.execute("INSERT INTO models(name, created_at) VALUES (?, ?)", (name, audit.now()))
            audit.append(c, actor=actor, action="model.create", target=f"model:{name}", after={"name": name})
            return self._registered(c, name)

        return {"registered_model": self.db.write(tx)}

    def get_registered_model(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name = _req(b, "name")
        return {"registered_model": self.db.read(lambda c: self._registered(c, name))}

    def search_registered_models(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        conds = _simple_filter(b.get("filter"), {"name", "tag", "tags"})
        limit = int(b.get("max_results") or 100)
        offset = search.decode_token(b.get("page_token"))

        def q(c: Any) -> list[dict[str, Any]]:
            names = [r[0] for r in c.execute("SELECT name FROM models ORDER BY name")]
            out = []
            for n in names:
                ok = True
                for k, op, v in conds:
                    if k == "name":
                        ok &= _match(n, op, v)
                    elif op in ("=", "LIKE", "ILIKE"):
                        ok = False  # registered models carry no tags here: an equality on a tag never matches
                if ok:
                    out.append(self._registered(c, n))
            return out

        found = self.db.read(q)
        out: dict[str, Any] = {"registered_models": found[offset:offset + limit]}
        if offset + limit < len(found):
            out["next_page_token"] = search.encode_token(offset + limit)
        return out

    def create_model_version(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, source = _req(b, "name"), _req(b, "source")
        run_id = b.get("run_id") or None
        model_id = b.get("model_id") or None
        prefix, logged_id = self._source_prefix(source, model_id)
        rec = self.t.register_from_artifacts(
            name, prefix, run_id=run_id, description=b.get("description") or "", actor=actor, logged_model_id=logged_id,
        )
        return {"model_version": _version(rec)}

    def _source_prefix(self, source: str, model_id: str | None) -> tuple[str, str | None]:
        """The artifact prefix behind a version source: models:/<model_id>, mlflow-artifacts:/..., or runs:/<run>/<path>."""
        m = re.fullmatch(r"models:/(m-[0-9a-f]{32})/?", source)
        if m or model_id:
            mid = m.group(1) if m else model_id
            row = self.db.read(lambda c: store.logged_model(c, mid))
            if row is None:
                raise NotFound(f"Logged model with ID '{mid}' not found.")
            return row["artifact_location"].removeprefix("mlflow-artifacts:/").strip("/"), mid
        if source.startswith("mlflow-artifacts:/"):
            return source.removeprefix("mlflow-artifacts:/").strip("/"), None
        m = re.fullmatch(r"runs:/([0-9a-f]{32})/(.+)", source)
        if m:
            run = self.t.get_run(m.group(1))
            return f"{run.info.artifact_uri.removeprefix('mlflow-artifacts:/').strip('/')}/{m.group(2).strip('/')}", None
        raise InvalidInput(f"source = {source!r}: expected models:/<model_id>, runs:/<run_id>/<path> or mlflow-artifacts:/...", field="source")

    def get_model_version(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, version = _req(b, "name"), _version_number(_req(b, "version"))
        return {"model_version": _version(self.db.read(lambda c: _get_version(c, name, version)))}

    def get_download_uri(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, version = _req(b, "name"), _version_number(_req(b, "version"))
        self.db.read(lambda c: _get_version(c, name, version))
        return {"artifact_uri": f"mlflow-artifacts:/{REGISTRY_PREFIX}/{name}/{version}"}

    def search_model_versions(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        conds = _simple_filter(b.get("filter"), {"name", "run_id", "version_number", "source_path", "tag", "tags"})
        limit = int(b.get("max_results") or 10_000)
        offset = search.decode_token(b.get("page_token"))

        def q(c: Any) -> list[registry.VersionRecord]:
            out = []
            for (n,) in c.execute("SELECT name FROM models ORDER BY name").fetchall():
                if not all(_match(n, op, v) for k, op, v in conds if k == "name"):
                    continue
                for rec in reversed(registry.list_versions(c, n)):
                    fields = {"run_id": str(rec.lineage.get("run_id") or ""), "version_number": str(rec.version),
                              "source_path": str(rec.lineage.get("source") or "")}
                    if all(_match(fields[k], op, v) for k, op, v in conds if k in fields):
                        if not any(k in ("tag", "tags") and op in ("=", "LIKE", "ILIKE") for k, op, _ in conds):
                            out.append(rec)
            return out

        found = self.db.read(q)
        out: dict[str, Any] = {"model_versions": [_version(r) for r in found[offset:offset + limit]]}
        if offset + limit < len(found):
            out["next_page_token"] = search.encode_token(offset + limit)
        return out

    def set_alias(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, alias, version = _req(b, "name"), _req(b, "alias"), _version_number(_req(b, "version"))
        self.db.write(lambda c: registry.set_alias(c, name, alias, version, actor=actor))
        return {}

    def delete_alias(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, alias = _req(b, "name"), _req(b, "alias")
        self.db.write(lambda c: registry.delete_alias(c, name, alias, actor=actor))
        return {}

    def get_by_alias(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name, alias = _req(b, "name"), _req(b, "alias")
        return {"model_version": _version(self.db.read(lambda c: registry.resolve(c, name, alias)))}

    def get_latest_versions(self, b: dict[str, Any], actor: str) -> dict[str, Any]:
        name = _req(b, "name")
        versions = self.db.read(lambda c: (self._model_row(c, name), registry.list_versions(c, name))[1])
        return {"model_versions": [_version(versions[-1])] if versions else []}

    # -- artifacts (the mlflow-artifacts proxy) -----------------------------------------

    def registry_file(self, rel_path: str) -> tuple[str, int] | None:
        """(sha256, size) of a file under registry/<model>/<version>/..., or None for other paths."""
        parts = rel_path.split("/", 3)
        if parts[0] != REGISTRY_PREFIX or len(parts) < 4:
            return None
        rec = self.db.read(lambda c: _get_version(c, parts[1], _version_number(parts[2])))
        f = next((f for f in rec.files if f.path == parts[3]), None)
        if f is None:
            raise NotFound(f"artifact {rel_path!r} does not exist")
        return f.sha256, f.size

    def list_registry(self, rel_path: str) -> list[dict[str, Any]] | None:
        parts = rel_path.strip("/").split("/", 3)
        if parts[0] != REGISTRY_PREFIX or len(parts) < 3:
            return None
        rec = self.db.read(lambda c: _get_version(c, parts[1], _version_number(parts[2])))
        prefix = parts[3] if len(parts) == 4 else ""
        out: dict[str, dict[str, Any]] = {}
        for f in rec.files:
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1:] if prefix else f.path
            head, sep, _ = rest.partition("/")
            out[head] = {"path": head, "is_dir": True} if sep else {"path": head, "is_dir": False, "file_size": f.size}
        return [out[k] for k in sorted(out)]


def _get_version(c: Any, name: str, version: int) -> registry.VersionRecord:
    try:
        return registry.get_version(c, name, version)
    except NotFound:
        raise NotFound(f"Model Version (name={name}, version={version}) not found") from None


def _version_number(value: Any) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise InvalidInput(f"version = {value!r}: versions are positive integers", field="version") from None
    if n < 1:
        raise InvalidInput(f"version = {value!r}: versions are positive integers", field="version")
    return n


def _version(rec: registry.VersionRecord) -> dict[str, Any]:
    created = _ms(rec.created_at)
    out: dict[str, Any] = {
        "name": rec.model, "version": str(rec.version), "creation_timestamp": created, "last_updated_timestamp": created,
        "current_stage": "None", "description": rec.description or "",
        "source": rec.lineage.get("source") or f"{'mlflow-artifacts:/'}{REGISTRY_PREFIX}/{rec.model}/{rec.version}",
        "run_id": str(rec.lineage.get("run_id") or ""), "status": "READY", "run_link": "",
    }
    if rec.aliases:
        out["aliases"] = list(rec.aliases)
    if rec.tags:
        out["tags"] = [{"key": k, "value": v} for k, v in rec.tags.items()]
    if rec.lineage.get("logged_model_id"):
        out["model_id"] = rec.lineage["logged_model_id"]
    return out


def _info(info: store.RunInfo) -> dict[str, Any]:
    out = msgspec.to_builtins(info)
    if out.get("end_time") is None:
        out.pop("end_time", None)
    return out


def _run(run: store.Run) -> dict[str, Any]:
    data = {k: v for k, v in run.data.items() if v}
    return {"info": _info(run.info), "data": data, "inputs": run.inputs}


def _logged(row: dict[str, Any]) -> dict[str, Any]:
    tags = msgspec.json.decode(row["tags"])
    params = msgspec.json.decode(row["params"])
    info = {
        "model_id": row["model_id"], "experiment_id": str(row["experiment_id"]), "name": row["name"],
        "creation_timestamp_ms": row["creation_time"], "last_updated_timestamp_ms": row["last_updated_time"],
        "artifact_uri": row["artifact_location"], "status": row["status"], "model_type": row["model_type"] or "",
        "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
    }
    if row["source_run_id"]:
        info["source_run_id"] = row["source_run_id"]
    return {"info": info, "data": {"params": [{"key": k, "value": v} for k, v in sorted(params.items())]}}


SIMPLE = re.compile(
    r"\s*(?P<key>(?:tags?\.)?(?:`[^`]+`|[A-Za-z_][A-Za-z0-9_.]*))\s*(?P<op>=|!=|LIKE|ILIKE)\s*(?P<q>['\"])(?P<value>.*?)(?P=q)\s*(?:AND\s+|$)",
    re.I,
)


def _simple_filter(text: str | None, allowed: set[str]) -> list[tuple[str, str, str]]:
    """`key op 'value' [AND ...]` filters of the registry and logged-model searches."""
    out: list[tuple[str, str, str]] = []
    if not text or not text.strip():
        return out
    pos = 0
    while pos < len(text):
        m = SIMPLE.match(text, pos)
        if not m:
            raise InvalidInput(f"invalid filter {text!r}: expected key = 'value' [AND ...]", field="filter")
        key = m.group("key")
        base = key.split(".", 1)[0].lower() if key.lower().startswith(("tag.", "tags.")) else key.lower()
        if base not in allowed:
            raise InvalidInput(f"invalid filter {text!r}: cannot filter on {key!r}", field="filter")
        out.append((base, m.group("op").upper(), m.group("value")))
        pos = m.end()
    return out


def _match(actual: str, op: str, value: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    pattern = "^" + re.escape(value).replace("%", ".*").replace("_", ".") + "$"
    return re.match(pattern, actual, re.I if op == "ILIKE" else 0) is not None


# (method, path under /api/2.0/mlflow/, handler name, writes?)
ROUTES: list[tuple[str, str, str, bool]] = [
    ("POST", "experiments/create", "create_experiment", True),
    ("GET", "experiments/get", "get_experiment", False),
    ("GET", "experiments/get-by-name", "get_experiment_by_name", False),
    ("POST", "experiments/search", "search_experiments", False),
    ("GET", "experiments/search", "search_experiments", False),
    ("POST", "experiments/delete", "delete_experiment", True),
    ("POST", "experiments/restore", "restore_experiment", True),
    ("POST", "experiments/update", "update_experiment", True),
    ("POST", "experiments/set-experiment-tag", "set_experiment_tag", True),
    ("POST", "runs/create", "create_run", True),
    ("POST", "runs/update", "update_run", True),
    ("POST", "runs/delete", "delete_run", True),
    ("POST", "runs/restore", "restore_run", True),
    ("GET", "runs/get", "get_run", False),
    ("POST", "runs/log-metric", "log_metric", True),
    ("POST", "runs/log-parameter", "log_param", True),
    ("POST", "runs/set-tag", "set_tag", True),
    ("POST", "runs/delete-tag", "delete_tag", True),
    ("POST", "runs/log-batch", "log_batch", True),
    ("POST", "runs/log-inputs", "log_inputs", True),
    ("POST", "runs/outputs", "log_outputs", True),
    ("POST", "runs/search", "search_runs", False),
    ("GET", "metrics/get-history", "get_metric_history", False),
    ("POST", "logged-models", "create_logged_model", True),
    ("POST", "logged-models/search", "search_logged_models", False),
    ("GET", "logged-models/{model_id:str}", "get_logged_model", False),
    ("PATCH", "logged-models/{model_id:str}", "finalize_logged_model", True),
    ("DELETE", "logged-models/{model_id:str}", "delete_logged_model", True),
    ("PATCH", "logged-models/{model_id:str}/tags", "set_logged_model_tags", True),
    ("POST", "logged-models/{model_id:str}/params", "log_logged_model_params", True),
    ("POST", "registered-models/create", "create_registered_model", True),
    ("GET", "registered-models/get", "get_registered_model", False),
    ("GET", "registered-models/search", "search_registered_models", False),
    ("POST", "registered-models/search", "search_registered_models", False),
    ("POST", "registered-models/get-latest-versions", "get_latest_versions", False),
    ("GET", "registered-models/get-latest-versions", "get_latest_versions", False),
    ("POST", "registered-models/alias", "set_alias", True),
    ("DELETE", "registered-models/alias", "delete_alias", True),
    ("GET", "registered-models/alias", "get_by_alias", False),
    ("POST", "model-versions/create", "create_model_version", True),
    ("GET", "model-versions/get", "get_model_version", False),
    ("GET", "model-versions/search", "search_model_versions", False),
    ("POST", "model-versions/search", "search_model_versions", False),
    ("GET", "model-versions/get-download-uri", "get_download_uri", False),
]
