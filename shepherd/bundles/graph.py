"""Read an ONNX model's input/output signature and check a declared signature against it."""

from __future__ import annotations

from pathlib import Path

import onnx

from shepherd.bundles.format import IOSignature, TensorSpec
from shepherd.errors import BundleRejected

ONNX_TO_V2 = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def _spec(value: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise BundleRejected(
            f"model.onnx: {kind} {value.name!r} is not a tensor (it is a {value.type.WhichOneof('value')}); "
            "only tensor inputs and outputs can be served (for skl2onnx classifiers use options zipmap=False)",
            field=f"signature.{kind}s",
        )
    tt = value.type.tensor_type
    dtype = ONNX_TO_V2.get(tt.elem_type)
    if dtype is None:
        raise BundleRejected(f"model.onnx: {kind} {value.name!r} has unsupported element type {tt.elem_type}", field=f"signature.{kind}s")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim] if tt.HasField("shape") else []
    return TensorSpec(name=value.name, datatype=dtype, shape=dims)


def read_signature(path: Path) -> IOSignature:
    """The graph's tensor inputs (initializers excluded) and outputs as V2 specs."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise BundleRejected(f"model.onnx: not a valid ONNX model ({err.__class__.__name__}: {err})", field="model.onnx") from None
    if not model.HasField("graph") or not model.graph.node:
        raise BundleRejected("model.onnx: contains no graph (empty or not an ONNX model)", field="model.onnx")
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise BundleRejected("model.onnx: uses external data files; save the model as one self-contained file", field="model.onnx")
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        # the checker's message may quote the staging path: keep the server's layout private
        first = (str(err).strip().splitlines() or ["invalid"])[0].replace(str(path.parent), "<bundle>")
        raise BundleRejected(f"model.onnx: fails the ONNX checker ({first})", field="model.onnx") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v, "output") for v in model.graph.output]
    if not inputs or not outputs:
        raise BundleRejected("model.onnx: the graph must have at least one input and one output", field="model.onnx")
    return IOSignature(inputs=inputs, outputs=outputs)


def check_declared(declared: IOSignature, graph: IOSignature) -> IOSignature:
    """Check a declared signature against the graph's; return the declared one (it may be more specific)."""
    for kind in ("inputs", "outputs"):
        want = {t.name: t for t in getattr(graph, kind)}
        got = {t.name: t for t in getattr(declared, kind)}
        if set(want) != set(got):
            raise BundleRejected(
                f"metadata signature.{kind} names {sorted(got)} do not match the ONNX graph's {sorted(want)}",
                field=f"signature.{kind}",
            )
        for name, g in want.items():
            d = got[name]
            field = f"signature.{kind}.{name}"
            if d.datatype != g.datatype:
                raise BundleRejected(f"{field}: datatype {d.datatype} but the ONNX graph says {g.datatype}", field=field)
            if g.shape and (len(d.shape) != len(g.shape) or any(gd != -1 and dd != gd for dd, gd in zip(d.shape, g.shape))):
                raise BundleRejected(f"{field}: shape {d.shape} does not fit the ONNX graph's {g.shape} (-1 = any)", field=field)
    return declared
