"""Monitoring routes: feedback, drift history, performance, reference profiles, prediction export."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.errors import InvalidInput, NotFound
from shepherd.monitoring import feedback
from shepherd.monitoring.references import ReferenceInfo
from shepherd.store import audit

From = Annotated[str | None, QueryParameter(name="from", description="ISO 8601 start (inclusive)")]
To = Annotated[str | None, QueryParameter(name="to", description="ISO 8601 end (exclusive)")]


class AdoptBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rows: Annotated[int, msgspec.Meta(ge=2, le=10_000_000)]
    """How many of the version's first logged rows become its reference."""
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Version to give a reference (default: the deployment's primary)."""


def _app(request: Request) -> Appliance:
    return request.app.state.appliance


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 timestamp (naive means UTC), or InvalidInput naming the parameter."""
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field} = {value!r}: not an ISO 8601 timestamp", field=field) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    a, b = parse_time(start, "from"), parse_time(end, "to")
    if a and b and b <= a:
        raise InvalidInput("to must be after from", field="to")
    return a, b


def _deployment(appl: Appliance, name: str) -> tuple[str, int | None]:
    """The model of a deployment and its primary version (the deployment must exist)."""
    dep = appl.deployments.get(name)
    return dep.model, (dep.slots.primary.version if dep.slots.primary else None)


class MonitoringController(Controller):
    path = "/api/v1"
    tags = ["monitoring"]

    @post("/feedback", opt=OPERATOR, status_code=200)
    async def send_feedback(self, request: Request, data: JSONBody[feedback.FeedbackBody]) -> feedback.FeedbackResult:
        """Ground truth by request id, one label or a batch; unknown ids come back in `unknown`; the newest label wins.
        A label for a classifier's answer must be a whole number (a class): one that is not refuses the whole send."""
        appl = _app(request)
        items = data.items()
        return await anyio.to_thread.run_sync(
            lambda: feedback.ingest(appl.events, appl.predlog, items, single=data.labels is None, task_of=appl.monitor.task_of))

    @get("/deployments/{name:str}/drift", opt=VIEWER)
    async def drift(
        self, request: Request, name: FromPath[str], start: From = None, end: To = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    ) -> list[dict[str, Any]]:
        """Drift windows that ended in [from, to), newest first, with per-feature statistics and the performance of each
        window's labelled rows (null without labels)."""
        appl = _app(request)
        _deployment(appl, name)
        a, b = _range(start, end)
        return await anyio.to_thread.run_sync(lambda: appl.monitor.drift_history(name, a, b, limit))

    @get("/deployments/{name:str}/performance", opt=VIEWER)
    async def performance(
        self, request: Request, name: FromPath[str], start: From = None, end: To = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        """Current performance per logged version (latest labelled rows) and the stored history in [from, to)."""
        appl = _app(request)
        _deployment(appl, name)
        a, b = _range(start, end)

        def work() -> dict[str, Any]:
            policy = appl.monitor.policy(name)
            current = [
                r for model, version in appl.events.versions_logged(name)
                if (r := appl.monitor.evaluate_performance(name, model, version, policy)) is not None
            ]
            history = appl.events.performance(name, a, b, limit)
            for h in history:
                h["metrics"] = msgspec.json.decode(h["metrics"]) if isinstance(h["metrics"], str) else h["metrics"]
            return {"current": current, "history": history}

        return await anyio.to_thread.run_sync(work)

    @get("/deployments/{name:str}/reference", opt=VIEWER)
    async def reference(
        self, request: Request, name: FromPath[str], version: Annotated[int | None, QueryParameter(ge=1)] = None
    ) -> ReferenceInfo:
        """The reference profile of a version (default: primary): its source, size and features."""
        appl = _app(request)
        model, primary = _deployment(appl, name)
        v = version or primary
        if v is None:
            raise InvalidInput(f"deployment {name!r} has no primary; name a version", field="version")

        def work() -> ReferenceInfo:
            appl.monitor.reference(name, model, v, loaded_only=True)  # builds it from the bundle on first use, once loaded
            info = appl.references.info(model, v)
            if info is None:
                raise NotFound(f"{model} version {v} has no reference profile: one is built from its bundle when a deployment "
                               "loads it, or adopt one with POST .../reference")
            return info

        return await anyio.to_thread.run_sync(work)

    @post("/deployments/{name:str}/reference", opt=OPERATOR, status_code=201)
    async def adopt_reference(self, request: Request, name: FromPath[str], data: JSONBody[AdoptBody]) -> ReferenceInfo:
        """Adopt the first `rows` logged rows of a version (default: primary) as its reference (audited; refused if it has one)."""
        appl = _app(request)
        model, primary = _deployment(appl, name)
        v = data.version or primary
        if v is None:
            raise InvalidInput(f"deployment {name!r} has no primary; name a version", field="version")
        who = actor(request)

        def work() -> ReferenceInfo:
            if appl.predlog is not None:
                appl.predlog.flush()
            info = appl.monitor.adopt_reference(name, model, v, data.rows, who)
            appl.db.write(lambda c: audit.append(
                c, actor=who, action="reference.adopt", target=f"{model}:{v}", after={"deployment": name, "rows": info.rows}
            ))
            return info

        return await anyio.to_thread.run_sync(work)

    @get("/deployments/{name:str}/predictions", opt=OPERATOR, media_type="application/vnd.apache.parquet")
    async def export(self, request: Request, name: FromPath[str], start: From = None, end: To = None) -> Stream:
        """The logged predictions (with any labels) in [from, to) as a Parquet file."""
        appl = _app(request)
        _deployment(appl, name)
        a, b = _range(start, end)
        fd, tmp = tempfile.mkstemp(suffix=".parquet", dir=appl.config.data_dir / "tmp")
        os.close(fd)
        path = Path(tmp)

        def work() -> int:
            if appl.predlog is not None:
                appl.predlog.flush()
            return appl.events.export_parquet(path, name, a, b, names=appl.monitor.feature_names)

        try:
            rows = await anyio.to_thread.run_sync(work)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

        def chunks() -> Iterator[bytes]:
            try:
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk
            finally:
                path.unlink(missing_ok=True)

        return Stream(
            chunks(), media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="{name}-predictions.parquet"', "X-Rows": str(rows)},
        )


__all__ = ["MonitoringController", "Response"]
