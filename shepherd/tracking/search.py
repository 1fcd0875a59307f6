"""MLflow's search grammar for runs, compiled to SQL over the tracking tables.

Filter: clauses joined by AND (MLflow has no OR for runs). A clause is `<entity>.<key> <op> <value>`:
  * entity: metrics/metric, params/param/parameters/parameter, tags/tag, attributes/attribute/attr/run,
    datasets/dataset; a key with spaces or dots is quoted with backticks or double quotes
    (metrics.`val loss`, tags."mlflow.runName"; tags and params may also contain dots unquoted).
  * metrics: =, !=, <, <=, >, >= against a number (the run's latest value; a run without the
    metric never matches, NaN never matches).
  * params, tags: =, !=, LIKE (case-sensitive), ILIKE, IN (...), NOT IN (...) against strings;
    tags also IS NULL / IS NOT NULL.
  * attributes: run_id (=, !=, IN, NOT IN), run_name, status, user_id, artifact_uri,
    lifecycle_stage (strings: =, !=, LIKE, ILIKE, IN, NOT IN), start_time, end_time, created
    (numbers: comparisons).
  * datasets: name, digest, context (=, !=, LIKE, ILIKE, IN, NOT IN).
Order by: a list of `<entity>.<key> [ASC|DESC]`; runs missing the key sort last; ties are
broken by start_time DESC, then run id. Default: start_time DESC.
Page tokens: base64 of {"offset": N}.

Every value is bound as a parameter; only validated identifiers reach the SQL text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from shepherd.errors import InvalidInput

ENTITIES = {
    "metric": "metric", "metrics": "metric",
    "param": "param", "params": "param", "parameter": "param", "parameters": "param",
    "tag": "tag", "tags": "tag",
    "attribute": "attr", "attributes": "attr", "attr": "attr", "run": "attr",
    "dataset": "dataset", "datasets": "dataset",
}
STRING_ATTRS = {"run_id": "r.run_uuid", "run_name": "r.name", "status": "r.status", "user_id": "r.user_id",
                "artifact_uri": "r.artifact_uri", "lifecycle_stage": "r.lifecycle_stage"}
NUMERIC_ATTRS = {"start_time": "r.start_time", "end_time": "r.end_time", "created": "r.start_time"}
DATASET_FIELDS = {"name": "d.name", "digest": "d.digest", "context": "d.context"}
NUMERIC_OPS = {"=", "!=", "<", "<=", ">", ">="}
STRING_OPS = {"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}

TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*\.(?:`[^`]+`|"[^"]+"|[A-Za-z0-9_.:/\-]+))
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<op>!=|<=|>=|=|<|>)
      | (?P<word>[A-Za-z_]+)
      | (?P<paren>[(),])
    )""",
    re.X,
)


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidInput(f"invalid filter {text!r}: cannot parse at position {pos} ({text[pos:pos + 20]!r})", field="filter")
        kind = m.lastgroup
        value = m.group(kind)  # type: ignore[arg-type]
        out.append((kind, value))  # type: ignore[arg-type]
        pos = m.end()
    return out


def _split_ident(ident: str) -> tuple[str, str]:
    entity, _, key = ident.partition(".")
    kind = ENTITIES.get(entity.lower())
    if kind is None:
        raise InvalidInput(
            f"invalid filter: {entity!r} is not one of metrics, params, tags, attributes, datasets", field="filter"
        )
    if key[:1] in "`\"" and key[-1:] == key[:1]:
        key = key[1:-1]
    if not key:
        raise InvalidInput(f"invalid filter: {ident!r} names no key", field="filter")
    return kind, key


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidInput("invalid filter: it ends too early", field="filter")
        self.i += 1
        return tok

    def word(self, *expected: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].upper() in expected:
            self.i += 1
            return True
        return False


def _string_value(tok: tuple[str, str], what: str) -> str:
    if tok[0] != "string":
        raise InvalidInput(f"invalid filter: {what} needs a quoted string, got {tok[1]!r}", field="filter")
    return _unquote(tok[1])


def _number_value(tok: tuple[str, str], what: str) -> float:
    if tok[0] == "number":
        return float(tok[1])
    raise InvalidInput(f"invalid filter: {what} needs a number, got {tok[1]!r}", field="filter")


