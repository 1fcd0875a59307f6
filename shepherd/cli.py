"""The `shepherd` command line: serve, check-config, keys, bundle, import, models, alias, tag, deploy, token, audit, alerts,
drift, performance, feedback, reference, predictions, experiments, runs."""

from __future__ import annotations

import getpass
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import msgspec

from shepherd import __version__, config as config_mod
from shepherd.errors import ShepherdError

PathArg = click.Path(path_type=Path)
ExistingFile = click.Path(exists=True, dir_okay=False, path_type=Path)


def _q(value: Any) -> str:
    """A value as one segment of a request path: '?', '#', '%' and '/' in names or keys stay inside it."""
    return quote(str(value), safe="")


class _NonEmpty(click.ParamType):
    """A name, key or id: an empty one would fold the request path and hit another endpoint."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("must not be empty", param, ctx)
        return value


NonEmpty = _NonEmpty()


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _reporting(call: Callable[[], Any]) -> Any:
    """Run `call`; an error the user can act on is one line on stderr and exit status 1."""
    try:
        return call()
    except ShepherdError as err:
        _fail(err.message)
    except OSError as err:  # a file or directory the command was given: missing, a directory, not writable
        _fail(f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err))
    except UnicodeDecodeError as err:
        _fail(f"input is not UTF-8 text ({err.reason} at byte {err.start})")


class _Group(click.Group):
    """The top-level group: it reports the errors of every command below it (`_reporting`)."""

    def invoke(self, ctx: click.Context) -> Any:
        return _reporting(lambda: super(_Group, self).invoke(ctx))


def _print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _load_config(path: Path | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except ShepherdError as err:
        _fail(err.message, 2)
        raise  # unreachable


config_option = click.option("--config", "config_path", type=PathArg, envvar="SHEPHERD_CONFIG", help="shepherd.toml to use (default: embedded defaults).")
remote = [
    click.option("--url", envvar="SHEPHERD_URL", default="http://127.0.0.1:8080", show_default=True, help="Base URL of the running server."),
    click.option("--token", envvar="SHEPHERD_TOKEN", help="API token (or set SHEPHERD_TOKEN)."),
    click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer."),
]


def remote_command(group: click.Group, name: str, **kw: Any) -> Callable:
    """Declare a command that talks to the running server; it receives a `client` and `as_json`."""

    def deco(fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(url: str, token: str | None, as_json: bool, **kwargs: Any) -> Any:
            from shepherd.client import Client

            return fn(Client(url, token), as_json, **kwargs)

        for opt in reversed(remote):
            wrapper = opt(wrapper)
        return group.command(name, **kw)(wrapper)

    return deco


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shepherd")
def main() -> None:
    """Shepherd: registry, signed offline bundles and model serving for air-gapped servers."""
    from shepherd import log

    # Commands other than `serve` log warnings only, to stderr, so stdout stays clean for their output.
    log.configure("warning", "console")


# ---------------------------------------------------------------------------------------- serve
@main.command()
@config_option
@click.option("--import", "imports", multiple=True, type=ExistingFile, help="Bundle to import before serving (repeatable; idempotent).")
def serve(config_path: Path | None, imports: tuple[Path, ...]) -> None:
    """Start the appliance (HTTP API on server.host:server.port); SIGHUP reloads, SIGTERM drains and exits."""
    from shepherd import service

    cfg = _load_config(config_path)
    try:
        code = service.run(cfg, config_path, imports, actor=f"local:{getpass.getuser()}")
    except service.StartupError as err:
        _fail(err.message, 2)
    sys.exit(code)


@main.command("check-config")
@click.argument("file", type=PathArg)
def check_config(file: Path) -> None:
    """Validate a config file exactly as `serve` would, without starting anything."""
    cfg = _load_config(file)
    click.echo(f"{file}: ok (data_dir={cfg.storage.data_dir}, listen={cfg.server.host}:{cfg.server.port})")


# ------------------------------------------------------------------------------------------ keys
@main.group()
def keys() -> None:
    """Ed25519 signing keys for bundles."""


@keys.command("generate")
@click.option("--out", "out_dir", type=PathArg, default=Path("."), show_default=True, help="Directory to write NAME.key and NAME.pub into.")
@click.option("--name", required=True, callback=lambda ctx, param, v: _key_name(v), help="Key name (file stem).")
def keys_generate(out_dir: Path, name: str) -> None:
    """Write a new key pair: NAME.key (private, 0600; keep it off the appliance) and NAME.pub (copy it to trusted_keys_dir)."""
    from shepherd.bundles import signing

    priv, pub = signing.generate(out_dir, name)
    key = signing.load_public(pub)
    click.echo(f"private key: {priv}\npublic key:  {pub}\nkey id:      {signing.key_id(key)}")


# ---------------------------------------------------------------------------------------- bundle
@main.group()
def bundle() -> None:
    """Create and verify offline bundles (format: packaging/BUNDLE.md)."""


@bundle.command("create")
@click.option("--model", required=True, type=ExistingFile, help="The ONNX model file.")
@click.option("--metadata", required=True, type=ExistingFile, help="Metadata file (.toml or .json): name, card, lineage, metrics, signature.")
@click.option("--reference", type=ExistingFile, help="Optional reference.parquet: a training-data sample, the drift baseline.")
@click.option("--sign-key", type=ExistingFile, help="Ed25519 private key (PEM) to sign the manifest with.")
@click.option("-o", "--out", required=True, type=PathArg, help="Bundle file to write.")
def bundle_create(model: Path, metadata: Path, reference: Path | None, sign_key: Path | None, out: Path) -> None:
    """Build a bundle file from an ONNX model and a metadata file."""
    from shepherd.bundles.create import create

    manifest = create(model=model, metadata=metadata, reference=reference, sign_key=sign_key, out=out)
    click.echo(f"{out}: {manifest.model}, {len(manifest.files)} files, {'signed' if sign_key else 'UNSIGNED'}")


@bundle.command("verify")
@click.argument("file", type=ExistingFile)
@click.option("--trusted-keys", type=click.Path(file_okay=False, path_type=Path), help="Directory of trusted *.pub keys (default: the config's bundles.trusted_keys_dir).")
@config_option
def bundle_verify(file: Path, trusted_keys: Path | None, config_path: Path | None) -> None:
    """Check a bundle with every rule the server applies on import; change nothing."""
    from shepherd.bundles.importer import verify_bundle

    cfg = _load_config(config_path)
    staging = Path(tempfile.mkdtemp(prefix="shepherd-verify-"))
    try:
        verified = verify_bundle(cfg, file, staging, trusted_keys)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"{file}: ok")
    click.echo(f"  model:     {verified.manifest.model}")
    click.echo(f"  digest:    {verified.digest}")
    click.echo(f"  signed by: {verified.signed_by or 'unsigned'}")
    for f in verified.manifest.files:
        click.echo(f"  file:      {f.path} ({f.size} bytes, sha256 {f.sha256[:16]}...)")


# ---------------------------------------------------------------------------------------- import
@remote_command(main, "import")
@click.argument("file", type=ExistingFile)
def import_(client: Any, as_json: bool, file: Path) -> None:
    """Upload a bundle to the running server and register it as the model's next version."""
    result = client.upload("/api/v1/bundles", file)
    if as_json:
        _print_json(result)
        return
    v = result["version"]
    state = "imported" if result["created"] else "already imported"
    click.echo(f"{state}: {v['model']} version {v['version']} (digest {v['bundle_digest'][:16]}..., signed by {v['signed_by'] or 'nobody'})")


