"""Render a version's model card (Model Card Toolkit sections) as Markdown or HTML."""

from __future__ import annotations

from html import escape

from shepherd.store.registry import VersionRecord

SECTIONS = (("overview", "Overview"), ("intended_use", "Intended use"), ("limitations", "Limitations"), ("training_data", "Training data"))


def _table(rows: list[tuple[str, str]], md: bool) -> str:
    if md:
        return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _facts(v: VersionRecord) -> list[tuple[str, str]]:
    lin = v.lineage
    return [
        ("Model", v.model),
        ("Version", str(v.version)),
        ("Registered", v.created_at),
        ("Bundle digest", v.bundle_digest),
        ("Signed by", v.signed_by or "unsigned"),
        ("Dataset digest", lin.get("dataset_digest") or "—"),
        ("Code revision", lin.get("code_revision") or "—"),
        ("Parent version", str(lin["parent_version"]) if lin.get("parent_version") else "—"),
        ("Aliases", ", ".join(v.aliases) or "—"),
        ("Status", "archived" if v.archived else "active"),
    ]


def _signature_rows(v: VersionRecord) -> list[tuple[str, str]]:
    return [
        (f"{kind[:-1]} {t['name']}", f"{t['datatype']} {t['shape']}")
        for kind in ("inputs", "outputs")
        for t in v.signature.get(kind, [])
    ]


def _metric_rows(v: VersionRecord) -> list[tuple[str, str]]:
    merged = {**v.card.get("evaluation_metrics", {}), **v.metrics}
    return [(k, f"{val:.6g}") for k, val in sorted(merged.items())]


def _owners(v: VersionRecord) -> list[str]:
    return [f"{o['name']} <{o['contact']}>" if o.get("contact") else o["name"] for o in v.card.get("owners", [])]


def markdown(v: VersionRecord) -> str:
    """The card as GitHub-flavoured Markdown."""
    out = [f"# Model card: {v.model} v{v.version}\n"]
    if v.description:
        out.append(v.description + "\n\n")
    out.append(_table(_facts(v), md=True))
    for key, title in SECTIONS:
        if v.card.get(key):
            out.append(f"\n## {title}\n\n{v.card[key]}\n")
    if metrics := _metric_rows(v):
        out.append("\n## Evaluation metrics\n\n" + _table(metrics, md=True))
    out.append("\n## Signature\n\n" + _table(_signature_rows(v), md=True))
    if owners := _owners(v):
        out.append("\n## Owners\n\n" + "".join(f"- {o}\n" for o in owners))
    return "".join(out)


def html(v: VersionRecord) -> str:
    """The card as a standalone HTML page; every value is escaped."""
    parts = [f"<h1>Model card: {escape(v.model)} v{v.version}</h1>"]
    if v.description:
        parts.append(f"<p>{escape(v.description)}</p>")
    parts.append(_table(_facts(v), md=False))
    for key, title in SECTIONS:
        if v.card.get(key):
            parts.append(f"<h2>{title}</h2><p>{escape(v.card[key])}</p>")
    if metrics := _metric_rows(v):
        parts.append("<h2>Evaluation metrics</h2>" + _table(metrics, md=False))
    parts.append("<h2>Signature</h2>" + _table(_signature_rows(v), md=False))
    if owners := _owners(v):
        parts.append("<h2>Owners</h2><ul>" + "".join(f"<li>{escape(o)}</li>" for o in owners) + "</ul>")
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    title = escape(f"{v.model} v{v.version}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