def _like_to_glob(pattern: str) -> str:
    """A case-sensitive LIKE pattern as a GLOB pattern (GLOB is case-sensitive in SQLite)."""
    out = []
    for ch in pattern:
        out.append({"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}.get(ch, ch))
    return "".join(out)


def _string_cond(column: str, op: str, values: list[str]) -> tuple[str, list[Any]]:
    if op in ("=", "!="):
        return f"{column} {op} ?", [values[0]]
    if op == "LIKE":
        return f"{column} GLOB ?", [_like_to_glob(values[0])]
    if op == "ILIKE":
        return f"lower({column}) LIKE lower(?)", [values[0]]
    marks = ",".join("?" * len(values))
    return f"{column} {op} ({marks})", list(values)


MAX_FILTER_CLAUSES = 100
MAX_FILTER_VALUES = 1000
"""Bounds of one filter: SQLite refuses deeper expressions and more variables than a few thousand."""


def compile_filter(text: str | None) -> tuple[str, list[Any]]:
    """SQL condition over `runs r` for an MLflow filter string ('1' for none)."""
    if text is None or not text.strip():
        return "1", []
    p = _Parser(_tokens(text))
    clauses: list[str] = []
    params: list[Any] = []
    while True:
        tok = p.take()
        if tok[0] != "ident":
            raise InvalidInput(f"invalid filter: expected <entity>.<key>, got {tok[1]!r}", field="filter")
        kind, key = _split_ident(tok[1])
        if p.word("IS"):
            negate = p.word("NOT")
            if not p.word("NULL") or kind != "tag":
                raise InvalidInput("invalid filter: IS [NOT] NULL applies to tags only", field="filter")
            clause = f"{'' if negate else 'NOT '}EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.id AND t.key = ?)"
            clauses.append(clause)
            params.append(key)
        else:
            if p.word("NOT"):
                if not p.word("IN"):
                    raise InvalidInput("invalid filter: NOT must be followed by IN", field="filter")
                op = "NOT IN"
            elif p.word("IN"):
                op = "IN"
            elif p.word("LIKE"):
                op = "LIKE"
            elif p.word("ILIKE"):
                op = "ILIKE"
            else:
                optok = p.take()
                if optok[0] != "op":
                    raise InvalidInput(f"invalid filter: expected a comparison after {tok[1]!r}, got {optok[1]!r}", field="filter")
                op = optok[1]
            values: list[Any]
            if kind == "metric" and op not in NUMERIC_OPS:
                raise InvalidInput(f"invalid filter: {op} does not apply to metrics ({tok[1]}); use =, !=, <, <=, >, >=", field="filter")
            if op in ("IN", "NOT IN"):
                if p.take() != ("paren", "("):
                    raise InvalidInput(f"invalid filter: {op} needs a parenthesised list", field="filter")
                values = []
                while True:
                    values.append(_string_value(p.take(), f"{op} list"))
                    sep = p.take()
                    if sep == ("paren", ")"):
                        break
                    if sep != ("paren", ","):
                        raise InvalidInput(f"invalid filter: bad {op} list", field="filter")
            elif kind == "metric" or (kind == "attr" and key in NUMERIC_ATTRS):
                values = [_number_value(p.take(), f"{tok[1]}")]
            else:
                values = [_string_value(p.take(), f"{tok[1]}")]
            clause, args = _clause(kind, key, op, values, tok[1])
            clauses.append(clause)
            params.extend(args)
        if len(clauses) > MAX_FILTER_CLAUSES or len(params) > MAX_FILTER_VALUES:
            raise InvalidInput(
                f"filter: at most {MAX_FILTER_CLAUSES} comparisons and {MAX_FILTER_VALUES} values in all", field="filter"
            )
        if p.peek() is None:
            break
        if not p.word("AND"):
            bad = p.peek()
            raise InvalidInput(f"invalid filter: expected AND, got {bad[1] if bad else ''!r} (OR is not supported)", field="filter")
    return " AND ".join(f"({c})" for c in clauses), params


def _clause(kind: str, key: str, op: str, values: list[Any], ident: str) -> tuple[str, list[Any]]:
    if kind == "metric":
        if op not in NUMERIC_OPS:
            raise InvalidInput(f"invalid filter: {op} does not apply to metrics ({ident})", field="filter")
        return (f"EXISTS (SELECT 1 FROM run_latest_metrics m WHERE m.run_id = r.id AND m.key = ? AND m.is_nan = 0 AND m.value {op} ?)",
                [key, values[0]])
    if kind in ("param", "tag"):
        if op not in STRING_OPS:
            raise InvalidInput(f"invalid filter: {op} does not apply to {kind}s ({ident}); use =, !=, LIKE, ILIKE, IN", field="filter")
        table = "run_params" if kind == "param" else "run_tags"
        cond, args = _string_cond("x.value", op, values)
        return f"EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.id AND x.key = ? AND {cond})", [key, *args]
    if kind == "attr":
        if key in NUMERIC_ATTRS:
            if op not in NUMERIC_OPS:
                raise InvalidInput(f"invalid filter: {op} does not apply to {ident}", field="filter")
            return f"{NUMERIC_ATTRS[key]} {op} ?", [values[0]]
        if key not in STRING_ATTRS:
            known = ", ".join(sorted({*STRING_ATTRS, *NUMERIC_ATTRS}))
            raise InvalidInput(f"invalid filter: unknown attribute {key!r} (one of {known})", field="filter")
        if op not in STRING_OPS:
            raise InvalidInput(f"invalid filter: {op} does not apply to {ident}", field="filter")
        return _string_cond(STRING_ATTRS[key], op, values)
    if key not in DATASET_FIELDS:
        raise InvalidInput(f"invalid filter: datasets.{key} is not one of name, digest, context", field="filter")
    if op not in STRING_OPS:
        raise InvalidInput(f"invalid filter: {op} does not apply to {ident}", field="filter")
    cond, args = _string_cond(DATASET_FIELDS[key], op, values)
    return f"EXISTS (SELECT 1 FROM run_inputs d WHERE d.run_id = r.id AND {cond})", args


ORDER = re.compile(r"^\s*(?P<ident>[A-Za-z_]+\.(?:`[^`]+`|\"[^\"]+\"|[A-Za-z0-9_.:/\- ]+?))\s*(?:\s(?P<dir>ASC|DESC|asc|desc))?\s*$")


def compile_order(order_by: list[str] | None) -> tuple[str, list[Any]]:
    """SQL ORDER BY over `runs r` for MLflow order_by clauses (runs missing the key last)."""
    terms: list[str] = []
    params: list[Any] = []
    for clause in order_by or []:
        m = ORDER.match(clause)
        if not m:
            raise InvalidInput(f"invalid order_by clause {clause!r}: expected '<entity>.<key> [ASC|DESC]'", field="order_by")
        kind, key = _split_ident(m.group("ident").strip())
        direction = (m.group("dir") or "ASC").upper()
        if kind == "metric":
            expr = "(SELECT CASE WHEN m.is_nan THEN NULL ELSE m.value END FROM run_latest_metrics m WHERE m.run_id = r.id AND m.key = ?)"
        elif kind in ("param", "tag"):
            table = "run_params" if kind == "param" else "run_tags"
            expr = f"(SELECT x.value FROM {table} x WHERE x.run_id = r.id AND x.key = ?)"
        elif kind == "attr" and (key in STRING_ATTRS or key in NUMERIC_ATTRS):
            terms.append(f"{(STRING_ATTRS | NUMERIC_ATTRS)[key]} {direction} NULLS LAST")
            continue
        else:
            raise InvalidInput(f"invalid order_by clause {clause!r}: cannot order by {kind} {key!r}", field="order_by")
        terms.append(f"{expr} {direction} NULLS LAST")  # one lookup per run (not `expr IS NULL, expr`)
        params.append(key)
    terms.append("r.start_time DESC, r.run_uuid ASC")
    return ", ".join(terms), params


def encode_token(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.b64decode(token, validate=True))["offset"]
        if type(offset) is not int or not 0 <= offset <= 2**63 - 1:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise InvalidInput(f"invalid page_token {token!r}", field="page_token") from None
    return offset
