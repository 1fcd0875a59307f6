"""Native tracking routes: experiments and runs (the same data the MLflow-compatible routes serve)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
import msgspec
from litestar import Controller, Request, get
from litestar.params import FromPath, FromQuery, QueryParameter

from shepherd.api.security import VIEWER
from shepherd.appliance import Appliance
from shepherd.tracking.service import Tracker

View = Literal["ACTIVE_ONLY", "DELETED_ONLY", "ALL"]


def _tracker(request: Request) -> Tracker:
    appl: Appliance = request.app.state.appliance
    return appl.tracker


class TrackingController(Controller):
    path = "/api/v1"
    tags = ["tracking"]
    opt = VIEWER

    @get("/experiments")
    async def experiments(
        self, request: Request, view: FromQuery[View] = "ACTIVE_ONLY", filter_: Annotated[str | None, QueryParameter(name="filter")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=50_000)] = 1000, page_token: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """Experiments (filter by name: `name LIKE 'x%'`), oldest first, paged."""
        t = _tracker(request)
        found, token = await anyio.to_thread.run_sync(lambda: t.search_experiments(view, limit, filter_, page_token))
        return {"experiments": [msgspec.to_builtins(e) for e in found], "next_page_token": token}

    @get("/experiments/{ref:str}")
    async def experiment(self, request: Request, ref: FromPath[str]) -> dict[str, Any]:
        """One experiment by id or name."""
        t = _tracker(request)
        return msgspec.to_builtins(await anyio.to_thread.run_sync(t.resolve_experiment, ref))

    @get("/runs")
    async def runs(
        self, request: Request, experiment: FromQuery[list[str]], filter_: Annotated[str | None, QueryParameter(name="filter")] = None,
        order_by: FromQuery[list[str] | None] = None, view: FromQuery[View] = "ACTIVE_ONLY",
        limit: Annotated[int, QueryParameter(ge=1, le=50_000)] = 100, page_token: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """Runs of the experiments (ids or names) matching an MLflow filter (`metrics.auc > 0.9 and params.lr = '0.1'`), paged."""
        t = _tracker(request)

        def work() -> dict[str, Any]:
            ids = [t.resolve_experiment(e).experiment_id for e in experiment]
            found, token = t.search_runs(ids, filter_, view, limit, order_by, page_token)
            return {"runs": [msgspec.to_builtins(r) for r in found], "next_page_token": token}

        return await anyio.to_thread.run_sync(work)

    @get("/runs/compare")
    async def compare(self, request: Request, ids: FromQuery[list[str]]) -> dict[str, Any]:
        """Two to twenty runs side by side: each param, latest metric and tag, one value per run."""
        t = _tracker(request)
        return await anyio.to_thread.run_sync(t.compare, ids)

    @get("/runs/{run_id:str}")
    async def run(self, request: Request, run_id: FromPath[str]) -> dict[str, Any]:
        """One run with its latest metrics, params, tags, inputs, and the registry versions made from it."""
        t = _tracker(request)

        def work() -> dict[str, Any]:
            return {**msgspec.to_builtins(t.get_run(run_id)), "registered_versions": t.registered_versions(run_id)}

        return await anyio.to_thread.run_sync(work)

    @get("/runs/{run_id:str}/metrics/{key:path}")  # the rest of the path: keys such as train/loss hold '/'
    async def history(
        self, request: Request, run_id: FromPath[str], key: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=25_000)] = 1000, page_token: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """One page of a metric's history, ordered by step then time."""
        t, key = _tracker(request), key.removeprefix("/")
        page, token = await anyio.to_thread.run_sync(lambda: t.metric_history(run_id, key, limit, page_token))
        return {"metrics": [msgspec.to_builtins(m) for m in page], "next_page_token": token}
