"""The Open Inference Protocol codec against the real tritonclient, in JSON and binary mode."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shepherd.errors import InvalidInput
from shepherd.serving import codec
from shepherd.serving.codec import RequestedOutput, decode_request, encode_response

httpclient = pytest.importorskip("tritonclient.http")

# BF16 is not supported by the codec (numpy has no native bfloat16), so it is not generated here.
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
DATATYPES = [*NUMERIC, "BYTES"]
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
NAMES = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


# -- helpers ------------------------------------------------------------------------------------


@st.composite
def tensors(draw, datatype: str, *, json_safe: bool, shape=None) -> np.ndarray:
    """An array of `datatype`; `json_safe` keeps to values JSON carries exactly (finite, UTF-8)."""
    shape = draw(SHAPES) if shape is None else shape
    if datatype == "BYTES":
        element = st.text(max_size=6).map(str.encode) if json_safe else st.binary(max_size=6)
        values = draw(st.lists(element, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    dtype = codec.V2_TO_NUMPY[datatype]
    elements = None
    if json_safe and dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(dtype, shape, elements=elements))


def triton_body(named: list[tuple[str, np.ndarray, bool]], outputs=None, request_id: str = "") -> tuple[bytes, int | None]:
    """A request body exactly as tritonclient's HTTP client builds it."""
    inputs = []
    for name, arr, binary in named:
        datatype = "BYTES" if arr.dtype == object else codec.NUMPY_TO_V2[arr.dtype.type]
        inp = httpclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id=request_id)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, same shape and the same values, bit for bit (NaN payloads and -0.0 included)."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == want.tobytes()


def as_triton_bytes(arr: np.ndarray) -> list:
    """tritonclient returns JSON BYTES outputs as str: compare them as UTF-8 bytes."""
    return [v.encode() if isinstance(v, str) else v for v in arr.ravel().tolist()]


@st.composite
def named_tensors(draw, mode: str) -> list[tuple[str, np.ndarray, bool]]:
    """One to three differently named tensors, each sent in JSON or binary as `mode` says."""
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    out = []
    for name in names:
        binary = {"json": False, "binary": True}.get(mode) or draw(st.booleans())
        datatype = draw(st.sampled_from(DATATYPES))
        out.append((name, draw(tensors(datatype, json_safe=not binary)), binary))
    return out


def signature_for(named, outputs=()) -> dict:
    """A signature matching the tensors, with a random-looking mix of fixed and -1 dimensions."""
    specs = []
    for i, (name, arr, _) in enumerate(named):
        shape = [-1 if (i + j) % 2 else d for j, d in enumerate(arr.shape)]
        datatype = "BYTES" if arr.dtype == object else codec.NUMPY_TO_V2[arr.dtype.type]
        specs.append({"name": name, "datatype": datatype, "shape": shape})
    return {"inputs": specs, "outputs": [{"name": n, "datatype": "FP32", "shape": [-1]} for n in outputs]}


# -- request round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "binary", "mixed"])
@FAST
@given(data=st.data())
def test_request_round_trip_through_tritonclient(mode, data):
    """Every supported datatype and shape tritonclient sends decodes to the exact source array."""
    named = data.draw(named_tensors(mode))
    body, header_length = triton_body(named, request_id="req-1")
    decoded = decode_request(body, header_length, signature_for(named))
    assert decoded.id == "req-1"
    assert list(decoded.inputs) == [name for name, _, _ in named]
    for name, arr, _ in named:
        assert_same(decoded.inputs[name], arr)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_scalar_and_empty_tensors_round_trip(datatype):
    """Shape [] carries one element and a 0-sized dimension carries none, in both modes."""
    rng = np.random.default_rng(0)
    for shape in [(), (0,), (2, 0, 3)]:
        if datatype == "BYTES":
            arr = np.empty(int(np.prod(shape)), dtype=object)
            arr[:] = [b"ab"] * arr.size
            arr = arr.reshape(shape)
        else:
            arr = np.asarray(rng.random(shape) * 100).astype(codec.V2_TO_NUMPY[datatype])
        for binary in (False, True):
            body, header_length = triton_body([("t", arr, binary)])
            assert_same(decode_request(body, header_length).inputs["t"], arr)


