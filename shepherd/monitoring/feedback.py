"""Ground truth: labels sent after the fact, joined to the prediction log by request id.

Rules (also in the README):
  * A label names the request by the `id` the infer response carried (Shepherd generates one when
    the request had none) and, for a request of several rows, the row (0-based; default 0).
  * Labels are numbers: the class index for classifiers, the true value for regressors. A label for a
    request a classifier answered must be a whole number; a send with one that is not is refused whole
    (400, naming the label) and stores nothing.
  * Labels may arrive late and in any order. Before matching, the prediction log is flushed, so a
    label sent right after its response still finds its request.
  * A label whose request is not in the log (unknown id, sampled out, or deleted by retention) is
    not stored; it is returned in `unknown`, never silently dropped.
  * Duplicates: a later label for the same (request id, row) replaces the earlier one (the newest
    label wins); the response counts them in `replaced`. Within one batch, the last one wins.
    Sends that overlap in time are stored one after the other (`EventStore` serialises writes to
    feedback), so a retry sent while the first send is in flight succeeds too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from shepherd.errors import Busy, InvalidInput
from shepherd.monitoring.predlog import PredictionLog
from shepherd.store.events import EventStore

MAX_LABELS = 100_000
FLUSH_WAIT_S = 30.0
"""How long feedback waits for the prediction log to flush what was answered before it."""
MAX_ROW = 2**31 - 1
"""A row index inside one request (the prediction log stores it as a 32-bit integer)."""


class Label(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    """The `id` of the infer response."""
    label: float
    """The true class index (classifiers) or value (regressors)."""
    row: int = 0
    """Row inside a multi-row request (0-based)."""


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Either one label (request_id + label [+ row]) or a batch in `labels`."""

    request_id: str | None = None
    label: float | None = None
    row: int | msgspec.UnsetType = msgspec.UNSET
    """Row inside a multi-row request (0-based; 0 when left out). With `labels`, each label has its own."""
    labels: list[Label] | None = None

    def items(self) -> list[Label]:
        if self.labels is not None:
            if self.request_id is not None or self.label is not None:
                raise InvalidInput("send either request_id + label or labels, not both", field="labels")
            if self.row is not msgspec.UNSET:  # it would apply to none of them
                raise InvalidInput("row goes inside each of labels (labels[i].row), not beside them", field="row")
            return self.labels
        if self.request_id is None:
            raise InvalidInput("request_id is required (or send a batch in labels)", field="request_id")
        if self.label is None:
            raise InvalidInput("label is required", field="label")
        return [Label(self.request_id, self.label, 0 if self.row is msgspec.UNSET else self.row)]


class FeedbackResult(msgspec.Struct, kw_only=True):
    accepted: int
    """Labels stored (including those that replaced an earlier label)."""
    replaced: int
    """Accepted labels that replaced an earlier label for the same request row."""
    unknown: list[Label]
    """Labels whose request row is not in the prediction log; not stored."""


def validate(items: list[Label], single: bool = False) -> None:
    """Check labels; an error names the field as the request has it: `labels[i].row` in a batch, `row` for a
    `single` label sent as request_id + label."""
    if not items:
        raise InvalidInput("labels is empty", field="labels")
    if len(items) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels per request (got {len(items)})", field="labels")
    for i, item in enumerate(items):
        at = "" if single else f"labels[{i}]."
        if not item.request_id or len(item.request_id) > 256:
            raise InvalidInput("request_id must be 1 to 256 characters", field=f"{at}request_id")
        if not math.isfinite(item.label):
            raise InvalidInput("label must be a finite number", field=f"{at}label")
        if not 0 <= item.row <= MAX_ROW:
            raise InvalidInput(f"row must be 0 to {MAX_ROW}", field=f"{at}row")


def ingest(
    events: EventStore, predlog: PredictionLog | None, items: list[Label], single: bool = False,
    task_of: Callable[[str, str, int], str | None] | None = None,
) -> FeedbackResult:
    """Store the labels whose request rows are logged; report the rest (`single`: see validate).

    `task_of(deployment, model, version)` ("classification", "regression", or None when unknown) checks each label
    against the versions that answered its request: a classifier's label is a class, a whole number. One label that
    fails refuses the whole send (InvalidInput naming it), and nothing is stored."""
    validate(items, single)
    # every request answered before now must be in DuckDB, or its id would come back "unknown"
    if predlog is not None and not predlog.flush(timeout=FLUSH_WAIT_S):
        raise Busy(f"the prediction log has not flushed within {FLUSH_WAIT_S:.0f} s (DuckDB is behind or failing); "
                   "no label was stored, retry later")
    latest: dict[tuple[str, int], tuple[int, Label]] = {}
    for i, item in enumerate(items):
        latest[(item.request_id, item.row)] = (i, item)  # within a batch, the last one wins
    keys = list(latest)
    served = events.served_by(keys)
    if task_of is not None:
        _check_classes(served, latest, task_of, single)
    store = [k for k in keys if k in served]
    replaced = events.upsert_feedback(store, [latest[k][1].label for k in store])
    return FeedbackResult(accepted=len(store), replaced=replaced, unknown=[latest[k][1] for k in keys if k not in served])


def _check_classes(
    served: dict[tuple[str, int], set[tuple[str, str, int]]], latest: dict[tuple[str, int], tuple[int, Label]],
    task_of: Callable[[str, str, int], str | None], single: bool,
) -> None:
    """Raise InvalidInput for the first label, in the send's order, that is not a whole number and is for a classifier's answer."""
    tasks: dict[tuple[str, str, int], str | None] = {}
    for i, item in sorted(latest.values(), key=lambda pair: pair[0]):
        if item.label.is_integer():
            continue
        for v in sorted(served.get((item.request_id, item.row), ())):
            if v not in tasks:
                tasks[v] = task_of(*v)
            if tasks[v] == "classification":
                at = "" if single else f"labels[{i}]."
                raise InvalidInput(
                    f"request {item.request_id!r} was answered by classifier {v[1]} version {v[2]} (deployment {v[0]}): "
                    f"its label must be a class, a whole number, not {item.label!r}; no label was stored",
                    field=f"{at}label",
                )
