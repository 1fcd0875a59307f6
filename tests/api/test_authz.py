"""Authorization matrix: every route x every role (and no token) gets the expected status."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from shepherd.auth import create_token
from shepherd.store import alerts as alert_store
from shepherd.store import registry
from tests.conftest import bearer

ROLES = ["none", "viewer", "operator", "admin"]
RANK = {"none": 0, "viewer": 1, "operator": 2, "admin": 3}


class Case:
    def __init__(self, method: str, template: str, path: str, need: str | None, ok: set[int], *, body: Any = None, setup: Callable | None = None) -> None:
        self.method, self.template, self.path, self.need, self.ok, self.body, self.setup = method, template, path, need, ok, body, setup


def _alias(name: str) -> Callable:
    return lambda env: env["db"].write(lambda c: registry.set_alias(c, "tiny", name, 1, actor="setup"))


def _tag(key: str) -> Callable:
    return lambda env: env["db"].write(lambda c: registry.set_tag(c, "tiny", 1, key, "v", actor="setup"))


def _admin(env: dict, method: str, path: str, **kw: Any) -> None:
    resp = env["api"].request(method, path, headers=bearer(env["admin"]), **kw)
    assert resp.status_code < 300, resp.text


def _candidate(env: dict) -> None:
    _admin(env, "POST", "/api/v1/deployments/d/deploy", json={"model": "tiny", "version": 1})


def _deployment(name: str) -> Callable:
    return lambda env: _admin(env, "POST", f"/api/v1/deployments/{name}/deploy", json={"model": "tiny", "version": 1})


def _loaded(env: dict) -> None:
    _admin(env, "POST", "/v2/repository/models/tiny/load")


INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}


def _new_token(env: dict) -> None:
    env["victim"] = create_token(env["db"], role="viewer", name="victim", actor="setup")[1].id


def _open_alert(env: dict) -> None:
    """An unacknowledged alert (the same open one until a role acknowledges it, then a new one)."""
    at = "2030-01-01T00:00:00.000000+00:00"
    env["alert"] = env["db"].write(
        lambda c: alert_store.record(c, deployment="d", kind="drift", level="warning", key="drift", message="m", details={}, at=at, open_after="")
    )[1].id


def _served(env: dict) -> None:
    """Two logged requests on deployment d (primary, version 2), so a reference can be adopted from them."""
    for _ in range(2):
        _admin(env, "POST", "/v2/models/d/infer", json=INFER)


def _adopted(env: dict) -> None:
    if not env.get("adopted"):
        _served(env)
        _admin(env, "POST", "/api/v1/deployments/d/reference", json={"rows": 2})
        env["adopted"] = True


def _runs(env: dict) -> None:
    if "run_a" not in env:
        tracker = env["api"].app.state.appliance.tracker
        env["run_a"], env["run_b"] = (tracker.create_run("0").info.run_id for _ in range(2))
        tracker.log_batch(env["run_a"], metrics=[{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}])


CASES = [
    Case("GET", "/v2/health/live", "/v2/health/live", None, {200}),
    Case("GET", "/v2/health/ready", "/v2/health/ready", None, {200}),
    Case("GET", "/schema/openapi.json", "/schema/openapi.json", None, {200}),
    Case("GET", "/api/v1/models", "/api/v1/models", "viewer", {200}),
    Case("GET", "/api/v1/models/{name:str}", "/api/v1/models/tiny", "viewer", {200}),
    Case("GET", "/api/v1/models/{name:str}/versions", "/api/v1/models/tiny/versions", "viewer", {200}),
    Case("GET", "/api/v1/models/{name:str}/versions/{ref:str}", "/api/v1/models/tiny/versions/1", "viewer", {200}),
    Case("GET", "/api/v1/models/{name:str}/versions/{ref:str}/card", "/api/v1/models/tiny/versions/1/card?format=html", "viewer", {200}),
    Case("GET", "/api/v1/models/{name:str}/aliases", "/api/v1/models/tiny/aliases", "viewer", {200}),
    Case("PUT", "/api/v1/models/{name:str}/aliases/{alias:str}", "/api/v1/models/tiny/aliases/staging", "operator", {200}, body={"version": 1}),
    Case("DELETE", "/api/v1/models/{name:str}/aliases/{alias:str}", "/api/v1/models/tiny/aliases/gone", "operator", {200}, setup=_alias("gone")),
    Case("PUT", "/api/v1/models/{name:str}/versions/{version:int}/tags/{key:path}", "/api/v1/models/tiny/versions/1/tags/team", "operator", {200}, body={"value": "x"}),
    Case("DELETE", "/api/v1/models/{name:str}/versions/{version:int}/tags/{key:path}", "/api/v1/models/tiny/versions/1/tags/old", "operator", {200}, setup=_tag("old")),
    Case("POST", "/api/v1/models/{name:str}/versions/{version:int}/archive", "/api/v1/models/tiny/versions/3/archive", "operator", {200}),
    Case("POST", "/api/v1/models/{name:str}/versions/{version:int}/unarchive", "/api/v1/models/tiny/versions/3/unarchive", "operator", {200}),
    Case("POST", "/api/v1/bundles", "/api/v1/bundles", "operator", {200, 201}, body="bundle"),
    Case("GET", "/api/v1/audit", "/api/v1/audit", "admin", {200}),
    Case("GET", "/api/v1/tokens", "/api/v1/tokens", "admin", {200}),
    Case("POST", "/api/v1/admin/reload", "/api/v1/admin/reload", "admin", {200}),
    Case("POST", "/api/v1/admin/backup", "/api/v1/admin/backup", "admin", {200}, body={"dest": tempfile.mkdtemp(prefix="shepherd-authz-backup-")}),
    Case("POST", "/api/v1/tokens", "/api/v1/tokens", "admin", {201}, body={"role": "viewer", "name": "ci"}),
    Case("DELETE", "/api/v1/tokens/{token_id:str}", "/api/v1/tokens/{victim}", "admin", {200}, setup=_new_token),
    Case("GET", "/api/v1/deployments", "/api/v1/deployments", "viewer", {200}),
    Case("GET", "/api/v1/deployments/{name:str}", "/api/v1/deployments/d", "viewer", {200}),
    Case("POST", "/api/v1/deployments/{name:str}/deploy", "/api/v1/deployments/d/deploy", "operator", {200}, body={"model": "tiny", "version": 1}),
    Case("POST", "/api/v1/deployments/{name:str}/promote", "/api/v1/deployments/d/promote", "operator", {200}, setup=_candidate),
    Case("POST", "/api/v1/deployments/{name:str}/rollback", "/api/v1/deployments/d/rollback", "operator", {200}),
    Case("DELETE", "/api/v1/deployments/{name:str}", "/api/v1/deployments/gone", "operator", {200}, setup=_deployment("gone")),
    Case("GET", "/api/v1/alerts", "/api/v1/alerts?deployment=d&unacknowledged=true", "viewer", {200}),
    Case("POST", "/api/v1/alerts/{alert_id:int}/ack", "/api/v1/alerts/{alert}/ack", "operator", {200}, setup=_open_alert),
    Case("POST", "/api/v1/feedback", "/api/v1/feedback", "operator", {200}, body={"request_id": "r1", "label": 1}),
    Case("GET", "/api/v1/deployments/{name:str}/drift", "/api/v1/deployments/d/drift", "viewer", {200}),
    Case("GET", "/api/v1/deployments/{name:str}/performance", "/api/v1/deployments/d/performance", "viewer", {200}),
    # the first adoption succeeds; the version's reference is immutable afterwards (409)
    Case("POST", "/api/v1/deployments/{name:str}/reference", "/api/v1/deployments/d/reference", "operator", {201, 409}, body={"rows": 2}, setup=_served),
    Case("GET", "/api/v1/deployments/{name:str}/reference", "/api/v1/deployments/d/reference", "viewer", {200}, setup=_adopted),
    Case("GET", "/api/v1/deployments/{name:str}/predictions", "/api/v1/deployments/d/predictions", "operator", {200}),
    Case("GET", "/api/v1/experiments", "/api/v1/experiments", "viewer", {200}),
    Case("GET", "/api/v1/experiments/{ref:str}", "/api/v1/experiments/Default", "viewer", {200}),
    Case("GET", "/api/v1/runs", "/api/v1/runs?experiment=0", "viewer", {200}),
    Case("GET", "/api/v1/runs/compare", "/api/v1/runs/compare?ids={run_a}&ids={run_b}", "viewer", {200}, setup=_runs),
    Case("GET", "/api/v1/runs/{run_id:str}", "/api/v1/runs/{run_a}", "viewer", {200}, setup=_runs),
    Case("GET", "/api/v1/runs/{run_id:str}/metrics/{key:path}", "/api/v1/runs/{run_a}/metrics/m", "viewer", {200}, setup=_runs),
    Case("GET", "/metrics", "/metrics", "viewer", {200}),
    Case("GET", "/v2", "/v2", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}", "/v2/models/d", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/versions/{version:str}", "/v2/models/d/versions/1", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/ready", "/v2/models/d/ready", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/versions/{version:str}/ready", "/v2/models/d/versions/2/ready", "viewer", {200}),
    Case("POST", "/v2/models/{model:str}/infer", "/v2/models/d/infer", "viewer", {200}, body=INFER),
    Case("POST", "/v2/models/{model:str}/versions/{version:str}/infer", "/v2/models/d/versions/1/infer", "viewer", {200}, body=INFER),
    Case("GET", "/v2/models/{model:str}/config", "/v2/models/d/config", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/versions/{version:str}/config", "/v2/models/d/versions/1/config", "viewer", {200}),
    Case("GET", "/v2/models/stats", "/v2/models/stats", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/stats", "/v2/models/d/stats", "viewer", {200}),
    Case("GET", "/v2/models/{model:str}/versions/{version:str}/stats", "/v2/models/d/versions/2/stats", "viewer", {200}),
    Case("POST", "/v2/repository/index", "/v2/repository/index", "viewer", {200}),
    Case("POST", "/v2/repository/models/{model:str}/load", "/v2/repository/models/tiny/load", "operator", {200}),
    Case("POST", "/v2/repository/models/{model:str}/unload", "/v2/repository/models/tiny/unload", "operator", {200}, setup=_loaded),
]


def _served_routes(api) -> set[tuple[str, str]]:
    return {
        (m, r.path)
        for r in api.app.routes
        for m in r.methods
        if m not in ("OPTIONS", "HEAD") and not (r.path.startswith("/schema") and r.path != "/schema/openapi.json")
    }


MLFLOW_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")


def _mlflow_cases() -> list[tuple[str, str, str]]:
    """(method, route, role) of every MLflow-compatible route: from the protocol table, plus the artifact proxy."""
    from shepherd.tracking.mlflow import ROUTES as MLFLOW_ROUTES

    out = [(m, f"{pre}/{p}", "operator" if w else "viewer") for pre in MLFLOW_PREFIXES for m, p, _, w in MLFLOW_ROUTES]
    for pre in ("/api", "/ajax-api"):
        art = f"{pre}/2.0/mlflow-artifacts/artifacts"
        out += [("PUT", f"{art}/{{path:path}}", "operator"), ("GET", f"{art}/{{path:path}}", "viewer"),
                ("DELETE", f"{art}/{{path:path}}", "operator"), ("GET", art, "viewer")]
    return [*out, ("GET", "/api/3.0/mlflow/server-info", "viewer")]


def test_matrix_covers_every_route(api):
    """The matrix lists every (method, route) the app serves, so a new route cannot skip authorization review."""
    mlflow_routes = {(m, p) for m, p, _ in _mlflow_cases()}
    assert mlflow_routes <= _served_routes(api)
    assert _served_routes(api) - mlflow_routes == {(c.method, c.template) for c in CASES}


@pytest.mark.parametrize(("method", "template", "need"), _mlflow_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_mlflow_route_by_role(api, tokens, method, template, need):
    """MLflow routes: no token is 401, a viewer writing is 403, and a role at the route's level gets past the guard."""
    path = template.replace("{model_id:str}", "m-" + "0" * 32).replace("{path:path}", "1/x")
    for role in ("none", "viewer", need):
        headers = bearer(tokens[role]) if role != "none" else {}
        resp = api.request(method, path, headers=headers, content=b"{}" if method != "GET" else None)
        if role == "none":
            assert resp.status_code == 401 and resp.json()["error_code"] == "UNAUTHENTICATED", (role, resp.text)
        elif RANK[role] < RANK[need]:
            assert resp.status_code == 403 and resp.json()["error_code"] == "PERMISSION_DENIED", (role, resp.text)
        else:
            assert resp.status_code not in (401, 403, 500), (role, resp.status_code, resp.text)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.template}")