def test_requested_outputs_and_binary_flags():
    """Requested outputs keep request order and their binary flag; no outputs means binary_data_output."""
    x = np.ones((1, 3), np.float32)
    outs = [httpclient.InferRequestedOutput("b", binary_data=False), httpclient.InferRequestedOutput("a")]
    decoded = decode_request(*triton_body([("x", x, False)], outputs=outs))
    assert decoded.outputs == [RequestedOutput("b", False), RequestedOutput("a", True)]
    assert decoded.binary_output_default is False
    decoded = decode_request(*triton_body([("x", x, True)]))
    assert decoded.outputs is None
    assert decoded.binary_output_default is True
    assert decoded.id is None


def test_binary_inputs_are_zero_copy_views():
    """An aligned binary input is a read-only view of the request body, not a copy."""
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    body, header_length = triton_body([("x", x, True)])
    pad = (-header_length) % 8  # pad the JSON header with spaces so the tensor starts 8-aligned
    body = body[:header_length] + b" " * pad + body[header_length:]
    arr = decode_request(body, header_length + pad).inputs["x"]
    assert_same(arr, x)
    assert not arr.flags.writeable
    assert np.shares_memory(arr, np.frombuffer(body, dtype=np.uint8))


def test_misaligned_binary_input_is_copied_aligned():
    """A binary tensor at an odd offset is copied so consumers always get aligned arrays."""
    x = np.arange(3, dtype=np.float32)
    body, header_length = triton_body([("x", x, True)])
    pad = 1 if header_length % 4 == 0 else 0
    body = body[:header_length] + b" " * pad + body[header_length:]
    arr = decode_request(body, header_length + pad).inputs["x"]
    assert arr.flags.aligned
    assert_same(arr, x)


def test_nested_json_data_is_row_major():
    """Nested `data` lists are read row-major, like a flat list."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]})
    arr = decode_request(body.encode(), None).inputs["x"]
    assert_same(arr, np.arange(1, 7, dtype=np.int32).reshape(2, 3))


def test_json_null_is_nan_and_string_header_length_is_accepted():
    """A JSON null in a float tensor is NaN, and the header length may come as the header's string."""
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, None]}, {"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}}]}
    ).encode()
    decoded = decode_request(header + b"\x01\x00", str(len(header)))
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([1.5, np.nan], np.float32))
    assert_same(decoded.inputs["b"], np.array([True, False]))


# -- response round trips -----------------------------------------------------------------------


