"""Open Inference Protocol (KServe V2) REST codec, with Triton's binary tensor data extension.

Decodes `POST /v2/models/{name}/infer` bodies into numpy arrays and encodes responses, so that
the unmodified `tritonclient[http]` works in JSON and in binary mode.

Request body: a JSON object, optionally followed by raw tensor bytes. When the
`Inference-Header-Content-Length` header is given, the first `header_length` bytes are the JSON
and the rest holds, in input order, the bytes of every input whose `parameters.binary_data_size`
is set (little-endian, row-major; BYTES as a 4-byte little-endian length then the bytes, for
each element). Every size is checked exactly; bad client input raises `InvalidInput` only.

Decisions worth knowing:

* Supported datatypes: BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES. BF16 is
  rejected (numpy has no native bfloat16 and ONNX Runtime's CPU kernels rarely take it).
* JSON `data` may be flat or nested (row-major); only the element count is checked against
  `shape`, the nesting is flattened. JSON has no NaN/Infinity: a `null` in a floating-point
  tensor means NaN; numbers out of range of the datatype (e.g. 70000 for FP16, 300 for UINT8)
  are rejected rather than wrapped or turned into infinity. Integers must be JSON integers
  (`1.0` is not an INT32), booleans must be `true`/`false`, BYTES must be strings (sent as
  their UTF-8 bytes).
* Binary inputs are zero-copy views of the request body (`np.frombuffer`), hence read-only;
  a view that would be misaligned for its dtype is copied. BOOL bytes must be 0 or 1.
* Responses: an output goes in binary when asked for (`binary_data` on the requested output,
  or the request-level `binary_data_output` when no outputs were named). In JSON mode BYTES
  outputs are written as strings and must be valid UTF-8: anything else raises `InvalidInput`
  telling the client to ask for the output in binary (no lossy latin-1 fallback). Non-finite
  floats become `null` in JSON mode (msgspec's behaviour; tritonclient reads it back as NaN,
  so infinities are only exact in binary mode).
* Shared-memory parameters and Triton's `classification` output parameter are rejected as
  unsupported rather than silently ignored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import numpy as np

from shepherd.errors import InvalidInput, ShepherdError

__all__ = [
    "NUMPY_TO_V2",
    "V2_TO_NUMPY",
    "DecodedRequest",
    "RequestedOutput",
    "Signature",
    "compile_signature",
    "decode_request",
    "encode_response",
    "v2_datatype",
    "validate",
]

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
"""V2 datatype -> numpy dtype of the decoded array (BYTES -> object array of `bytes`)."""

NUMPY_TO_V2: dict[type, str] = {dt.type: name for name, dt in V2_TO_NUMPY.items()}
"""numpy scalar type (`arr.dtype.type`) -> V2 datatype; `str_`, `bytes_` and `object_` are BYTES."""
NUMPY_TO_V2[np.str_] = "BYTES"
NUMPY_TO_V2[np.bytes_] = "BYTES"

_WIRE_DTYPE = {name: dt.newbyteorder("<") for name, dt in V2_TO_NUMPY.items() if name != "BYTES"}
_DATATYPES = ", ".join(V2_TO_NUMPY)
_U32 = struct.Struct("<I")
_MAX_RANK = 32
# msgspec reports bad UTF-8 as UnicodeDecodeError and deep nesting as RecursionError.
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeDecodeError)
_BYTES_OUTPUT_KINDS = frozenset("OUS")


# -- wire types -------------------------------------------------------------------------------


class _InputWire(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _OutputWire(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: dict[str, Any] | None = None


class _RequestWire(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[_InputWire]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_OutputWire] | None = None


_REQUEST_DECODER = msgspec.json.Decoder(_RequestWire)
_ANY_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def _int_range(lo: int, hi: int) -> Any:
    return Annotated[int, msgspec.Meta(ge=lo, le=hi)]


def _float_range(limit: float) -> Any:
    return Annotated[float, msgspec.Meta(ge=-limit, le=limit)] | None


# Element types of JSON `data`, per datatype: msgspec checks types and ranges in C.
_ELEMENT_TYPES: dict[str, Any] = {
    "BOOL": bool,
    "UINT8": _int_range(0, 2**8 - 1),
    "UINT16": _int_range(0, 2**16 - 1),
    "UINT32": _int_range(0, 2**32 - 1),
    "UINT64": Annotated[int, msgspec.Meta(ge=0)],  # msgspec bounds stop at int64: upper end checked by numpy
    "INT8": _int_range(-(2**7), 2**7 - 1),
    "INT16": _int_range(-(2**15), 2**15 - 1),
    "INT32": _int_range(-(2**31), 2**31 - 1),
    "INT64": _int_range(-(2**63), 2**63 - 1),
    "FP16": _float_range(float(np.finfo(np.float16).max)),
    "FP32": _float_range(float(np.finfo(np.float32).max)),
    "FP64": float | None,
    "BYTES": str,
}
_FLAT_DECODERS = {name: msgspec.json.Decoder(list[t]) for name, t in _ELEMENT_TYPES.items()}
_FLAT_TYPES = {name: list[t] for name, t in _ELEMENT_TYPES.items()}
_EXPECTED = {
    "BOOL": "true/false",
    "BYTES": "strings",
    "FP16": "numbers (or null for NaN)",
    "FP32": "numbers (or null for NaN)",
    "FP64": "numbers (or null for NaN)",
}


# -- public types -----------------------------------------------------------------------------


class RequestedOutput(msgspec.Struct):
    """One output the client asked for, and whether it wants it in binary."""

    name: str
    binary: bool


class DecodedRequest(msgspec.Struct):
    """A decoded (and, when a signature was given, validated) infer request."""

    id: str | None
    """The request's `id`, echoed in the response."""
    inputs: dict[str, np.ndarray]
    """Input name -> array with the declared shape and dtype (binary inputs are read-only views)."""
    outputs: list[RequestedOutput] | None
    """Requested outputs in request order; None means every output of the model."""
    binary_output_default: bool
    """Request-level `parameters.binary_data_output`: binary mode for outputs not named."""
    parameters: dict[str, Any]
    """Request-level parameters, as sent."""