# ---------------------------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Browse the registry."""


@remote_command(models, "list")
def models_list(client: Any, as_json: bool) -> None:
    """List models with their latest version and aliases."""
    found = client.request("GET", "/api/v1/models")
    if as_json:
        return _print_json(found)
    for m in found:
        m["aliases"] = ", ".join(f"{k}={v}" for k, v in m["aliases"].items())
    _print_table(found, ["name", "versions", "latest_version", "aliases", "created_at"])


@remote_command(models, "versions")
@click.argument("name", type=NonEmpty)
@click.option("--active", is_flag=True, help="Hide archived versions.")
def models_versions(client: Any, as_json: bool, name: str, active: bool) -> None:
    """List a model's versions."""
    found = client.request("GET", f"/api/v1/models/{_q(name)}/versions", params={"include_archived": str(not active).lower()})
    if as_json:
        return _print_json(found)
    for v in found:
        v["aliases"] = ", ".join(v["aliases"])
        v["status"] = "archived" if v["archived"] else "active"
        v["tags"] = ", ".join(f"{k}={val}" for k, val in v["tags"].items())
        v["signed_by"] = v["signed_by"] or "unsigned"
    _print_table(found, ["version", "status", "aliases", "tags", "signed_by", "created_at"])


@remote_command(models, "show")
@click.argument("name", type=NonEmpty)
@click.argument("ref", default="latest", type=NonEmpty)
def models_show(client: Any, as_json: bool, name: str, ref: str) -> None:
    """Show one version (number or alias; default: the latest) with signature, metrics, lineage and card."""
    if ref == "latest":
        ref = str(client.request("GET", f"/api/v1/models/{_q(name)}")["model"]["latest_version"])
    _print_json(client.request("GET", f"/api/v1/models/{_q(name)}/versions/{_q(ref)}"))


