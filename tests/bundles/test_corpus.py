"""A corpus of malicious and broken bundles: each is refused through the real HTTP route with a 4xx naming
the offending member or field, and leaves the registry, the blob store and data/tmp exactly as they were."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from shepherd import config as config_mod
from shepherd.app import create_app
from shepherd.appliance import Appliance
from shepherd.bundles import signing
from shepherd.bundles.format import MANIFEST, METADATA, MODEL, REFERENCE, SIGNATURE, Manifest, ManifestFile
from shepherd.bundles.reader import Limits, read_bundle
from shepherd.errors import BundleRejected, InvalidInput, PayloadTooLarge
from tests.conftest import bearer, snapshot, write_model

URL = "/api/v1/bundles"


# ------------------------------------------------------------------------------ building blocks
def member(name: str, data: bytes = b"", *, type: bytes = tarfile.REGTYPE, linkname: str = "", pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.mode = 0o644
    info.mtime = 0
    info.size = len(data) if type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def pack(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A plain tar of exactly these entries, in this order, names written verbatim."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def encode_manifest(files: dict[str, bytes], model: str = "tiny", **extra: Any) -> bytes:
    """A manifest.json listing `files` with their true sha256 and size (plus raw extra top-level keys)."""
    manifest = Manifest(
        model=model,
        created_at="2024-01-01T00:00:00+00:00",
        files=[ManifestFile(path=n, sha256=hashlib.sha256(d).hexdigest(), size=len(d)) for n, d in files.items()],
    )
    raw = msgspec.to_builtins(manifest) | extra
    return msgspec.json.format(msgspec.json.encode(raw), indent=2)


def sig_bytes(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    return msgspec.json.encode(signing.sign(manifest_bytes, key))


@dataclass
class Kit:
    """The parts of one valid signed bundle, and keys to re-sign crafted manifests with."""

    raw: bytes
    files: dict[str, bytes]
    manifest: bytes
    key: Ed25519PrivateKey
    rogue: Ed25519PrivateKey

    def metadata(self) -> dict[str, Any]:
        return msgspec.json.decode(self.files[METADATA])

    def with_metadata(self, **changes: Any) -> dict[str, bytes]:
        return self.files | {METADATA: msgspec.json.encode(self.metadata() | changes)}

    def signed(
        self,
        files: dict[str, bytes] | None = None,
        *,
        manifest: bytes | None = None,
        key: Ed25519PrivateKey | None | str = "trusted",
        sig: bytes | None = None,
        extra: list[tuple[tarfile.TarInfo, bytes]] = (),  # type: ignore[assignment]
        listed: dict[str, bytes] | None = None,
    ) -> bytes:
        """A bundle of `files` whose manifest (crafted from `listed`, default `files`) is validly signed."""
        files = self.files if files is None else files
        if manifest is None:
            manifest = encode_manifest(files if listed is None else listed)
        entries = [member(MANIFEST, manifest)]
        if sig is None and key is not None:
            sig = sig_bytes(manifest, self.key if key == "trusted" else key)  # type: ignore[arg-type]
        if sig is not None:
            entries.append(member(SIGNATURE, sig))
        entries += [member(n, d) for n, d in files.items()]
        return pack(entries + list(extra))

    def members(self) -> list[tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.raw), mode="r:") as tar:
            return tar.getmembers()


@pytest.fixture
def kit(make_bundle: Callable[..., Path], keys: Any) -> Kit:
    """The members of a valid signed bundle of model 'tiny', to rewrite into broken ones."""
    path = make_bundle("tiny", bias=7.0)
    raw = path.read_bytes()
    with tarfile.open(path, mode="r:") as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    files = {METADATA: contents[METADATA], MODEL: contents[MODEL]}
    return Kit(
        raw=raw,
        files=files,
        manifest=contents[MANIFEST],
        key=signing.load_private(keys.private),
        rogue=signing.load_private(keys.rogue),
    )


# ----------------------------------------------------------------------------------- the cases
def _tiny_model_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return write_model(Path(d) / "m.onnx").read_bytes()


_TINY = _tiny_model_bytes()


@dataclass
class Case:
    id: str
    build: Callable[[Kit], bytes]
    field: str
    message: str
    status: int = 400
    code: str = "BUNDLE_REJECTED"
    limits: dict[str, int] = field(default_factory=dict)
    http_only: bool = False
    chunked: bool = False
    """Send the body in chunks without a Content-Length (only the streaming limit check can catch it)."""
    names_field: bool = True
    """Whether the message text itself (not only `field`) names the member/field."""
    marks: tuple = ()


def _tampered(k: Kit) -> bytes:
    model = bytearray(k.files[MODEL])
    model[-1] ^= 0xFF
    assert len(model) == len(k.files[MODEL])
    # The original, validly signed manifest.json and manifest.sig; only model.onnx's bytes differ.
    with tarfile.open(fileobj=io.BytesIO(k.raw), mode="r:") as tar:
        sig = tar.extractfile(SIGNATURE).read()  # type: ignore[union-attr]
    return k.signed(k.files | {MODEL: bytes(model)}, manifest=k.manifest, sig=sig)


def _forged(k: Kit) -> bytes:
    """Signed by the rogue key, but claiming the trusted key's id."""
    good = signing.sign(k.manifest, k.key)
    bad = signing.sign(k.manifest, k.rogue)
    forged = msgspec.structs.replace(bad, key_id=good.key_id)
    return k.signed(manifest=k.manifest, sig=msgspec.json.encode(forged))