def request_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Rows in a request: the first axis of its first input (1 for a scalar input or no input).

    The batcher and the prediction log count by it. For a batchable model, inputs whose first
    axes differ are refused before either sees them (`inference.check_batch_axis`).
    """
    for a in inputs.values():
        return a.shape[0] if a.ndim else 1
    return 1


_Spec = tuple[str, tuple[int, ...]]


class Signature:
    """A model's input/output signature, indexed for fast checking (see `compile_signature`)."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs: dict[str, _Spec], outputs: dict[str, _Spec]) -> None:
        self.inputs = inputs
        """Input name -> (datatype, shape); -1 is any size."""
        self.outputs = outputs
        """Output name -> (datatype, shape)."""


def _spec(spec: Any) -> tuple[str, str, tuple[int, ...]]:
    if isinstance(spec, Mapping):
        name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
    else:
        name, datatype, shape = spec.name, spec.datatype, spec.shape
    return name, datatype, tuple(-1 if d is None or d < 0 else int(d) for d in shape)


def compile_signature(signature: Any) -> Signature:
    """Index a signature: a dict `{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`,
    a `shepherd.bundles.format.IOSignature`, or an already compiled `Signature`."""
    if isinstance(signature, Signature):
        return signature
    if isinstance(signature, Mapping):
        ins, outs = signature.get("inputs") or [], signature.get("outputs") or []
    else:
        ins, outs = signature.inputs, signature.outputs
    inputs = {name: (dt, shape) for name, dt, shape in map(_spec, ins)}
    outputs = {name: (dt, shape) for name, dt, shape in map(_spec, outs)}
    return Signature(inputs, outputs)


# Compiled signatures by identity of the object passed in. The entry keeps that object alive, so
# its id cannot be reused while cached; signatures are treated as immutable once served.
_SIGNATURES: dict[int, tuple[Any, Signature]] = {}
_SIGNATURE_CACHE_SIZE = 256


def _signature(signature: Any) -> Signature:
    if type(signature) is Signature:
        return signature
    hit = _SIGNATURES.get(id(signature))
    if hit is not None and hit[0] is signature:
        return hit[1]
    compiled = compile_signature(signature)
    if len(_SIGNATURES) >= _SIGNATURE_CACHE_SIZE:
        _SIGNATURES.clear()
    _SIGNATURES[id(signature)] = (signature, compiled)
    return compiled


# -- helpers ------------------------------------------------------------------------------------


