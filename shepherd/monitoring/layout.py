"""Where each monitored feature and output lives in a logged row.

A logged row keeps `x`, the numeric inputs of one request row flattened in signature order, and
`y`, the outputs likewise. An input or output is flattened when every dimension after the first
is fixed; one with a dynamic inner dimension, or of type BYTES, is not monitored.

Names: a tensor with one value per row is named after the tensor (`age`); a wider one gets one
name per position (`X[0]`, `X[1]`, ...). When the model has a single monitored input and its
reference sample (`reference.parquet`) has exactly one numeric column per position, the
reference's column names are used instead, so drift results read `mean radius`, not `X[0]`.

Which output is the label and which are class scores (`targets`) follows the deployment's
performance policy (`label_output`, `score_output`, `task`), with the defaults documented there.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from shepherd.config import PerformancePolicy

NON_NUMERIC = {"BYTES"}
INTEGER_LIKE = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}


class Tensor(msgspec.Struct, frozen=True):
    name: str
    datatype: str
    width: int  # values per row


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    inputs: list[Tensor]
    outputs: list[Tensor]
    x_names: list[str]
    y_names: list[str]


class Targets(msgspec.Struct, frozen=True, kw_only=True):
    """What the performance policy makes of a layout's outputs."""

    task: str                 # classification | regression
    label_index: int | None   # position in y of the predicted label / value
    score_indices: list[int]  # positions in y of the class scores (classifiers), may be empty


def _monitored(specs: list[dict[str, Any]]) -> list[Tensor]:
    out = []
    for spec in specs:
        dims = spec["shape"][1:]
        if spec["datatype"] in NON_NUMERIC or any(d < 0 for d in dims):
            continue
        out.append(Tensor(spec["name"], spec["datatype"], math.prod(dims) if dims else 1))
    return out


def _names(tensors: list[Tensor]) -> list[str]:
    names: list[str] = []
    for t in tensors:
        names.extend([t.name] if t.width == 1 else [f"{t.name}[{i}]" for i in range(t.width)])
    return names


def build_layout(signature: dict[str, Any], reference_columns: list[str] | None = None) -> Layout:
    inputs, outputs = _monitored(signature["inputs"]), _monitored(signature["outputs"])
    x_names = _names(inputs)
    if len(inputs) == 1 and reference_columns and len(reference_columns) == len(x_names) and inputs[0].width > 1:
        x_names = list(reference_columns)
    return Layout(inputs=inputs, outputs=outputs, x_names=x_names, y_names=_names(outputs))


def targets(layout: Layout, policy: PerformancePolicy) -> Targets:
    offsets, pos = {}, 0
    for t in layout.outputs:
        offsets[t.name] = (pos, t)
        pos += t.width
    label = offsets.get(policy.label_output) if policy.label_output else next(iter(offsets.values()), None)
    task = policy.task
    if task == "auto":
        task = "classification" if label is not None and label[1].datatype in INTEGER_LIKE else "regression"
    score: tuple[int, Tensor] | None = None
    if policy.score_output:
        score = offsets.get(policy.score_output)
    elif task == "classification":
        score = next((o for o in offsets.values() if o is not label and o[1].datatype.startswith("FP") and o[1].width >= 2), None)
    return Targets(
        task=task,
        label_index=None if label is None else label[0],
        score_indices=[] if score is None else list(range(score[0], score[0] + score[1].width)),
    )