def _corrupted_sig(k: Kit) -> bytes:
    good = signing.sign(k.manifest, k.key)
    raw = bytearray(base64.b64decode(good.signature))
    raw[0] ^= 0x01
    corrupt = msgspec.structs.replace(good, signature=base64.b64encode(bytes(raw)).decode())
    return k.signed(manifest=k.manifest, sig=msgspec.json.encode(corrupt))


def _sig_for_other_manifest(k: Kit) -> bytes:
    """A genuine trusted signature, but over a different manifest (the edited one lists the same files)."""
    other = encode_manifest(k.files, model="tiny") + b"\n"
    return k.signed(manifest=other, sig=sig_bytes(k.manifest, k.key))


def _truncate_in_data(k: Kit) -> bytes:
    m = next(m for m in k.members() if m.name == MODEL)
    return k.raw[: m.offset_data + m.size // 2]


def _truncate_in_header(k: Kit, name: str) -> bytes:
    m = next(m for m in k.members() if m.name == name)
    return k.raw[: m.offset + 100]


def _model_first(k: Kit) -> bytes:
    files = {MODEL: k.files[MODEL], METADATA: k.files[METADATA]}
    return k.signed(files)


def _too_many(k: Kit) -> bytes:
    files = k.files | {f"extra/f{i:03d}.txt": b"x" for i in range(70)}
    return k.signed(files)


def _bad_onnx_signature(k: Kit) -> bytes:
    declared = {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    return k.signed(k.with_metadata(signature=declared))


def _bad_onnx_shape(k: Kit) -> bytes:
    declared = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    return k.signed(k.with_metadata(signature=declared))


def _renamed_input(k: Kit) -> bytes:
    declared = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    return k.signed(k.with_metadata(signature=declared))


def _newline_name(k: Kit) -> bytes:
    files = k.with_metadata(name="tiny\n")
    return k.signed(files, manifest=encode_manifest(files, model="tiny\n"))


def _listed_twice(k: Kit) -> bytes:
    raw = msgspec.json.decode(encode_manifest(k.files))
    raw["files"].append(raw["files"][-1])
    return k.signed(manifest=msgspec.json.encode(raw))


def _onnx_bytes(mutate: Callable[[onnx.ModelProto], None]) -> bytes:
    model = onnx.load_from_string(_TINY)
    mutate(model)
    return model.SerializeToString()


def _unknown_op(k: Kit) -> bytes:
    def mutate(m: onnx.ModelProto) -> None:
        m.graph.node[0].op_type = "NoSuchOp"

    return k.signed(k.files | {MODEL: _onnx_bytes(mutate)})


def _external_data(k: Kit) -> bytes:
    """The bias initializer's data lives in a side file (also shipped and listed), not in model.onnx."""

    def mutate(m: onnx.ModelProto) -> None:
        init = m.graph.initializer[0]
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "weights.bin"

    weights = np.full(3, 1.0, dtype=np.float32).tobytes()
    return k.signed(k.files | {MODEL: _onnx_bytes(mutate), "weights.bin": weights})


CASES = [
    # --- unsafe member names and types
    Case("tar-slip", lambda k: k.signed(extra=[member("../evil", b"pwned")]), "../evil", "'..' path components are not allowed"),
    Case("tar-slip-nested", lambda k: k.signed(extra=[member("a/../../evil", b"pwned")]), "a/../../evil", "'..' path components"),
    Case("tar-slip-backslash", lambda k: k.signed(extra=[member("..\\evil", b"pwned")]), "..\\evil", "'..' path components"),
    Case("absolute-path", lambda k: k.signed(extra=[member("/etc/evil", b"pwned")]), "/etc/evil", "absolute paths are not allowed"),
    Case("windows-drive-path", lambda k: k.signed(extra=[member("C:evil", b"pwned")]), "C:evil", "absolute paths are not allowed"),
    Case(
        "pax-path-slip",
        lambda k: k.signed(extra=[member("harmless.txt", b"pwned", pax={"path": "../../evil"})]),
        "../../evil",
        "'..' path components",
    ),
    Case("unsafe-name", lambda k: k.signed(extra=[member("notes;rm -rf.txt", b"x")]), "notes;rm -rf.txt", "unsafe path"),
    Case("symlink", lambda k: k.signed(extra=[member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")]), "link", "'link' is a symlink"),
    Case("symlink-over-model", lambda k: k.signed({METADATA: k.files[METADATA]}, extra=[member(MODEL, type=tarfile.SYMTYPE, linkname="/etc/passwd")], listed=k.files), MODEL, "is a symlink"),
    Case("hard-link", lambda k: k.signed(extra=[member("hard", type=tarfile.LNKTYPE, linkname=MODEL)]), "hard", "'hard' is a hard link"),
    Case("char-device", lambda k: k.signed(extra=[member("null", type=tarfile.CHRTYPE)]), "null", "'null' is a device file"),
    Case("block-device", lambda k: k.signed(extra=[member("sda", type=tarfile.BLKTYPE)]), "sda", "'sda' is a device file"),
    Case("fifo", lambda k: k.signed(extra=[member("pipe", type=tarfile.FIFOTYPE)]), "pipe", "'pipe' is a FIFO"),
    Case("directory", lambda k: k.signed(extra=[member("models", type=tarfile.DIRTYPE)]), "models", "'models' is a directory"),
    Case("duplicate-member", lambda k: k.signed(extra=[member(MODEL, k.files[MODEL])]), MODEL, "'model.onnx' appears twice"),
    Case("duplicate-manifest", lambda k: k.signed(extra=[member(MANIFEST, k.manifest)]), MANIFEST, "'manifest.json' appears twice"),
    Case("backslash-name", lambda k: k.signed(extra=[member("dir\\file.txt", b"x")]), "dir\\file.txt", "unsafe path"),
    Case("gnu-sparse-member", lambda k: k.signed(extra=[member("holes.bin", type=tarfile.GNUTYPE_SPARSE)]), "holes.bin", "'holes.bin' is a sparse file"),
    Case(
        "pax-sparse-member",
        lambda k: k.signed(extra=[member("holes.bin", b"abcd", pax={"GNU.sparse.map": "0,4", "GNU.sparse.size": "4"})]),
        "holes.bin",
        "'holes.bin' is a sparse file",
    ),
    # --- integrity and signatures
    Case("tampered-file", _tampered, MODEL, "'model.onnx': sha256 does not match the manifest"),
    Case("size-mismatch", lambda k: k.signed(listed=k.files | {MODEL: k.files[MODEL] + b"\0"}), MODEL, "bytes but the manifest says"),
    Case("forged-signature", _forged, SIGNATURE, "signature does not verify with key"),
    Case("corrupted-signature", _corrupted_sig, SIGNATURE, "signature does not verify with key"),
    Case(
        "signature-not-base64",
        lambda k: k.signed(manifest=k.manifest, sig=msgspec.json.encode(msgspec.structs.replace(signing.sign(k.manifest, k.key), signature="!!!not base64!!!"))),
        SIGNATURE,
        "signature does not verify",
    ),
    Case("signature-of-other-manifest", _sig_for_other_manifest, SIGNATURE, "signature does not verify"),
    Case("unknown-key", lambda k: k.signed(key=k.rogue), SIGNATURE, "signed by unknown key"),
    Case("unsigned", lambda k: k.signed(key=None), SIGNATURE, "bundle is unsigned and signatures are required", names_field=False),
    Case("signature-not-json", lambda k: k.signed(sig=b"ed25519:deadbeef"), SIGNATURE, "manifest.sig: "),
    Case("signature-unknown-field", lambda k: k.signed(sig=b'{"key_id":"0123456789abcdef","signature":"AA==","by":"me"}'), SIGNATURE, "unknown field `by`"),
    # --- manifest vs archive
    Case("missing-listed-file", lambda k: k.signed(listed=k.files | {REFERENCE: b"PAR1"}), REFERENCE, "lists 'reference.parquet' but the archive does not contain it"),
    Case("missing-model", lambda k: k.signed({METADATA: k.files[METADATA]}, listed=k.files), MODEL, "lists 'model.onnx' but the archive does not contain it"),
    Case("extra-unlisted-file", lambda k: k.signed(extra=[member("notes.txt", b"hello")]), "notes.txt", "'notes.txt' is not listed in manifest.json"),
    Case("manifest-lists-unsafe-path", lambda k: k.signed(listed=k.files | {"../evil": b"x"}), "../evil", "'..' path components"),
    Case("manifest-lists-signature", lambda k: k.signed(listed=k.files | {SIGNATURE: b"x"}), MANIFEST, "must not list manifest.sig"),
    Case("manifest-lists-file-twice", _listed_twice, MANIFEST, "lists 'model.onnx' twice"),
    Case("manifest-lacks-metadata", lambda k: k.signed({MODEL: k.files[MODEL]}), MANIFEST, "does not list the required file metadata.json"),
    Case("no-manifest", lambda k: pack([member(n, d) for n, d in k.files.items()]), MANIFEST, "bundle has no manifest.json"),
    Case("manifest-not-json", lambda k: k.signed(manifest=b"{not json"), MANIFEST, "manifest.json: "),
    Case("manifest-unknown-field", lambda k: k.signed(manifest=encode_manifest(k.files, comment="hi")), MANIFEST, "unknown field `comment`"),
    Case("manifest-wrong-format", lambda k: k.signed(manifest=encode_manifest(k.files, format="shepherd-bundle/2")), MANIFEST, "`$.format`"),
    Case(
        "manifest-bad-sha256",
        lambda k: k.signed(manifest=k.manifest.replace(hashlib.sha256(k.files[MODEL]).hexdigest().encode(), b"XYZ")),
        MANIFEST,
        "`$.files[1].sha256`",
    ),
    # --- truncation and framing
    Case("truncated-in-model-data", _truncate_in_data, MODEL, "archive is truncated: member 'model.onnx'"),
    Case("truncated-in-model-header", lambda k: _truncate_in_header(k, MODEL), MODEL, "lists 'model.onnx' but the archive does not contain it"),
    Case("truncated-in-first-header", lambda k: k.raw[:100], "bundle", "not a valid or complete tar archive"),
    Case("non-tar-body", lambda k: b"this is not a tar archive\n" * 50, "bundle", "not a valid or complete tar archive"),
    Case("gzip-compressed-tar", lambda k: gzip.compress(k.raw), "bundle", "not a valid or complete tar archive"),
    Case("empty-body", lambda k: b"", "bundle", "empty request body", code="INVALID_PARAMETER_VALUE", http_only=True),
    Case("zero-blocks-only", lambda k: b"\0" * 10240, MANIFEST, "bundle has no manifest.json"),
    # --- size limits
    Case("oversized-member", _model_first, MODEL, "'model.onnx' is", status=413, code="PAYLOAD_TOO_LARGE", limits={"max_member_bytes": -1}),
    Case("oversized-manifest", lambda k: k.signed(manifest=k.manifest + b" " * (1024 * 1024)), MANIFEST, "the limit is 1048576", status=413, code="PAYLOAD_TOO_LARGE"),
    Case("too-many-members", _too_many, "bundle", "bundle has more than 64 members (bundles.max_members)"),
    Case("too-many-members-low-limit", lambda k: k.raw, "bundle", "more than 3 members", limits={"max_members": 3}),
    Case("body-over-max-bundle-bytes", lambda k: k.raw, "bundle", "limit (bundles.max_bundle_bytes)", status=413, code="PAYLOAD_TOO_LARGE", limits={"max_bundle_bytes": -1}),
    Case(
        "chunked-body-over-max-bundle-bytes",
        lambda k: k.raw,
        "bundle",
        "exceeds the limit (bundles.max_bundle_bytes)",
        status=413,
        code="PAYLOAD_TOO_LARGE",
        limits={"max_bundle_bytes": -1},
        http_only=True,
        chunked=True,
    ),
    # --- content checks
    Case("metadata-not-json", lambda k: k.signed(k.files | {METADATA: b"name = 'tiny'"}), METADATA, "metadata.json: "),
    Case("metadata-unknown-field", lambda k: k.signed(k.with_metadata(owner="me")), METADATA, "unknown field `owner`"),
    Case("metadata-name-differs", lambda k: k.signed(k.with_metadata(name="other")), "name", "metadata.json name 'other' differs from manifest model 'tiny'"),
    Case("model-not-onnx", lambda k: k.signed(k.files | {MODEL: b"not an onnx model at all"}), MODEL, "model.onnx: not a valid ONNX model"),
    Case("signature-wrong-datatype", _bad_onnx_signature, "signature.inputs.x", "datatype INT64 but the ONNX graph says FP32"),
    Case("signature-wrong-shape", _bad_onnx_shape, "signature.inputs.x", "does not fit the ONNX graph's"),
    Case("signature-wrong-input-name", _renamed_input, "signature.inputs", "['features'] do not match the ONNX graph's ['x']"),
    Case("reference-not-parquet", lambda k: k.signed(k.files | {REFERENCE: b"a,b,c\n1,2,3\n"}), REFERENCE, "not a readable Parquet file"),
    Case("model-onnx-empty", lambda k: k.signed(k.with_metadata(signature=None) | {MODEL: b""}), MODEL, "model.onnx: contains no graph"),
    Case("model-onnx-fails-checker", _unknown_op, MODEL, "model.onnx: fails the ONNX checker"),
    Case("model-external-data", _external_data, MODEL, "model.onnx: "),
    # --- names with a trailing newline ('$' would match before it)
    Case("model-name-trailing-newline", _newline_name, MANIFEST, "`$.model`"),
    Case("member-name-trailing-newline", lambda k: k.signed(k.files | {"notes.txt\n": b"x"}), "notes.txt\n", "unsafe path"),
]


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def _limits_for(kit: Kit, case: Case, base: Any) -> Any:
    """Resolve -1 in a case's limits to 'just below what this kit needs'."""
    changes = {}
    for name, value in case.limits.items():
        if value == -1 and name == "max_member_bytes":
            value = len(kit.files[MODEL]) - 1
        elif value == -1 and name == "max_bundle_bytes":
            value = len(kit.raw) - 1
        changes[name] = value
    return msgspec.structs.replace(base, **changes)


# ----------------------------------------------------------------------------------- the tests
@pytest.fixture
def seeded(api: TestClient, tokens: dict[str, str], make_bundle: Callable[..., Path], config: config_mod.Config) -> dict[str, object]:
    """A registry holding one imported version; returns its snapshot."""
    r = api.post(URL, content=make_bundle("seed").read_bytes(), headers=bearer(tokens["operator"]))
    assert r.status_code == 201, r.text
    return snapshot(config.data_dir)


@pytest.mark.parametrize("case", _params(CASES))
def test_corpus_rejected_over_http(
    case: Case,
    kit: Kit,
    seeded: dict[str, object],
    api: TestClient,
    tokens: dict[str, str],
    appliance: Appliance,
    config: config_mod.Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each broken bundle gets a 4xx whose JSON error names the offending member/field, and changes nothing on disk."""
    if case.limits:  # the importer reads its limits from [bundles] at each use, as a reload changes them
        limits = _limits_for(kit, case, appliance.importer.limits)
        for name in ("max_bundle_bytes", "max_member_bytes", "max_members"):
            monkeypatch.setattr(appliance.config.bundles, name, getattr(limits, name))
    body = case.build(kit)
    headers = bearer(tokens["operator"]) | {"Content-Type": "application/x-tar"}
    if case.chunked:
        content: Any = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
    else:
        content = body
    r = api.post(URL, content=content, headers=headers)
    assert r.status_code == case.status, r.text
    err = r.json()
    assert err["code"] == case.code
    assert err["field"] == case.field
    assert case.message in err["error"]
    if case.names_field and case.field != "bundle":
        assert case.field in err["error"] or repr(case.field) in err["error"], "the message itself names the offending member"
    assert snapshot(config.data_dir) == seeded


@pytest.mark.parametrize("case", _params([c for c in CASES if not c.http_only]))
def test_corpus_rejected_by_reader(case: Case, kit: Kit, keys: Any, config: config_mod.Config, tmp_path: Path) -> None:
    """read_bundle itself raises PayloadTooLarge (size limits) or BundleRejected naming the same field for each case."""
    path = tmp_path / "case.shb"
    path.write_bytes(case.build(kit))
    b = config.bundles
    base = Limits(max_bundle_bytes=b.max_bundle_bytes, max_member_bytes=b.max_member_bytes, max_members=b.max_members)
    limits = _limits_for(kit, case, base)
    expected = PayloadTooLarge if case.status == 413 else BundleRejected
    with pytest.raises(InvalidInput) as info:
        read_bundle(path, tmp_path / "stage", limits=limits, trusted=signing.load_trusted(keys.trusted_dir), require_signature=True)
    assert type(info.value) is expected
    assert info.value.field == case.field
    assert case.message in info.value.message


def test_error_classes_relation() -> None:
    """BundleRejected and PayloadTooLarge are both InvalidInput (400 family) but neither is the other; only the latter maps to 413."""
    assert issubclass(BundleRejected, InvalidInput) and issubclass(PayloadTooLarge, InvalidInput)
    assert not issubclass(PayloadTooLarge, BundleRejected) and not issubclass(BundleRejected, PayloadTooLarge)
    assert (BundleRejected.status, PayloadTooLarge.status) == (400, 413)


def test_rejection_requires_operator(kit: Kit, seeded: dict[str, object], api: TestClient, tokens: dict[str, str], config: config_mod.Config) -> None:
    """A viewer cannot upload a bundle at all (403), and the attempt changes nothing."""
    r = api.post(URL, content=kit.raw, headers=bearer(tokens["viewer"]))
    assert r.status_code == 403, r.text
    assert snapshot(config.data_dir) == seeded


def test_valid_kit_bundle_is_accepted(kit: Kit, seeded: dict[str, object], api: TestClient, tokens: dict[str, str]) -> None:
    """Control: the kit's own re-packed, re-signed bundle is accepted, so each corpus failure is due to its one defect."""
    r = api.post(URL, content=kit.signed(), headers=bearer(tokens["operator"]))
    assert r.status_code == 201, r.text
    assert r.json()["version"]["model"] == "tiny"


# ------------------------------------------------------------------------- require_signature=false
@pytest.fixture
def lax_api(tmp_path: Path, keys: Any) -> Iterator[tuple[TestClient, str, config_mod.Config]]:
    """A second appliance with bundles.require_signature = false, and an operator token for it."""
    from shepherd.auth import create_token

    cfg = config_mod.parse(
        {
            "storage": {"data_dir": str(tmp_path / "lax-data")},
            "bundles": {"trusted_keys_dir": str(keys.trusted_dir), "require_signature": False},
            "auth": {"token_cache_seconds": 0},
        }
    )
    appl = Appliance(cfg)
    appl.start()
    try:
        token = create_token(appl.db, role="operator", name="lax", actor="test")[0]
        with TestClient(create_app(cfg, appliance=appl)) as client:
            yield client, token, cfg
    finally:
        appl.close()


def test_unsigned_accepted_when_signatures_not_required(lax_api: tuple[TestClient, str, config_mod.Config], kit: Kit) -> None:
    """With require_signature=false an unsigned bundle is imported and recorded as signed by nobody."""
    client, token, _ = lax_api
    r = client.post(URL, content=kit.signed(key=None), headers=bearer(token))
    assert r.status_code == 201, r.text
    assert r.json()["version"]["signed_by"] is None


def test_unknown_key_accepted_unverified_when_signatures_not_required(lax_api: tuple[TestClient, str, config_mod.Config], kit: Kit) -> None:
    """With require_signature=false a bundle signed by an untrusted key is imported, but not attributed to that key."""
    client, token, _ = lax_api
    r = client.post(URL, content=kit.signed(key=kit.rogue), headers=bearer(token))
    assert r.status_code == 201, r.text
    assert r.json()["version"]["signed_by"] is None


def test_trusted_signature_recorded_when_signatures_not_required(lax_api: tuple[TestClient, str, config_mod.Config], kit: Kit) -> None:
    """With require_signature=false a validly signed bundle still records the trusted signer's key id."""
    client, token, _ = lax_api
    r = client.post(URL, content=kit.signed(), headers=bearer(token))
    assert r.status_code == 201, r.text
    assert r.json()["version"]["signed_by"] == signing.key_id(kit.key.public_key())


@pytest.mark.parametrize("build", [_forged, _corrupted_sig, _sig_for_other_manifest], ids=["forged", "corrupted", "other-manifest"])
def test_bad_trusted_signature_rejected_when_signatures_not_required(
    lax_api: tuple[TestClient, str, config_mod.Config], kit: Kit, build: Callable[[Kit], bytes]
) -> None:
    """With require_signature=false a signature claiming a trusted key that fails to verify is still refused, changing nothing."""
    client, token, cfg = lax_api
    before = snapshot(cfg.data_dir)
    r = client.post(URL, content=build(kit), headers=bearer(token))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == SIGNATURE
    assert "signature does not verify with key" in r.json()["error"]
    assert snapshot(cfg.data_dir) == before


def test_truncated_member_is_named(kit: Kit, seeded: dict[str, object], api: TestClient, tokens: dict[str, str]) -> None:
    """A bundle cut in the middle of model.onnx's data is refused with an error that names model.onnx."""
    r = api.post(URL, content=_truncate_in_data(kit), headers=bearer(tokens["operator"]))
    assert r.status_code == 400, r.text
    assert MODEL in r.json()["error"]