@remote_command(models, "card")
@click.argument("name", type=NonEmpty)
@click.argument("ref", type=NonEmpty)
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
def models_card(client: Any, as_json: bool, name: str, ref: str, fmt: str) -> None:
    """Render a version's model card as Markdown or HTML."""
    click.echo(client.request("GET", f"/api/v1/models/{_q(name)}/versions/{_q(ref)}/card", params={"format": fmt}))


@remote_command(models, "archive")
@click.argument("name", type=NonEmpty)
@click.argument("version", type=int)
@click.option("--undo", is_flag=True, help="Restore an archived version.")
def models_archive(client: Any, as_json: bool, name: str, version: int, undo: bool) -> None:
    """Archive a version (or restore it with --undo)."""
    v = client.request("POST", f"/api/v1/models/{_q(name)}/versions/{_q(version)}/{'unarchive' if undo else 'archive'}")
    _print_json(v) if as_json else click.echo(f"{name} version {version}: {'archived' if v['archived'] else 'active'}")


# ----------------------------------------------------------------------------------------- alias
@main.group()
def alias() -> None:
    """Set, move, delete and trace aliases (production, staging, any name)."""


@remote_command(alias, "set")
@click.argument("name", type=NonEmpty)
@click.argument("alias_name", metavar="ALIAS", type=NonEmpty)
@click.argument("version", type=int)
def alias_set(client: Any, as_json: bool, name: str, alias_name: str, version: int) -> None:
    """Point ALIAS of model NAME at VERSION."""
    ch = client.request("PUT", f"/api/v1/models/{_q(name)}/aliases/{_q(alias_name)}", json={"version": version})
    _print_json(ch) if as_json else click.echo(f"{name}@{alias_name}: {ch['from_version']} -> {ch['to_version']}")


@remote_command(alias, "delete")
@click.argument("name", type=NonEmpty)
@click.argument("alias_name", metavar="ALIAS", type=NonEmpty)
def alias_delete(client: Any, as_json: bool, name: str, alias_name: str) -> None:
    """Remove ALIAS from model NAME."""
    ch = client.request("DELETE", f"/api/v1/models/{_q(name)}/aliases/{_q(alias_name)}")
    _print_json(ch) if as_json else click.echo(f"{name}@{alias_name}: removed (was {ch['from_version']})")


@remote_command(alias, "history")
@click.argument("name", type=NonEmpty)
@click.argument("alias_name", metavar="[ALIAS]", required=False)
def alias_history(client: Any, as_json: bool, name: str, alias_name: str | None) -> None:
    """Show every move of the model's aliases, oldest first."""
    found = client.request("GET", f"/api/v1/models/{_q(name)}/aliases", params={"alias": alias_name} if alias_name else {})
    _print_json(found) if as_json else _print_table(found, ["at", "alias", "from_version", "to_version", "actor"])


# ------------------------------------------------------------------------------------------- tag
@main.group()
def tag() -> None:
    """Label versions with tags (the version's content never changes)."""


@remote_command(tag, "set")
@click.argument("name", type=NonEmpty)
@click.argument("version", type=int)
@click.argument("key", type=NonEmpty)
@click.argument("value")
def tag_set(client: Any, as_json: bool, name: str, version: int, key: str, value: str) -> None:
    """Set tag KEY=VALUE on a version."""
    v = client.request("PUT", f"/api/v1/models/{_q(name)}/versions/{_q(version)}/tags/{_q(key)}", json={"value": value})
    _print_json(v) if as_json else click.echo(f"{name} version {version}: {key}={value}")


@remote_command(tag, "delete")
@click.argument("name", type=NonEmpty)
@click.argument("version", type=int)
@click.argument("key", type=NonEmpty)
def tag_delete(client: Any, as_json: bool, name: str, version: int, key: str) -> None:
    """Remove tag KEY from a version."""
    v = client.request("DELETE", f"/api/v1/models/{_q(name)}/versions/{_q(version)}/tags/{_q(key)}")
    _print_json(v) if as_json else click.echo(f"{name} version {version}: {key} removed")


@main.command("wait-ready")
@click.option("--url", envvar="SHEPHERD_URL", default="http://127.0.0.1:8080", show_default=True, help="Base URL of the server.")
@click.option("--timeout", type=click.FloatRange(0), default=60.0, show_default=True, help="Seconds to wait.")
def wait_ready(url: str, timeout: float) -> None:
    """Wait until GET /v2/health/ready answers Shepherd's {"ready": true} (for scripts); exit 1 on timeout.

    Another server on the port that answers 200 is not taken for Shepherd ready: the timeout
    message shows the last answer.
    """
    import time

    import httpx

    from shepherd.client import Client

    client = Client(url, None, timeout=2)
    deadline = time.monotonic() + timeout
    last = "none"
    with client.http:
        while time.monotonic() < deadline:
            try:
                resp = client.http.get("/v2/health/ready")
                if resp.status_code == 200 and _is_ready(resp):
                    return
                last = f"HTTP {resp.status_code} {resp.text[:120]!r}"
            except httpx.HTTPError as err:
                last = str(err) or type(err).__name__
            time.sleep(0.2)
    _fail(f"{url} was not ready within {timeout:g} s (last answer: {last})")


