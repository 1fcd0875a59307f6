"""Reference profiles of model versions: built from the bundle's reference.parquet, or adopted from logged rows.

A version's reference has two profiles: `inputs` (one column per monitored feature, named as in
the version's layout) and `outputs` (one per monitored output position), stored once in the
`references` table of events.duckdb and never changed afterwards.

From a bundle: the parquet's numeric (and policy-categorical) columns are profiled under the
layout's feature names. The output profile is made by running the version's own model over the
reference rows when its input can be fed from them (one monitored input whose width equals the
number of reference columns); otherwise the version has no output reference until one is adopted.

Adopted (`adopt`): an operator takes the first N logged rows of a version as its reference, for
a version that shipped without one. The action is refused when the version already has one.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import structlog

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.monitoring.layout import Layout
from shepherd.monitoring.profile import ReferenceProfile, build_profile
from shepherd.store.events import EventStore, list_matrix

if TYPE_CHECKING:
    from shepherd.serving.engine import ModelRunner

log = structlog.get_logger()


class VersionReference(msgspec.Struct, frozen=True, kw_only=True):
    inputs: ReferenceProfile
    outputs: ReferenceProfile | None


class ReferenceInfo(msgspec.Struct, kw_only=True):
    model: str
    version: int
    source: str
    rows: int
    created_at: str
    actor: str
    features: list[str]
    outputs: list[str]


def _columns(names: list[str], matrix: np.ndarray) -> dict[str, np.ndarray]:
    return {name: matrix[:, j] for j, name in enumerate(names)}


def profile_matrix(names: list[str], matrix: np.ndarray, bins: int, categorical: list[str]) -> ReferenceProfile:
    return build_profile(_columns(names, matrix), n_bins=bins, categorical=[c for c in categorical if c in names])


class References:
    """Cache and builder of reference profiles; thread-safe."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self._cache: dict[tuple[str, int], VersionReference | None] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: int) -> VersionReference | None:
        key = (model, version)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        row = self.events.reference(model, version)
        ref = None if row is None else msgspec.msgpack.decode(row["profile"], type=VersionReference)
        if ref is not None:
            with self._lock:
                self._cache[key] = ref
        return ref

    def info(self, model: str, version: int) -> ReferenceInfo | None:
        row = self.events.reference(model, version)
        if row is None:
            return None
        ref = msgspec.msgpack.decode(row["profile"], type=VersionReference)
        return ReferenceInfo(
            model=model, version=version, source=row["source"], rows=int(row["rows"]),
            created_at=row["created_at"].isoformat(), actor=row["actor"],
            features=ref.inputs.numeric_names + ref.inputs.categorical_names,
            outputs=[] if ref.outputs is None else ref.outputs.numeric_names + ref.outputs.categorical_names,
        )

    def _save(self, model: str, version: int, source: str, rows: int, actor: str, ref: VersionReference) -> bool:
        """Store `ref` as the version's reference; False (nothing changed) when another was stored first."""
        if not self.events.save_reference(model, version, source, rows, actor, msgspec.msgpack.encode(ref), datetime.now(UTC)):
            log.info("reference_profile_exists", model=model, version=version, source=source, actor=actor)
            return False
        with self._lock:
            self._cache[(model, version)] = ref
        log.info("reference_profile_stored", model=model, version=version, source=source, rows=rows, actor=actor)
        return True

    def from_bundle(
        self, model: str, version: int, table: dict[str, np.ndarray], layout: Layout, bins: int, categorical: list[str],
        run_model: ModelRunner | None,
    ) -> VersionReference | None:
        """Profile a bundle's reference table (column -> array) under the layout's names; None when it does not fit."""
        columns = [c for c, a in table.items() if a.dtype.kind in "iufb" or c in categorical]
        if not set(layout.x_names) <= set(columns):
            log.warning("reference_does_not_match_inputs", model=model, version=version, features=layout.x_names, columns=columns)
            return None
        matrix = np.column_stack([np.asarray(table[c], dtype=np.float64) for c in layout.x_names])
        inputs = profile_matrix(layout.x_names, matrix, bins, categorical)
        outputs = _outputs_profile(model, version, layout, matrix, bins, categorical, run_model)
        ref = VersionReference(inputs=inputs, outputs=outputs)
        if not self._save(model, version, "bundle", len(matrix), "import", ref):
            return self.get(model, version)  # built at the same time elsewhere (the monitor, a request): that one stays
        return ref

    def adopt(self, model: str, version: int, rows: int, layout: Layout, bins: int, categorical: list[str], actor: str) -> ReferenceInfo:
        """Make the first `rows` logged rows of a version its reference (an explicit operator action)."""
        if rows < 2:
            raise InvalidInput("rows must be at least 2", field="rows")
        if self.events.reference(model, version) is not None:
            raise _exists(model, version)
        table = self.events.first_rows(model, version, rows)
        if table.num_rows == 0:
            raise NotFound(f"{model} version {version} has no logged predictions to adopt")
        if table.num_rows < rows:
            raise Conflict(f"{model} version {version} has only {table.num_rows} logged rows; asked for {rows}")
        x, y = list_matrix(table, "x"), list_matrix(table, "y")
        ref = VersionReference(
            inputs=profile_matrix(layout.x_names, x, bins, categorical),
            outputs=profile_matrix(layout.y_names, y, bins, categorical) if y.shape[1] else None,
        )
        if not self._save(model, version, "adopted", table.num_rows, actor, ref):  # one stored since the check above
            raise _exists(model, version)
        info = self.info(model, version)
        assert info is not None
        return info


def _exists(model: str, version: int) -> Conflict:
    return Conflict(f"{model} version {version} already has a reference profile; it is immutable")


def _outputs_profile(
    model: str, version: int, layout: Layout, matrix: np.ndarray, bins: int, categorical: list[str], run_model: ModelRunner | None,
) -> ReferenceProfile | None:
    """The profile of the model's outputs over the reference rows (`matrix`, in the layout's input order); None,
    logged, when the model cannot be run over them."""
    if not layout.outputs:
        return None
    if len(layout.inputs) != 1:
        log.warning("reference_outputs_skipped", model=model, version=version,
                    reason="the model has several inputs and reference.parquet one table: no prediction drift for this version")
        return None
    if run_model is None:
        log.warning("reference_outputs_skipped", model=model, version=version,
                    reason="no loaded session of the version to run over the reference: no prediction drift for it")
        return None
    t = layout.inputs[0]
    dtype = np.dtype(_numpy_type(t.datatype))
    # an integer or boolean input has no missing value to give the model: the rows that have one
    # (a NULL in reference.parquet) are left out of the outputs' profile
    rows = matrix if dtype.kind == "f" else matrix[~np.isnan(matrix).any(axis=1)]
    try:
        out = run_model({t.name: rows.astype(dtype).reshape(-1, *_inner(t))})
        y = np.hstack([np.asarray(out[o.name], dtype=np.float64).reshape(len(rows), o.width) for o in layout.outputs])
        return profile_matrix(layout.y_names, y, bins, categorical)
    except Exception as err:  # the input example does not fit the model: inputs only
        log.warning("reference_outputs_failed", model=model, version=version, error=str(err))
        return None


def _inner(t: Any) -> tuple[int, ...]:
    return (t.width,)


def _numpy_type(datatype: str) -> Any:
    from shepherd.serving.engine import V2_NUMPY

    return V2_NUMPY[datatype]