def _fmt_shape(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _bad(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"input '{name}': {message}", field=f"inputs.{name}")


def _check_against(name: str, datatype: str, shape: Any, sig: Signature) -> None:
    spec = sig.inputs.get(name)
    if spec is None:
        known = ", ".join(f"'{n}'" for n in sig.inputs) or "none"
        raise _bad(name, f"unknown input; the model takes {known}")
    want_dt, want_shape = spec
    if datatype != want_dt:
        raise _bad(name, f"datatype is {datatype}, expected {want_dt}")
    if len(shape) == len(want_shape):
        for w, d in zip(want_shape, shape):
            if w != d and w >= 0:
                break
        else:
            return
    raise _bad(name, f"shape is {_fmt_shape(shape)}, expected {_fmt_shape(want_shape)} (-1 is any size)")


def _check_complete(seen: Mapping[str, Any], sig: Signature) -> None:
    if len(seen) != len(sig.inputs):
        for want, (dt, shape) in sig.inputs.items():
            if want not in seen:
                raise InvalidInput(
                    f"input '{want}' is missing: the model needs {dt} {_fmt_shape(shape)} (-1 is any size)",
                    field=f"inputs.{want}",
                )


def _flatten(value: Any) -> list[Any]:
    """Leaves of nested lists in row-major order (iterative: nesting depth is unbounded)."""
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_elements(name: str, datatype: str, raw: msgspec.Raw) -> list[Any]:
    try:
        return _FLAT_DECODERS[datatype].decode(raw)
    except msgspec.ValidationError as e:
        first_error = e
    except _DECODE_ERRORS as e:  # the envelope only skimmed `data`: strings are checked here
        raise _bad(name, f"malformed data: {e}") from None
    # Not a flat list of the right type: maybe nested (row-major), maybe plain wrong.
    try:
        value = _ANY_DECODER.decode(raw)
    except _DECODE_ERRORS as e:
        raise _bad(name, f"malformed data: {e}") from None
    what = _EXPECTED.get(datatype, "integers")
    if type(value) is not list:
        raise _bad(name, f"data must be a JSON array of {what} for {datatype}")
    if any(type(v) is list for v in value):
        try:
            return msgspec.convert(_flatten(value), _FLAT_TYPES[datatype])
        except msgspec.ValidationError as e:
            raise _bad(name, f"data must be {what} for {datatype}: {e} (index into the flattened data)") from None
    raise _bad(name, f"data must be {what} for {datatype}: {first_error}")


def _from_json(name: str, datatype: str, shape: list[int], count: int, raw: msgspec.Raw) -> np.ndarray:
    elements = _json_elements(name, datatype, raw)
    if len(elements) != count:
        raise _bad(name, f"data has {len(elements)} elements but shape {_fmt_shape(shape)} holds {count}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        try:
            arr[:] = [s.encode("utf-8") for s in elements]
        except UnicodeEncodeError as e:
            raise _bad(name, f"a string is not valid UTF-8: {e}") from None
    else:
        try:
            arr = np.array(elements, dtype=V2_TO_NUMPY[datatype])
        except OverflowError:
            raise _bad(name, f"data holds an integer out of range for {datatype}") from None
    return arr.reshape(shape)


def _from_binary(name: str, datatype: str, shape: list[int], count: int, seg: memoryview) -> np.ndarray:
    size = len(seg)
    if datatype == "BYTES":
        items: list[bytes] = []
        pos = 0
        unpack = _U32.unpack_from
        while pos < size:
            if len(items) == count:
                raise _bad(name, f"binary BYTES data holds more than the {count} elements of shape {_fmt_shape(shape)}")
            if size - pos < 4:
                raise _bad(
                    name, f"binary BYTES data is truncated: element {len(items)} has an incomplete 4-byte length"
                )
            (length,) = unpack(seg, pos)
            pos += 4
            if length > size - pos:
                raise _bad(
                    name,
                    f"binary BYTES data is truncated: element {len(items)} declares {length} bytes, "
                    f"{size - pos} remain",
                )
            items.append(bytes(seg[pos : pos + length]))
            pos += length
        if len(items) != count:
            raise _bad(
                name, f"binary BYTES data holds {len(items)} elements but shape {_fmt_shape(shape)} holds {count}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = _WIRE_DTYPE[datatype]
    if size != count * dtype.itemsize:
        raise _bad(
            name,
            f"binary_data_size is {size} but {datatype} {_fmt_shape(shape)} takes {count * dtype.itemsize} bytes",
        )
    arr = np.frombuffer(seg, dtype=dtype)
    if not arr.flags.aligned:
        arr = arr.copy()
    if datatype == "BOOL" and count and np.frombuffer(seg, dtype=np.uint8).max() > 1:
        raise _bad(name, "binary BOOL data must hold bytes 0 or 1")
    return arr.reshape(shape)


def _check_shape(name: str, shape: list[int]) -> int:
    if len(shape) > _MAX_RANK:
        raise _bad(name, f"shape has {len(shape)} dimensions; at most {_MAX_RANK} are supported")
    for d in shape:
        if d < 0:
            raise _bad(name, f"shape {_fmt_shape(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > 2**40 or (0 in shape and math.prod(d for d in shape if d) > 2**40):
        raise _bad(name, f"shape {_fmt_shape(shape)} is too large")
    return count


def _header_length(value: Any, body_size: int) -> int:
    if isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):  # int() would also take "1_0", "+1", "١"
            raise InvalidInput(
                f"malformed binary header: Inference-Header-Content-Length = {value!r} is not a byte count",
                field="Inference-Header-Content-Length",
            )
        value = int(digits)
    if type(value) is not int:
        raise InvalidInput(
            "malformed binary header: Inference-Header-Content-Length must be an integer",
            field="Inference-Header-Content-Length",
        )
    if value < 0 or value > body_size:
        raise InvalidInput(
            f"malformed binary header: Inference-Header-Content-Length = {value} but the body has {body_size} bytes",
            field="Inference-Header-Content-Length",
        )
    return value


def _unsupported_parameter(params: dict[str, Any], where: str, field: str) -> None:
    for key in params:
        if key.startswith("shared_memory_"):
            raise InvalidInput(f"{where}: shared memory is not supported (parameter '{key}')", field=field)
        if key == "classification":
            raise InvalidInput(f"{where}: the 'classification' parameter is not supported", field=field)


# -- decode -------------------------------------------------------------------------------------


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | str | None = None, signature: Any = None
) -> DecodedRequest:
    """Decode a V2 REST infer request body; with `signature`, also validate it against the model.

    `header_length` is the `Inference-Header-Content-Length` header (int, its string, or None when
    absent: then the whole body is JSON). `signature` is a dict `{"inputs": [...], "outputs": [...]}`
    of `{"name", "datatype", "shape"}` (-1 = any size), an `IOSignature` or a compiled `Signature`.
    Raises `InvalidInput` (and nothing else) for anything malformed or not matching the signature.
    """
    view = memoryview(body)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if header_length is None:
        header, binary = view, None
    else:
        header_length = _header_length(header_length, len(view))
        header, binary = view[:header_length], view[header_length:]
    try:
        wire = _REQUEST_DECODER.decode(header)
    except _DECODE_ERRORS as e:
        raise InvalidInput(f"malformed inference request: {e}", field="body") from None
    sig = None if signature is None else _signature(signature)

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for inp in wire.inputs:
        name, datatype, shape = inp.name, inp.datatype, inp.shape
        if name in inputs:
            raise _bad(name, "given more than once")
        if sig is not None:
            _check_against(name, datatype, shape, sig)
        if datatype not in _WIRE_DTYPE and datatype != "BYTES":
            if datatype == "BF16":
                raise _bad(name, "datatype BF16 is not supported")
            raise _bad(name, f"unknown datatype {datatype!r}; expected one of {_DATATYPES}")
        count = _check_shape(name, shape)
        size = None
        params = inp.parameters
        if params:
            _unsupported_parameter(params, f"input '{name}'", f"inputs.{name}")
            size = params.get("binary_data_size")
        if size is None:
            if inp.data is msgspec.UNSET:
                raise _bad(name, "no data: give 'data' or parameters.binary_data_size")
            inputs[name] = _from_json(name, datatype, shape, count, inp.data)
            continue
        if inp.data is not msgspec.UNSET:
            raise _bad(name, "both 'data' and parameters.binary_data_size are given")
        if type(size) is not int or size < 0:
            raise _bad(name, f"malformed binary header: binary_data_size = {size!r} is not a byte count")
        if binary is None:
            raise _bad(
                name, "malformed binary header: binary_data_size is set but Inference-Header-Content-Length is not"
            )
        if size > len(binary) - offset:
            raise _bad(
                name,
                f"malformed binary header: binary_data_size = {size} "
                f"but only {len(binary) - offset} bytes of binary data remain",
            )
        inputs[name] = _from_binary(name, datatype, shape, count, binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"malformed binary header: the inputs' binary_data_size sum to {offset} "
            f"but {len(binary)} bytes follow the {len(view) - len(binary)}-byte JSON header",
            field="Inference-Header-Content-Length",
        )
    if sig is not None:
        _check_complete(inputs, sig)

    parameters = wire.parameters or {}
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise InvalidInput("parameters.binary_data_output must be true or false", field="parameters.binary_data_output")
    requested = None
    if wire.outputs:
        requested = []
        seen: set[str] = set()
        for out in wire.outputs:
            name = out.name
            if name in seen:
                raise InvalidInput(f"output '{name}' is requested more than once", field=f"outputs.{name}")
            seen.add(name)
            if sig is not None and name not in sig.outputs:
                known = ", ".join(f"'{n}'" for n in sig.outputs) or "none"
                raise InvalidInput(f"output '{name}' is unknown; the model gives {known}", field=f"outputs.{name}")
            want_binary = binary_default
            if out.parameters:
                _unsupported_parameter(out.parameters, f"output '{name}'", f"outputs.{name}")
                flag = out.parameters.get("binary_data")
                if flag is not None:
                    if type(flag) is not bool:
                        raise InvalidInput(
                            f"output '{name}': parameters.binary_data must be true or false", field=f"outputs.{name}"
                        )
                    want_binary = flag
            requested.append(RequestedOutput(name, want_binary))
    return DecodedRequest(wire.id, inputs, requested, binary_default, parameters)


def validate(req: DecodedRequest, signature: Any) -> None:
    """Check decoded inputs and requested outputs against `signature` (done by `decode_request`
    already when it is given one); raises `InvalidInput` naming the input and what was expected."""
    sig = _signature(signature)
    for name, arr in req.inputs.items():
        datatype = v2_datatype(arr.dtype)
        if datatype is None:
            raise _bad(name, f"numpy dtype {arr.dtype} has no V2 datatype")
        _check_against(name, datatype, arr.shape, sig)
    _check_complete(req.inputs, sig)
    for out in req.outputs or ():
        if out.name not in sig.outputs:
            known = ", ".join(f"'{n}'" for n in sig.outputs) or "none"
            raise InvalidInput(f"output '{out.name}' is unknown; the model gives {known}", field=f"outputs.{out.name}")


# -- encode -------------------------------------------------------------------------------------


_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in V2_TO_NUMPY.items() if name != "BYTES"}


def v2_datatype(dtype: np.dtype) -> str | None:
    """The V2 datatype of a numpy dtype (str/bytes/object are BYTES), or None if there is none.

    Looked up by kind and size, not by scalar type: numpy has distinct types of equal width
    (`longlong` and `int64` on Linux), and ONNX Runtime may return either.
    """
    if dtype.kind in _BYTES_OUTPUT_KINDS:
        return "BYTES"
    return _BY_KIND.get((dtype.kind, dtype.itemsize))


def _as_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


def _as_text(name: str, value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output '{name}' holds bytes that are not valid UTF-8 and cannot be sent as JSON; "
                "request it with parameters.binary_data = true",
                field=f"outputs.{name}",
            ) from None
    return str(value)


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    requested: list[RequestedOutput] | None,
    binary_default: bool,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a V2 infer response: `(body, json_header_length)`.

    Only the `requested` outputs are included (all of `outputs`, in their order, when None).
    The header length is None when every output is in JSON; otherwise the caller sends it as
    `Inference-Header-Content-Length` with content type `application/octet-stream`.
    """
    if requested is None:
        items = [(name, arr, binary_default) for name, arr in outputs.items()]
    else:
        items = []
        for out in requested:
            arr = outputs.get(out.name)
            if arr is None:
                raise ShepherdError(f"output '{out.name}' was requested but the model did not produce it")
            items.append((out.name, arr, out.binary))
    tensors = []
    chunks: list[bytes] = []
    for name, arr, binary in items:
        arr = np.asarray(arr)
        datatype = v2_datatype(arr.dtype)
        if datatype is None:
            raise ShepherdError(f"output '{name}' has numpy dtype {arr.dtype}, which has no V2 datatype")
        if binary:
            if datatype == "BYTES":
                parts = []
                for value in arr.ravel().tolist():
                    b = _as_bytes(value)
                    parts.append(_U32.pack(len(b)))
                    parts.append(b)
                raw = b"".join(parts)
            else:
                wire = _WIRE_DTYPE[datatype]
                raw = (arr if arr.dtype == wire else arr.astype(wire)).tobytes()
            chunks.append(raw)
            tensors.append(
                {"name": name, "datatype": datatype, "shape": arr.shape, "parameters": {"binary_data_size": len(raw)}}
            )
        else:
            data = arr.ravel().tolist()
            if datatype == "BYTES":
                data = [_as_text(name, v) for v in data]
            tensors.append({"name": name, "datatype": datatype, "shape": arr.shape, "data": data})
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = tensors
    header = _ENCODER.encode(response)
    if not chunks:
        return header, None
    chunks.insert(0, header)
    return b"".join(chunks), len(header)