def _is_ready(resp: Any) -> bool:
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("ready") is True


# ------------------------------------------------------------------------------------ deployments
def _print_slots(rec: dict[str, Any]) -> None:
    click.echo(f"{rec['name']} ({rec['model']}): primary={rec['primary']} previous={rec['previous']} candidate={rec['candidate']}")


@remote_command(main, "deploy")
@click.argument("deployment", type=NonEmpty)
@click.argument("model")
@click.argument("version", type=int)
def deploy_cmd(client: Any, as_json: bool, deployment: str, model: str, version: int) -> None:
    """Load and warm MODEL VERSION into the candidate slot of DEPLOYMENT (no traffic until promoted)."""
    rec = client.request("POST", f"/api/v1/deployments/{_q(deployment)}/deploy", json={"model": model, "version": version})
    _print_json(rec) if as_json else _print_slots(rec)


@remote_command(main, "promote")
@click.argument("deployment", type=NonEmpty)
def promote_cmd(client: Any, as_json: bool, deployment: str) -> None:
    """Make the candidate primary; the old primary becomes previous."""
    rec = client.request("POST", f"/api/v1/deployments/{_q(deployment)}/promote")
    _print_json(rec) if as_json else _print_slots(rec)


@remote_command(main, "rollback")
@click.argument("deployment", type=NonEmpty)
def rollback_cmd(client: Any, as_json: bool, deployment: str) -> None:
    """Swap primary and previous at once (no load while previous is warm)."""
    rec = client.request("POST", f"/api/v1/deployments/{_q(deployment)}/rollback")
    _print_json(rec) if as_json else _print_slots(rec)


@remote_command(main, "undeploy")
@click.argument("deployment", type=NonEmpty)
def undeploy_cmd(client: Any, as_json: bool, deployment: str) -> None:
    """Remove DEPLOYMENT; its versions are released after in-flight requests finish."""
    rec = client.request("DELETE", f"/api/v1/deployments/{_q(deployment)}")
    _print_json(rec) if as_json else click.echo(f"{deployment}: removed")


@remote_command(main, "deployments")
@click.argument("deployment", required=False, type=NonEmpty)
def deployments_cmd(client: Any, as_json: bool, deployment: str | None) -> None:
    """List deployments (or show one) with each slot's version, providers and in-flight requests."""
    found = client.request("GET", f"/api/v1/deployments/{_q(deployment)}" if deployment else "/api/v1/deployments")
    found = [found] if deployment else found
    if as_json:
        return _print_json(found)
    table = [
        {"deployment": d["name"], "model": d["model"], **s, "providers": ",".join(p.removesuffix("ExecutionProvider") for p in s["providers"])}
        for d in found
        for s in d["slots"]
    ]
    _print_table(table, ["deployment", "model", "slot", "version", "loaded", "providers", "in_flight", "load_seconds"])


# ----------------------------------------------------------------------------------------- token
@main.group()
def token() -> None:
    """API tokens. These act on the data directory directly (run them on the appliance as its owner)."""


def _local_db(config_path: Path | None) -> Any:
    from shepherd.appliance import open_database

    return open_database(_load_config(config_path))


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin"]))
@click.option("--name", default=None, help="Who or what uses the token (default: ROLE-token).")
@config_option
def token_create(role: str, name: str | None, config_path: Path | None) -> None:
    """Create a token and print it once; only its hash is stored."""
    from shepherd.auth import create_token

    db = _local_db(config_path)
    try:
        text, rec = create_token(db, role=role, name=name or f"{role}-token", actor=f"local:{getpass.getuser()}")
    finally:
        db.close()
    click.echo(text)
    click.echo(f"# token id {rec.id}, role {rec.role}: store it now, it is not shown again", err=True)


@token.command("list")
@config_option
def token_list(config_path: Path | None) -> None:
    """List tokens (never their secrets)."""
    from shepherd.store import tokens as token_store

    db = _local_db(config_path)
    try:
        found = db.read(token_store.list_all)
    finally:
        db.close()
    _print_table([msgspec.to_builtins(t) for t in found], ["id", "name", "role", "created_at", "created_by", "revoked_at"])


@token.command("revoke")
@click.argument("token_id", type=NonEmpty)
@config_option
def token_revoke(token_id: str, config_path: Path | None) -> None:
    """Revoke a token by id (a running server stops accepting it within auth.token_cache_seconds)."""
    from shepherd.auth import Authenticator

    cfg = _load_config(config_path)
    db = _local_db(config_path)
    try:
        rec = Authenticator(db, cfg.auth.token_cache_seconds).revoke(token_id, actor=f"local:{getpass.getuser()}")
    finally:
        db.close()
    click.echo(f"token {rec.id} revoked at {rec.revoked_at}")