def test_route_by_role(api, appliance, tokens, make_bundle, case):
    """Below the route's role: 401 without a token, 403 with one; at or above it: success."""
    appliance.importer.import_file(make_bundle(bias=1.0), actor="setup")
    appliance.importer.import_file(make_bundle(bias=2.0), actor="setup")
    appliance.importer.import_file(make_bundle(bias=5.0), actor="setup")  # version 3: never deployed
    bundle = make_bundle(bias=3.0).read_bytes()
    env: dict[str, Any] = {"db": appliance.db, "api": api, "admin": tokens["admin"]}
    for version in (1, 2):  # deployment d: primary 2, previous 1
        _admin(env, "POST", "/api/v1/deployments/d/deploy", json={"model": "tiny", "version": version})
        _admin(env, "POST", "/api/v1/deployments/d/promote")
    for role in ROLES:
        if case.setup:
            case.setup(env)
        headers = bearer(tokens[role]) if role != "none" else {}
        kw: dict[str, Any] = {}
        if case.body == "bundle":
            kw["content"] = bundle
        elif case.body is not None:
            kw["json"] = case.body
        resp = api.request(case.method, case.path.format(**env), headers=headers, **kw)
        if case.need is None or RANK[role] >= RANK[case.need]:
            assert resp.status_code in case.ok, f"{role}: {resp.status_code} {resp.text}"
        elif role == "none":
            assert resp.status_code == 401, f"{role}: {resp.status_code}"
            assert resp.headers["www-authenticate"] == "Bearer"
            assert resp.json()["code"] == "UNAUTHENTICATED"
        else:
            assert resp.status_code == 403, f"{role}: {resp.status_code}"
            assert resp.json()["code"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    "header",
    ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer shp_0123456789abcdef_" + "a" * 43, "Bearer"],
)
def test_bad_tokens_are_401(api, tokens, header):
    """Malformed, unknown and non-bearer credentials are refused with 401."""
    resp = api.get("/api/v1/models", headers={"Authorization": header})
    assert resp.status_code == 401