@st.composite
def response_case(draw):
    """Outputs of random datatypes and modes, and either no request (all, default mode) or a subset."""
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    binary = {name: draw(st.booleans()) for name in names}
    outputs = {name: draw(tensors(draw(st.sampled_from(DATATYPES)), json_safe=not binary[name])) for name in names}
    if draw(st.booleans()):
        default = draw(st.booleans())
        outputs = {n: draw(tensors(str(codec.v2_datatype(a.dtype)), json_safe=not default, shape=a.shape)) for n, a in outputs.items()}
        return outputs, None, default
    chosen = draw(st.permutations(names).map(lambda p: p[: max(1, len(p) // 2)]))
    return outputs, [RequestedOutput(n, binary[n]) for n in chosen], draw(st.booleans())


@FAST
@given(case=response_case(), request_id=st.none() | st.text(max_size=8))
def test_response_round_trip_through_tritonclient(case, request_id):
    """tritonclient's InferResult reads back exactly the outputs asked for, in JSON and binary."""
    outputs, requested, default = case
    body, header_length = encode_response(
        model_name="m", model_version="3", request_id=request_id, outputs=outputs, requested=requested, binary_default=default
    )
    result = httpclient.InferResult.from_response_body(body, False, header_length)
    response = result.get_response()
    assert response["model_name"] == "m" and response["model_version"] == "3"
    assert response.get("id") == request_id
    wanted = [(n, default) for n in outputs] if requested is None else [(r.name, r.binary) for r in requested]
    assert [o["name"] for o in response["outputs"]] == [n for n, _ in wanted]
    assert (header_length is not None) == any(b for _, b in wanted)
    for name, binary in wanted:
        want = outputs[name]
        assert ("data" in result.get_output(name)) is not binary
        got = result.as_numpy(name)
        assert got.shape == want.shape
        if want.dtype == object:
            assert as_triton_bytes(got) == want.ravel().tolist()
        else:
            assert_same(got, want)


def test_full_exchange_with_requested_subset():
    """Decode a tritonclient request, answer it, and read the answer back with tritonclient."""
    x = np.random.default_rng(1).random((2, 30), dtype=np.float32)
    sig = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 30]}], "outputs": [{"name": "p", "datatype": "FP32", "shape": [-1, 2]}, {"name": "label", "datatype": "BYTES", "shape": [-1]}]}
    req = decode_request(*triton_body([("x", x, True)], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)], request_id="abc"), sig)
    label = np.array(["cat", "dog"], dtype=object)
    body, header_length = encode_response(
        model_name="m", model_version="1", request_id=req.id, outputs={"p": np.zeros((2, 2), np.float32), "label": label},
        requested=req.outputs, binary_default=req.binary_output_default,
    )
    assert header_length is None
    result = httpclient.InferResult.from_response_body(body, False, header_length)
    assert result.get_response()["id"] == "abc"
    assert result.get_output("p") is None
    assert result.as_numpy("label").tolist() == ["cat", "dog"]


def test_response_string_outputs_and_nan_in_json():
    """numpy str arrays are BYTES; NaN goes out as null in JSON mode and reads back as NaN."""
    outputs = {"s": np.array([["a", "é"]]), "f": np.array([np.nan, 1.0], np.float32)}
    body, header_length = encode_response(model_name="m", model_version="1", request_id=None, outputs=outputs, requested=None, binary_default=False)
    doc = json.loads(body)
    assert doc["outputs"][0] == {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "é"]}
    assert doc["outputs"][1]["data"] == [None, 1.0]
    assert "id" not in doc
    result = httpclient.InferResult.from_response_body(body, False, header_length)
    np.testing.assert_array_equal(result.as_numpy("f"), outputs["f"])


def test_non_utf8_bytes_output_in_json_mode_asks_for_binary():
    """Bytes that are not UTF-8 cannot go in JSON: the error names the output and the fix."""
    outputs = {"raw": np.array([b"\xff\xfe"], dtype=object)}
    with pytest.raises(InvalidInput, match=r"'raw'.*binary_data"):
        encode_response(model_name="m", model_version="1", request_id=None, outputs=outputs, requested=[RequestedOutput("raw", False)], binary_default=True)
    body, header_length = encode_response(model_name="m", model_version="1", request_id=None, outputs=outputs, requested=None, binary_default=True)
    assert httpclient.InferResult.from_response_body(body, False, header_length).as_numpy("raw").tolist() == [b"\xff\xfe"]


# -- errors -------------------------------------------------------------------------------------

SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}, {"name": "s", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}, {"name": "label", "datatype": "BYTES", "shape": [-1]}],
}
X = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
S = {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]}


def body_of(*inputs, binary: bytes | None = None, **top) -> tuple[bytes, int | None]:
    """A JSON request of `inputs`, followed by `binary` bytes (then with a header length) if given."""
    header = json.dumps({"inputs": list(inputs), **top}).encode()
    return (header, None) if binary is None else (header + binary, len(header))