# ----------------------------------------------------------------------------------------- audit
@remote_command(main, "audit")
@click.option("--actor", "actor_name", help="Only this actor (e.g. token:0123abcd...).")
@click.option("--action", help="Only actions starting with this (e.g. alias.).")
@click.option("--target", help="Only this target (e.g. model:iris/2).")
@click.option("--after", type=int, default=0, help="Only entries with a larger id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def audit_cmd(client: Any, as_json: bool, actor_name: str | None, action: str | None, target: str | None, after: int, limit: int) -> None:
    """Read the append-only audit log (admin token)."""
    params = {k: v for k, v in {"actor": actor_name, "action": action, "target": target, "after": after, "limit": limit}.items() if v}
    found = client.request("GET", "/api/v1/audit", params=params)
    if as_json:
        return _print_json(found)
    for e in found:
        e["change"] = f"{json.dumps(e['before'])} -> {json.dumps(e['after'])}"
    _print_table(found, ["id", "at", "actor", "action", "target", "change"])


# ---------------------------------------------------------------------------------------- alerts
@main.group("alerts")
def alerts_group() -> None:
    """Monitoring alerts: list them, acknowledge one."""


@remote_command(alerts_group, "list")
@click.option("--deployment", help="Only this deployment.")
@click.option("--level", type=click.Choice(["warning", "critical", "emergency"]), help="Only this level.")
@click.option("--open", "only_open", is_flag=True, help="Only unacknowledged alerts.")
@click.option("--after", type=click.IntRange(0), default=0, help="Only alerts with a larger id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def alerts_list(client: Any, as_json: bool, deployment: str | None, level: str | None, only_open: bool, after: int, limit: int) -> None:
    """List alerts, oldest first (viewer token)."""
    params: dict[str, Any] = {"after": after, "limit": limit}
    if deployment:
        params["deployment"] = deployment
    if level:
        params["level"] = level
    if only_open:
        params["unacknowledged"] = "true"
    found = client.request("GET", "/api/v1/alerts", params=params)
    if as_json:
        return _print_json(found)
    for a in found:
        a["acknowledged"] = f"{a['acknowledged_by']} at {a['acknowledged_at']}" if a["acknowledged_at"] else "no"
    _print_table(found, ["id", "level", "deployment", "kind", "message", "occurrences", "first_at", "last_at", "acknowledged"])


@remote_command(alerts_group, "ack")
@click.argument("alert_id", metavar="ID", type=int)
def alerts_ack(client: Any, as_json: bool, alert_id: int) -> None:
    """Acknowledge alert ID (operator token); the next occurrence of its incident raises a new alert."""
    a = client.request("POST", f"/api/v1/alerts/{_q(alert_id)}/ack")
    _print_json(a) if as_json else click.echo(f"alert {a['id']} ({a['level']}, {a['deployment']}/{a['kind']}) acknowledged by {a['acknowledged_by']}")



# ------------------------------------------------------------------------------------ monitoring
def _time_params(start: str | None, end: str | None, **extra: Any) -> dict[str, Any]:
    params = {k: v for k, v in extra.items() if v is not None}
    if start:
        params["from"] = start
    if end:
        params["to"] = end
    return params


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _window_performance(perf: dict[str, Any] | None) -> str:
    """A drift window's performance in a table cell: accuracy (classifiers) or RMSE (regressors) and its label count."""
    if not perf:
        return ""
    name = "accuracy" if perf["task"] == "classification" else "rmse"
    return f"{name} {_fmt(perf['metrics'].get(name))} ({perf['n_labels']} labels)"


@remote_command(main, "drift")
@click.argument("deployment", type=NonEmpty)
@click.option("--from", "start", help="ISO 8601 start (windows that ended at or after it).")
@click.option("--to", "end", help="ISO 8601 end (exclusive).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Most windows, newest first.")
@click.option("--features/--no-features", default=True, show_default=True, help="Per-feature results of the newest window.")
def drift(client: Any, as_json: bool, deployment: str, start: str | None, end: str | None, limit: int, features: bool) -> None:
    """Drift windows of DEPLOYMENT, newest first, and the per-feature results of the newest (viewer token)."""
    windows = client.request("GET", f"/api/v1/deployments/{_q(deployment)}/drift", params=_time_params(start, end, limit=limit))
    if as_json:
        return _print_json(windows)
    rows = [
        {**w, "share": f"{w['share']:.0%}", "drifted": "DRIFT" if w["drifted"] else "ok", "features": f"{w['n_drifted']}/{w['n_evaluated']}",
         "performance": _window_performance(w.get("performance"))}
        for w in windows
    ]
    _print_table(rows, ["version", "window_id", "start_ts", "end_ts", "n_rows", "features", "share", "drifted", "performance"])
    if features and windows:
        click.echo(f"\nwindow {windows[0]['window_id']} of version {windows[0]['version']}:")
        feats = [
            {**f, **{k: _fmt(f[k]) for k in ("psi", "ks", "pvalue_adjusted", "wasserstein_norm", "js", "chi2", "missing_rate")},
             "drifted": "DRIFT" if f["drifted"] else ("no data" if not f["has_data"] else "ok")}
            for f in windows[0]["features"]
        ]
        _print_table(feats, ["role", "feature", "kind", "n", "psi", "ks", "pvalue_adjusted", "wasserstein_norm", "js", "chi2", "missing_rate", "drifted"])


@remote_command(main, "performance")
@click.argument("deployment", type=NonEmpty)
@click.option("--from", "start", help="ISO 8601 start of the history.")
@click.option("--to", "end", help="ISO 8601 end of the history (exclusive).")
def performance_cmd(client: Any, as_json: bool, deployment: str, start: str | None, end: str | None) -> None:
    """Model performance of DEPLOYMENT from ground truth, per version, against its bundle baseline (viewer token)."""
    found = client.request("GET", f"/api/v1/deployments/{_q(deployment)}/performance", params=_time_params(start, end))
    if as_json:
        return _print_json(found)
    rows = []
    for r in found["current"]:
        rows.append({
            "version": r["version"], "task": r["task"], "labels": r["n_labels"],
            **{k: _fmt(v) for k, v in r["metrics"].items()},
            "baseline": f"{r['baseline_metric']}={_fmt(r['baseline'])}",
            "drop": "" if r["drop"] is None else f"{r['drop']:.1%}",
        })
    metrics = sorted({k for r in found["current"] for k in r["metrics"]})
    _print_table(rows, ["version", "task", "labels", *metrics, "baseline", "drop"])


@remote_command(main, "feedback")
@click.argument("source", required=False, type=click.File("r"))
@click.option("--id", "request_id", help="Request id (the `id` of the infer response) for a single label.")
@click.option("--label", type=float, help="The true class index or value for --id.")
@click.option("--row", type=click.IntRange(0), default=0, help="Row inside a multi-row request.")
def feedback_cmd(client: Any, as_json: bool, source: Any, request_id: str | None, label: float | None, row: int) -> None:
    """Send ground truth: one label (--id, --label) or a batch from SOURCE ('-' for stdin): a JSON array or JSON lines
    of {"request_id", "label", "row"} (operator token)."""
    if source is not None:
        if request_id is not None or label is not None:
            raise ShepherdError("give either SOURCE or --id/--label, not both")
        text = source.read()
        items = _json_items(text, source.name)
        body: dict[str, Any] = {"labels": items}
    elif request_id is not None and label is not None:
        if not math.isfinite(label):
            raise ShepherdError(f"--label: a finite number is required (got {label})")
        body = {"request_id": request_id, "label": label, "row": row}
    else:
        raise ShepherdError("give SOURCE, or both --id and --label")
    res = client.request("POST", "/api/v1/feedback", json=body)
    if as_json:
        return _print_json(res)
    click.echo(f"accepted {res['accepted']} label(s) ({res['replaced']} replaced an earlier label); unknown: {len(res['unknown'])}")
    for u in res["unknown"][:20]:
        click.echo(f"  unknown request {u['request_id']} row {u['row']}", err=True)
    if res["unknown"]:
        sys.exit(3)


def _key_name(value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\0" in value or len(value) > 200:
        raise click.BadParameter("a file stem: 1-200 characters, no '/'", param_hint="'--name'")
    return value


def _json_items(text: str, name: str) -> list[Any]:
    """A JSON array, or JSON lines, read strictly: NaN and Infinity are not JSON, and a bad line is named."""

    def load(part: str, where: str) -> Any:
        try:
            return json.loads(part, parse_constant=_not_json, parse_float=_finite_float)
        except (json.JSONDecodeError, ValueError) as err:
            raise ShepherdError(f"{name}{where}: not JSON ({err})") from None

    if text.lstrip().startswith("["):
        return load(text, "")
    return [load(line, f" line {i}") for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _not_json(token: str) -> float:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers."""
    raise ValueError(f"{token} is not a number JSON can carry")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} is out of range")
    return value


@main.group("reference")
def reference_group() -> None:
    """Reference profiles that drift is measured against."""


@remote_command(reference_group, "show")
@click.argument("deployment", type=NonEmpty)
@click.option("--version", type=click.IntRange(1), help="Version (default: the deployment's primary).")
def reference_show(client: Any, as_json: bool, deployment: str, version: int | None) -> None:
    """Where a version's reference came from, its size and features (viewer token)."""
    info = client.request("GET", f"/api/v1/deployments/{_q(deployment)}/reference", params={"version": version} if version else {})
    if as_json:
        return _print_json(info)
    click.echo(f"{info['model']} version {info['version']}: {info['source']} reference of {info['rows']} rows, by {info['actor']} at {info['created_at']}")
    click.echo(f"features: {', '.join(info['features'])}")
    click.echo(f"outputs:  {', '.join(info['outputs']) or '(none)'}")


@remote_command(reference_group, "adopt")
@click.argument("deployment", type=NonEmpty)
@click.option("--rows", type=click.IntRange(2), required=True, help="How many of the version's first logged rows to adopt.")
@click.option("--version", type=click.IntRange(1), help="Version (default: the deployment's primary).")
def reference_adopt(client: Any, as_json: bool, deployment: str, rows: int, version: int | None) -> None:
    """Adopt a version's first logged rows as its reference, for a version shipped without one (operator token; audited)."""
    body: dict[str, Any] = {"rows": rows} | ({"version": version} if version else {})
    info = client.request("POST", f"/api/v1/deployments/{_q(deployment)}/reference", json=body)
    _print_json(info) if as_json else click.echo(f"{info['model']} version {info['version']}: adopted {info['rows']} rows as reference")


@main.group("predictions")
def predictions_group() -> None:
    """The prediction log."""


@remote_command(predictions_group, "export")
@click.argument("deployment", type=NonEmpty)
@click.argument("dest", type=PathArg)
@click.option("--from", "start", help="ISO 8601 start (inclusive).")
@click.option("--to", "end", help="ISO 8601 end (exclusive).")
def predictions_export(client: Any, as_json: bool, deployment: str, dest: Path, start: str | None, end: str | None) -> None:
    """Write DEPLOYMENT's logged predictions (with any labels) in a time range to DEST as Parquet (operator token)."""
    headers = client.download(
        f"/api/v1/deployments/{_q(deployment)}/predictions", dest, "application/vnd.apache.parquet", "Parquet",
        params=_time_params(start, end),
    )
    rows = int(headers["x-rows"]) if headers.get("x-rows", "").isdigit() else None
    _print_json({"path": str(dest), "rows": rows}) if as_json else click.echo(f"wrote {'?' if rows is None else rows} rows to {dest}")



@remote_command(main, "reload")
def reload_cmd(client: Any, as_json: bool) -> None:
    """Re-read the server's config and policy files, as SIGHUP does (admin token); an invalid file is refused."""
    res = client.request("POST", "/api/v1/admin/reload")
    if as_json:
        return _print_json(res)
    click.echo(f"reloaded: {len(res['applied'])} setting(s) applied, {len(res['policies'])} policy file(s) checked")
    for key in res["applied"]:
        click.echo(f"  applied: {key}")
    for key in res["restart_required"]:
        click.echo(f"  needs a restart: {key}")


@remote_command(main, "backup")
@click.argument("dest", type=PathArg)
def backup_cmd(client: Any, as_json: bool, dest: Path) -> None:
    """Have the running server write a consistent online backup to DEST, a new or empty directory on its machine (admin token)."""
    res = client.request("POST", "/api/v1/admin/backup", json={"dest": str(dest.expanduser().resolve())})
    _print_json(res) if as_json else click.echo(f"backup written to {res['dest']} ({res['files']} files, schema {res['schema_version']})")


@main.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_option
def restore_cmd(src: Path, config_path: Path | None) -> None:
    """Check backup SRC against its manifest, then restore it into the (empty) data directory of the config (server stopped)."""
    from shepherd import backup as backup_mod
    from shepherd.appliance import lock_data_dir

    cfg = _load_config(config_path)
    data_dir = cfg.data_dir
    lock = lock_data_dir(data_dir)  # refuses while a server runs on it
    try:
        manifest = backup_mod.restore(src, data_dir)
    finally:
        lock.close()
    click.echo(f"restored {len(manifest.files)} files from {src} (made {manifest.created_at}) into {data_dir}")


# -------------------------------------------------------------------------------------- tracking
@main.group("experiments")
def experiments_group() -> None:
    """Tracking experiments (the same ones the mlflow client sees)."""


@remote_command(experiments_group, "list")
@click.option("--filter", "filter_", help="e.g. \"name LIKE 'churn%'\".")
@click.option("--view", type=click.Choice(["ACTIVE_ONLY", "DELETED_ONLY", "ALL"]), default="ACTIVE_ONLY", show_default=True)
def experiments_list(client: Any, as_json: bool, filter_: str | None, view: str) -> None:
    """List experiments (viewer token)."""
    found = client.request("GET", "/api/v1/experiments", params={"view": view} | ({"filter": filter_} if filter_ else {}))
    if as_json:
        return _print_json(found)
    _print_table(found["experiments"], ["experiment_id", "name", "lifecycle_stage", "artifact_location"])


@main.group("runs")
def runs_group() -> None:
    """Tracking runs: search with MLflow's filter grammar, show, compare, metric history."""


@remote_command(runs_group, "list")
@click.option("--experiment", "experiments", multiple=True, required=True, help="Experiment id or name (repeatable).")
@click.option("--filter", "filter_", help="MLflow filter, e.g. \"metrics.auc > 0.9 and params.lr = '0.1'\".")
@click.option("--order-by", "order_by", multiple=True, help="e.g. 'metrics.auc DESC' (repeatable).")
@click.option("--limit", type=click.IntRange(1, 50_000), default=50, show_default=True)
@click.option("--view", type=click.Choice(["ACTIVE_ONLY", "DELETED_ONLY", "ALL"]), default="ACTIVE_ONLY", show_default=True)
@click.option("--metric", "metrics", multiple=True, help="Metric columns to show (default: up to 4).")
def runs_list(
    client: Any, as_json: bool, experiments: tuple[str, ...], filter_: str | None, order_by: tuple[str, ...], limit: int, view: str,
    metrics: tuple[str, ...],
) -> None:
    """Runs matching a filter, newest first unless --order-by (viewer token)."""
    params: dict[str, Any] = {"experiment": list(experiments), "limit": limit, "view": view}
    if filter_:
        params["filter"] = filter_
    if order_by:
        params["order_by"] = list(order_by)
    found = client.request("GET", "/api/v1/runs", params=params)
    if as_json:
        return _print_json(found)
    runs = found["runs"]
    shown = list(metrics) or sorted({m["key"] for r in runs for m in r["data"]["metrics"]})[:4]
    rows = []
    for r in runs:
        values = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        rows.append({"run_id": r["info"]["run_id"], "name": r["info"]["run_name"], "status": r["info"]["status"],
                     **{f"m:{k}": _fmt(values.get(k)) for k in shown}})
    _print_table(rows, ["run_id", "name", "status", *[f"m:{k}" for k in shown]])
    if found.get("next_page_token"):
        click.echo(f"(more: --limit or the API's page_token {found['next_page_token']})", err=True)


@remote_command(runs_group, "show")
@click.argument("run_id", type=NonEmpty)
def runs_show(client: Any, as_json: bool, run_id: str) -> None:
    """One run: status, params, latest metrics, tags, datasets and registered versions (viewer token)."""
    r = client.request("GET", f"/api/v1/runs/{_q(run_id)}")
    if as_json:
        return _print_json(r)
    i = r["info"]
    click.echo(f"run {i['run_id']} ({i['run_name']}) in experiment {i['experiment_id']}: {i['status']}")
    for section in ("params", "metrics", "tags"):
        click.echo(f"{section}:")
        for e in r["data"][section]:
            click.echo(f"  {e['key']} = {_fmt(e['value']) if section == 'metrics' else e['value']}")
    for d in r.get("inputs", {}).get("dataset_inputs", []):
        click.echo(f"dataset: {d['dataset']['name']} ({d['dataset']['digest']})")
    for v in r["registered_versions"]:
        click.echo(f"registered: {v['model']} version {v['version']}")


@remote_command(runs_group, "compare")
@click.argument("run_ids", nargs=-1, required=True)
def runs_compare(client: Any, as_json: bool, run_ids: tuple[str, ...]) -> None:
    """Runs side by side: every param, latest metric and tag, one column per run; differences marked (viewer token)."""
    found = client.request("GET", "/api/v1/runs/compare", params={"ids": list(run_ids)})
    if as_json:
        return _print_json(found)
    heads = [r["run_name"] or r["run_id"][:8] for r in found["runs"]]
    rows = []
    for section in ("params", "metrics", "tags"):
        for key, values in found[section].items():
            row = {"": "*" if len({str(v) for v in values}) > 1 else "", "kind": section[:-1], "key": key}
            row.update({h: _fmt(v) for h, v in zip(heads, values)})
            rows.append(row)
    _print_table(rows, ["", "kind", "key", *heads])


@remote_command(runs_group, "history")
@click.argument("run_id", type=NonEmpty)
@click.argument("key", type=NonEmpty)
@click.option("--limit", type=click.IntRange(1, 25_000), default=1000, show_default=True)
def runs_history(client: Any, as_json: bool, run_id: str, key: str, limit: int) -> None:
    """A metric's history (step, time, value), one page (viewer token)."""
    found = client.request("GET", f"/api/v1/runs/{_q(run_id)}/metrics/{_q(key)}", params={"limit": limit})
    if as_json:
        return _print_json(found)
    _print_table([{**m, "value": _fmt(m["value"], 8)} for m in found["metrics"]], ["step", "timestamp", "value"])


if __name__ == "__main__":
    main()