def test_wrong_secret_for_known_id_is_401(api, tokens):
    """A token with a known id but a wrong secret is refused."""
    good = tokens["admin"]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert api.get("/api/v1/models", headers=bearer(forged)).status_code == 401


def test_revoked_token_stops_working_at_once(api, tokens):
    """Revoking a token through the API makes this server refuse it on the next request."""
    token = create_token(api.app.state.appliance.db, role="operator", name="temp", actor="t")[0]
    assert api.get("/api/v1/models", headers=bearer(token)).status_code == 200
    token_id = token.split("_")[1]
    assert api.delete(f"/api/v1/tokens/{token_id}", headers=bearer(tokens["admin"])).status_code == 200
    assert api.get("/api/v1/models", headers=bearer(token)).status_code == 401


def test_token_secret_is_never_stored(api, tokens, appliance):
    """Only a sha256 of each secret is in the database, and listings never show it."""
    secret = tokens["admin"].split("_", 2)[2]
    raw = (appliance.config.data_dir / "shepherd.sqlite").read_bytes()
    assert secret.encode() not in raw
    listing = api.get("/api/v1/tokens", headers=bearer(tokens["admin"])).text
    assert secret not in listing and "secret" not in listing


def test_mutations_are_audited_with_actor(api, tokens, appliance, make_bundle):
    """A mutation through the API writes an audit entry naming the token, action, target, before and after."""
    appliance.importer.import_file(make_bundle(), actor="setup")
    api.put("/api/v1/models/tiny/aliases/production", json={"version": 1}, headers=bearer(tokens["operator"]))
    entries = api.get("/api/v1/audit", params={"action": "alias."}, headers=bearer(tokens["admin"])).json()
    [e] = entries
    assert e["actor"] == "token:" + tokens["operator"].split("_")[1]
    assert (e["action"], e["target"], e["before"], e["after"]) == ("alias.set", "model:tiny@production", {"version": None}, {"version": 1})