def with_(base: dict, **changes) -> dict:
    """A copy of an input with some fields changed (None removes the field)."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


def binary_x(size: int, data: bytes) -> tuple[bytes, int]:
    """Input x sent in binary with a declared size and the given bytes."""
    return body_of(with_(X, data=None, parameters={"binary_data_size": size}), S, binary=data)


ERRORS = {
    "wrong datatype": (body_of(with_(X, datatype="INT32"), S), ["'x'", "INT32", "FP32"]),
    "wrong rank": (body_of(with_(X, shape=[3]), S), ["'x'", "[3]", "[-1, 3]"]),
    "wrong fixed dim": (body_of(with_(X, shape=[1, 4], data=[1, 2, 3, 4]), S), ["'x'", "[1, 4]", "[-1, 3]"]),
    "missing input": (body_of(X), ["'s'", "missing", "BYTES"]),
    "unknown input": (body_of(X, S, with_(X, name="z")), ["'z'", "unknown", "'x'"]),
    "duplicate input": (body_of(X, X, S), ["'x'", "more than once"]),
    "element count": (body_of(with_(X, shape=[2, 3]), S), ["'x'", "3 elements", "holds 6"]),
    "header length beyond body": ((b'{"inputs": []}', 99), ["Inference-Header-Content-Length", "99"]),
    "negative header length": ((b'{"inputs": []}', -1), ["Inference-Header-Content-Length"]),
    "header length not a number": ((b'{"inputs": []}', "ten"), ["Inference-Header-Content-Length"]),
    "header length with underscore": ((b'{"inputs": []}', "1_4"), ["Inference-Header-Content-Length"]),
    "binary size vs shape": (binary_x(8, b"\0" * 8), ["'x'", "binary_data_size is 8", "12 bytes"]),
    "binary size beyond body": (binary_x(12, b"\0" * 8), ["'x'", "binary_data_size = 12", "8 bytes"]),
    "trailing binary bytes": (binary_x(12, b"\0" * 13), ["binary_data_size sum to 12", "13 bytes"]),
    "binary without header length": ((body_of(with_(X, data=None, parameters={"binary_data_size": 12}), S)[0], None), ["'x'", "Inference-Header-Content-Length"]),
    "binary size not an int": (body_of(with_(X, data=None, parameters={"binary_data_size": "12"}), S, binary=b"\0" * 12), ["'x'", "binary_data_size"]),
    "data and binary both": (body_of(with_(X, parameters={"binary_data_size": 12}), S, binary=b"\0" * 12), ["'x'", "both"]),
    "no data": (body_of(with_(X, data=None), S), ["'x'", "no data"]),
    "truncated BYTES element": (body_of(X, with_(S, data=None, parameters={"binary_data_size": 6}), binary=struct.pack("<I", 5) + b"ab"), ["'s'", "truncated", "element 0"]),
    "truncated BYTES length": (body_of(X, with_(S, data=None, parameters={"binary_data_size": 2}), binary=b"\1\0"), ["'s'", "truncated", "4-byte length"]),
    "too many BYTES elements": (body_of(X, with_(S, data=None, parameters={"binary_data_size": 8}), binary=b"\0" * 8), ["'s'", "more than the 1 elements"]),
    "non-JSON body": ((b"this is not json", None), ["malformed"]),
    "non-UTF-8 body": ((b'{"inputs": "\xff"}', None), ["malformed"]),
    "JSON not an object": ((b"[1, 2]", None), ["malformed", "object"]),
    "inputs missing": ((b'{"id": "a"}', None), ["malformed", "inputs"]),
    "unknown top-level field": (body_of(X, S, input=[]), ["malformed", "input"]),
    "unknown requested output": (body_of(X, S, outputs=[{"name": "nope"}]), ["'nope'", "'y'", "'label'"]),
    "duplicate requested output": (body_of(X, S, outputs=[{"name": "y"}, {"name": "y"}]), ["'y'", "more than once"]),
    "binary_data not a bool": (body_of(X, S, outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), ["'y'", "binary_data"]),
    "binary_data_output not a bool": (body_of(X, S, parameters={"binary_data_output": "yes"}), ["binary_data_output"]),
    "shared memory": (body_of(with_(X, parameters={"shared_memory_region": "r"}), S), ["'x'", "shared memory"]),
    "classification": (body_of(X, S, outputs=[{"name": "y", "parameters": {"classification": 2}}]), ["'y'", "classification"]),
    "BYTES data not strings": (body_of(X, with_(S, data=[1])), ["'s'", "strings"]),
    "FP32 data not numbers": (body_of(with_(X, data=["1", "2", "3"]), S), ["'x'", "numbers", "FP32"]),
    "FP32 data booleans": (body_of(with_(X, data=[True, False, True]), S), ["'x'", "numbers"]),
    "FP32 data not an array": (body_of(with_(X, shape=[1, 3], data=7), S), ["'x'", "JSON array"]),
    "nested data of wrong type": (body_of(with_(X, data=[[1, "a", 3]]), S), ["'x'", "numbers", "flattened"]),
}
NO_SIGNATURE_ERRORS = {
    "unknown datatype": (body_of(with_(X, datatype="FLOAT")), ["'x'", "FLOAT", "FP32"]),
    "BF16": (body_of(with_(X, datatype="BF16")), ["'x'", "BF16", "not supported"]),
    "negative dimension": (body_of(with_(X, shape=[-1, 3])), ["'x'", "negative"]),
    "absurd shape": (body_of(with_(X, shape=[0, 2**50, 2**50], data=[])), ["'x'", "too large"]),
    "INT8 out of range": (body_of(with_(X, datatype="INT8", data=[1, 2, 300])), ["'x'", "INT8"]),
    "UINT64 out of range": (body_of(with_(X, datatype="UINT64", data=[1, 2, 2**64])), ["'x'", "UINT64"]),
    "INT32 given floats": (body_of(with_(X, datatype="INT32", data=[1.0, 2, 3])), ["'x'", "integers"]),
    "FP16 out of range": (body_of(with_(X, datatype="FP16", data=[1, 2, 70000])), ["'x'", "FP16"]),
    "BOOL given ints": (body_of(with_(X, datatype="BOOL", data=[1, 0, 1])), ["'x'", "true/false"]),
    "binary BOOL not 0/1": (body_of(with_(X, datatype="BOOL", data=None, parameters={"binary_data_size": 3}), binary=b"\0\1\2"), ["'x'", "0 or 1"]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_bad_requests_raise_invalid_input(case):
    """Each malformed or mismatched request raises InvalidInput naming what is wrong."""
    (body, header_length), needles = ERRORS[case]
    with pytest.raises(InvalidInput) as err:
        decode_request(body, header_length, SIG)
    for needle in needles:
        assert needle in err.value.message
    assert err.value.field


@pytest.mark.parametrize("case", list(NO_SIGNATURE_ERRORS), ids=list(NO_SIGNATURE_ERRORS))
def test_bad_requests_without_signature_raise_invalid_input(case):
    """Intrinsic problems are caught even without a signature to check against."""
    (body, header_length), needles = NO_SIGNATURE_ERRORS[case]
    with pytest.raises(InvalidInput) as err:
        decode_request(body, header_length)
    for needle in needles:
        assert needle in err.value.message


def test_valid_baseline_of_error_cases_decodes():
    """The unmodified inputs the error cases start from decode cleanly (so each error is the change)."""
    decoded = decode_request(*body_of(X, S, outputs=[{"name": "y"}]), SIG)
    assert_same(decoded.inputs["x"], np.array([[1, 2, 3]], np.float32))
    assert decoded.inputs["s"].tolist() == [b"a"]
    decoded = decode_request(*binary_x(12, np.array([1, 2, 3], "<f4").tobytes()), SIG)
    assert_same(decoded.inputs["x"], np.array([[1, 2, 3]], np.float32))


def test_validate_checks_decoded_arrays():
    """validate() applies the signature to already decoded arrays and requested outputs."""
    req = decode_request(*body_of(X, S))
    codec.validate(req, SIG)
    req.inputs["x"] = req.inputs["x"].astype(np.float64)
    with pytest.raises(InvalidInput, match=r"'x'.*FP64.*FP32"):
        codec.validate(req, SIG)
    req = decode_request(*body_of(X, S, outputs=[{"name": "nope"}]))
    with pytest.raises(InvalidInput, match="'nope'"):
        codec.validate(req, SIG)
    zero_dim = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 3]}, SIG["inputs"][1]], "outputs": []}
    with pytest.raises(InvalidInput, match=r"'x'.*\[0, 3\]"):
        codec.validate(decode_request(*body_of(X, S)), zero_dim)


# -- fuzzing ------------------------------------------------------------------------------------


def decode_or_invalid(body: bytes, header_length) -> None:
    """Decode; InvalidInput is the only acceptable failure (anything else fails the test)."""
    try:
        decode_request(body, header_length, SIG)
    except InvalidInput:
        pass


VALID_BINARY, VALID_LENGTH = body_of(
    with_(X, data=None, parameters={"binary_data_size": 12}),
    with_(S, shape=[2], data=None, parameters={"binary_data_size": 11}),
    binary=np.arange(3, dtype="<f4").tobytes() + struct.pack("<I", 2) + b"hi" + struct.pack("<I", 1) + b"!",
    outputs=[{"name": "y", "parameters": {"binary_data": True}}],
)


def test_fuzz_baseline_is_valid():
    """The body the mutation fuzzer starts from is itself valid."""
    decoded = decode_request(VALID_BINARY, VALID_LENGTH, SIG)
    assert decoded.inputs["s"].tolist() == [b"hi", b"!"]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), header_length=st.none() | st.integers(-3, 210))
def test_fuzz_random_bytes(body, header_length):
    """Random bytes never raise anything but InvalidInput."""
    decode_or_invalid(body, header_length)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID_BINARY) - 1), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 8),
    shift=st.integers(-4, 4),
)
def test_fuzz_mutated_binary_body(edits, cut, shift):
    """Byte flips, truncation and a wrong header length on a valid body only ever raise InvalidInput."""
    body = bytearray(VALID_BINARY)
    for pos, value in edits:
        body[pos] = value
    decode_or_invalid(bytes(body[: len(body) - cut]), VALID_LENGTH + shift)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
PATHS = [
    ("id",), ("parameters",), ("parameters", "binary_data_output"), ("inputs",), ("inputs", 0), ("inputs", 0, "name"),
    ("inputs", 0, "shape"), ("inputs", 0, "shape", 0), ("inputs", 0, "shape", 1), ("inputs", 0, "datatype"),
    ("inputs", 0, "data"), ("inputs", 0, "data", 0), ("inputs", 0, "parameters"), ("inputs", 1, "parameters", "binary_data_size"),
    ("inputs", 1, "data"), ("inputs", 1, "data", 0), ("outputs",), ("outputs", 0), ("outputs", 0, "parameters", "binary_data"),
]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=JSON_VALUES, binary=st.booleans())
def test_fuzz_structured_json(path, value, binary):
    """Any JSON value in any field of a valid request only ever raises InvalidInput."""
    doc = {
        "id": "r",
        "parameters": {"binary_data_output": False},
        "inputs": [dict(X), with_(S, data=None, parameters={"binary_data_size": 5}) if binary else dict(S)],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    header = json.dumps(doc).encode()
    if binary:
        decode_or_invalid(header + struct.pack("<I", 1) + b"a", len(header))
    else:
        decode_or_invalid(header, None)
