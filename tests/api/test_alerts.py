"""Alert routes and CLI commands over the real app: listing with filters, acknowledge, errors naming the field."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shepherd import cli
from shepherd.client import Client
from shepherd.monitoring.alerts import AlertSinks
from tests.conftest import bearer

SINKS = AlertSinks()


@pytest.fixture
def three(appliance) -> list[int]:
    """Three alerts: d/drift warning, d/performance critical, e/performance emergency."""
    raise_ = appliance.alerts.raise_alert
    return [
        raise_("d", "drift", "warning", "data drift", {"share": 0.6}, sinks=SINKS).alert.id,
        raise_("d", "performance", "critical", "accuracy -7%", {"drop": 0.07}, sinks=SINKS).alert.id,
        raise_("e", "performance", "emergency", "accuracy -20%", {"drop": 0.2}, sinks=SINKS).alert.id,
    ]


def test_list_alerts_with_filters(api, tokens, three):
    """GET /api/v1/alerts returns alerts oldest first, filtered by deployment, level, unacknowledged, after and limit."""
    h = bearer(tokens["viewer"])
    ids = lambda **params: [a["id"] for a in api.get("/api/v1/alerts", params=params, headers=h).json()]
    assert ids() == three
    assert ids(deployment="d") == three[:2]
    assert ids(level="emergency") == three[2:]
    assert ids(after=three[0], limit=1) == [three[1]]
    api.post(f"/api/v1/alerts/{three[1]}/ack", headers=bearer(tokens["operator"]))
    assert ids(unacknowledged="true") == [three[0], three[2]]
    assert ids(unacknowledged="false") == three
    [first] = api.get("/api/v1/alerts", params={"limit": 1}, headers=h).json()
    assert (first["deployment"], first["kind"], first["level"], first["key"], first["details"], first["occurrences"]) == (
        "d", "drift", "warning", "drift", {"share": 0.6}, 1,
    )


def test_ack_returns_alert_and_is_audited(api, tokens, three):
    """POST .../ack answers 200 with the alert acknowledged by the token, and audits it under that actor."""
    resp = api.post(f"/api/v1/alerts/{three[0]}/ack", headers=bearer(tokens["operator"]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    who = "token:" + tokens["operator"].split("_")[1]
    assert body["id"] == three[0] and body["acknowledged_by"] == who and body["acknowledged_at"] and body["closed_at"]
    [entry] = api.get("/api/v1/audit", params={"action": "alert."}, headers=bearer(tokens["admin"])).json()
    assert (entry["actor"], entry["action"], entry["target"]) == (who, "alert.acknowledge", f"alert:{three[0]}")


def test_ack_unknown_is_404_and_twice_is_409(api, tokens, three):
    """Acknowledging an unknown alert is 404; acknowledging one a second time is 409."""
    h = bearer(tokens["operator"])
    resp = api.post("/api/v1/alerts/999/ack", headers=h)
    assert resp.status_code == 404 and resp.json()["code"] == "RESOURCE_DOES_NOT_EXIST"
    assert api.post(f"/api/v1/alerts/{three[0]}/ack", headers=h).status_code == 200
    resp = api.post(f"/api/v1/alerts/{three[0]}/ack", headers=h)
    assert resp.status_code == 409 and "already acknowledged" in resp.json()["error"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"level": "fatal"}, "level"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"unacknowledged": "maybe"}, "unacknowledged"),
    ],
)
def test_bad_query_is_400_naming_the_field(api, tokens, params, field):
    """A bad filter value is refused with 400 and the field it names."""
    resp = api.get("/api/v1/alerts", params=params, headers=bearer(tokens["viewer"]))
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == field and resp.json()["code"] == "INVALID_PARAMETER_VALUE"


def test_cli_alerts_list_and_ack(api, tokens, three, monkeypatch):
    """`shepherd alerts list --open` shows unacknowledged alerts and `shepherd alerts ack ID` acknowledges one."""

    def client_over_app(self: Client, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url
        self.http = api
        api.headers["Authorization"] = f"Bearer {token}"

    monkeypatch.setattr(Client, "__init__", client_over_app)
    run = lambda *args: CliRunner().invoke(cli.main, [*args, "--token", tokens["operator"]])
    out = run("alerts", "ack", str(three[1]))
    assert out.exit_code == 0, out.output
    assert f"alert {three[1]} (critical, d/performance) acknowledged by token:" in out.output
    out = run("alerts", "list", "--open")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "LEVEL", "DEPLOYMENT", "KIND"]
    assert [line.split()[0] for line in lines[1:]] == [str(three[0]), str(three[2])]
    out = run("alerts", "list", "--level", "emergency", "--json")
    assert [a["id"] for a in json.loads(out.output)] == [three[2]]
    out = run("alerts", "ack", str(three[1]))
    assert out.exit_code == 1 and "already acknowledged" in out.output
