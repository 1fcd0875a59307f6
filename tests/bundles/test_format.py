"""The bundle wire types, `create` -> `read_bundle`, the `shepherd bundle` CLI, and idempotent import."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
import structlog
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from shepherd import config as config_mod
from shepherd.bundles import signing
from shepherd.bundles.create import create
from shepherd.bundles.format import (
    FORMAT,
    MANIFEST,
    METADATA,
    MODEL,
    REFERENCE,
    SIGNATURE,
    Datatype,
    IOSignature,
    Lineage,
    Manifest,
    ManifestFile,
    Metadata,
    ModelCard,
    Owner,
    SignatureFile,
    TensorSpec,
)
from shepherd.bundles.reader import Limits, read_bundle
from shepherd.cli import main
from shepherd.errors import BundleRejected, InvalidInput
from tests.conftest import METADATA as METADATA_TOML
from tests.conftest import bearer, snapshot, write_model

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------- strategies
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
short_key = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
sha256 = st.text("0123456789abcdef", min_size=64, max_size=64)
model_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", fullmatch=True)
key_ids = st.text("0123456789abcdef", min_size=16, max_size=16)

manifest_files = st.builds(
    ManifestFile,
    path=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=255),
    sha256=sha256,
    size=st.integers(min_value=0, max_value=2**63 - 1),
)
manifests = st.builds(Manifest, model=model_name, created_at=text, files=st.lists(manifest_files, max_size=5))
signature_files = st.builds(SignatureFile, key_id=key_ids, signature=text)
tensors = st.builds(
    TensorSpec,
    name=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
    datatype=st.sampled_from(get_args(Datatype)),
    shape=st.lists(st.integers(min_value=-1, max_value=2**31), max_size=4),
)
io_signatures = st.builds(IOSignature, inputs=st.lists(tensors, max_size=3), outputs=st.lists(tensors, max_size=3))
cards = st.builds(
    ModelCard,
    overview=text,
    intended_use=text,
    limitations=text,
    training_data=text,
    evaluation_metrics=st.dictionaries(short_key, finite, max_size=3),
    owners=st.lists(st.builds(Owner, name=text, contact=text), max_size=2),
)
lineages = st.builds(
    Lineage,
    dataset_digest=text,
    code_revision=text,
    parent_version=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
)
metadatas = st.builds(
    Metadata,
    name=model_name,
    description=text,
    card=cards,
    lineage=lineages,
    metrics=st.dictionaries(short_key, finite, max_size=3),
    signature=st.none() | io_signatures,
)


# ----------------------------------------------------------------------------- round trips
@FAST
@given(manifests)
def test_manifest_round_trip(manifest: Manifest) -> None:
    """Any valid Manifest encodes to JSON and decodes back to an equal object."""
    assert msgspec.json.decode(msgspec.json.encode(manifest), type=Manifest) == manifest


@FAST
@given(signature_files)
def test_signature_file_round_trip(sig: SignatureFile) -> None:
    """Any valid SignatureFile encodes to JSON and decodes back to an equal object."""
    assert msgspec.json.decode(msgspec.json.encode(sig), type=SignatureFile) == sig


@FAST
@given(metadatas)
def test_metadata_round_trip(meta: Metadata) -> None:
    """Any valid Metadata (card, lineage, metrics, signature) encodes to JSON and decodes back to an equal object."""
    assert msgspec.json.decode(msgspec.json.encode(meta), type=Metadata) == meta


def test_manifest_defaults_to_format_one() -> None:
    """A manifest without `format` decodes as shepherd-bundle/1, the only format accepted."""
    m = msgspec.json.decode(b'{"model":"m","created_at":"t","files":[]}', type=Manifest)
    assert m.format == FORMAT == "shepherd-bundle/1"


# ---------------------------------------------------------------------------- invalid values
def _file(**over: Any) -> dict[str, Any]:
    return {"path": "model.onnx", "sha256": "0" * 64, "size": 1} | over


def _manifest(**over: Any) -> dict[str, Any]:
    return {"model": "m", "created_at": "t", "files": [_file()]} | over


def _tensor(**over: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [-1, 3]} | over


INVALID = [
    (Manifest, _manifest(files=[_file(sha256="ABC")]), "`$.files[0].sha256`"),
    (Manifest, _manifest(files=[_file(sha256="A" * 64)]), "`$.files[0].sha256`"),
    (Manifest, _manifest(files=[_file(sha256="0" * 64 + "\n")]), "`$.files[0].sha256`"),
    (Manifest, _manifest(files=[_file(size=-1)]), "`$.files[0].size`"),
    (Manifest, _manifest(files=[_file(), _file(path="")]), "`$.files[1].path`"),
    (Manifest, _manifest(files=[_file(mode=420)]), "unknown field `mode` - at `$.files[0]`"),
    (Manifest, _manifest(extra=1), "unknown field `extra`"),
    (Manifest, _manifest(model="-leading-dash"), "`$.model`"),
    (Manifest, _manifest(model="tiny\n"), "`$.model`"),
    (Manifest, _manifest(model="a" * 129), "`$.model`"),
    (Manifest, _manifest(format="shepherd-bundle/2"), "`$.format`"),
    (Manifest, {"model": "m", "files": []}, "missing required field `created_at`"),
    (SignatureFile, {"key_id": "XYZ", "signature": "AA=="}, "`$.key_id`"),
    (SignatureFile, {"key_id": "0123456789abcdef\n", "signature": "AA=="}, "`$.key_id`"),
    (SignatureFile, {"algorithm": "rsa", "key_id": "0123456789abcdef", "signature": "AA=="}, "`$.algorithm`"),
    (SignatureFile, {"key_id": "0123456789abcdef", "signature": "AA==", "by": "me"}, "unknown field `by`"),
    (Metadata, {"name": "m", "signature": {"inputs": [_tensor(datatype="FLOAT")], "outputs": []}}, "`$.signature.inputs[0].datatype`"),
    (Metadata, {"name": "m", "signature": {"inputs": [], "outputs": [_tensor(shape=[-2])]}}, "`$.signature.outputs[0].shape[0]`"),
    (Metadata, {"name": "m", "signature": {"inputs": [_tensor(name="")], "outputs": []}}, "`$.signature.inputs[0].name`"),
    (Metadata, {"name": "m", "lineage": {"parent_version": 0}}, "`$.lineage.parent_version`"),
    (Metadata, {"name": "m", "card": {"owners": [{"name": "a", "email": "b"}]}}, "unknown field `email` - at `$.card.owners[0]`"),
    (Metadata, {"name": "m", "metrics": {"accuracy": "high"}}, "`$.metrics[...]`"),
    (Metadata, {"name": "m", "description": "x" * 20_001}, "`$.description`"),
    (Metadata, {"name": "m", "owner": "me"}, "unknown field `owner`"),
    (Metadata, {"name": "bad name"}, "`$.name`"),
]


@pytest.mark.parametrize(("typ", "doc", "where"), INVALID, ids=[f"{t.__name__}-{i}" for i, (t, _, _) in enumerate(INVALID)])
def test_invalid_values_rejected_naming_the_field(typ: type, doc: dict[str, Any], where: str) -> None:
    """An invalid value raises msgspec.ValidationError whose message names the field's path."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(msgspec.json.encode(doc), type=typ)
    assert where in str(info.value)


@FAST
@given(st.text(max_size=80).filter(lambda s: not re.fullmatch(r"[0-9a-f]{64}", s)), st.integers(min_value=0, max_value=4))
def test_any_bad_sha256_rejected(bad: str, index: int) -> None:
    """Any string that is not 64 lowercase hex digits is refused as a file's sha256, naming that file's entry."""
    files = [_file() for _ in range(index)] + [_file(sha256=bad)]
    with pytest.raises(msgspec.ValidationError, match=re.escape(f"`$.files[{index}].sha256`")):
        msgspec.json.decode(msgspec.json.encode(_manifest(files=files)), type=Manifest)


@FAST
@given(st.integers(max_value=-1))
def test_any_negative_size_rejected(size: int) -> None:
    """Any negative file size is refused, naming `$.files[0].size`."""
    with pytest.raises(msgspec.ValidationError, match=re.escape("`$.files[0].size`")):
        msgspec.json.decode(msgspec.json.encode(_manifest(files=[_file(size=size)])), type=Manifest)


@FAST
@given(st.text(min_size=1, max_size=20).filter(lambda s: s not in {"format", "model", "created_at", "files"}))
def test_any_unknown_manifest_field_rejected(name: str) -> None:
    """Any top-level key that is not a Manifest field is refused and named in the message."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(msgspec.json.encode(_manifest() | {name: 1}), type=Manifest)
    assert "unknown field" in str(info.value)


# ------------------------------------------------------------------------- create -> read_bundle
def _sources(root: Path, *, name: str = "tiny", meta_extra: str = "") -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    model = write_model(root / "model.onnx")
    meta = root / "meta.toml"
    meta.write_text(METADATA_TOML.format(name=name, digest="0" * 64) + meta_extra)
    return model, meta


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _limits(cfg: config_mod.Config) -> Limits:
    b = cfg.bundles
    return Limits(max_bundle_bytes=b.max_bundle_bytes, max_member_bytes=b.max_member_bytes, max_members=b.max_members)


GRAPH_SIGNATURE = IOSignature(
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 3])],
)


def test_create_writes_manifest_listing_every_file(tmp_path: Path, keys: Any, make_bundle: Callable[..., Path]) -> None:
    """The manifest lists exactly metadata.json, model.onnx and reference.parquet with their true sha256 and size."""
    out = make_bundle(reference=True)
    members = _members(out)
    assert list(members)[0] == MANIFEST, "the manifest is written first"
    assert set(members) == {MANIFEST, SIGNATURE, METADATA, MODEL, REFERENCE}
    manifest = msgspec.json.decode(members[MANIFEST], type=Manifest)
    assert manifest.model == "tiny" and manifest.format == FORMAT
    assert {f.path: (f.sha256, f.size) for f in manifest.files} == {
        name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in members.items() if name not in (MANIFEST, SIGNATURE)
    }


def test_create_signature_verifies_with_trusted_key(keys: Any, make_bundle: Callable[..., Path]) -> None:
    """manifest.sig is an Ed25519 signature over the manifest's sha256 by the signer, and nothing else verifies it."""
    members = _members(make_bundle())
    sig = msgspec.json.decode(members[SIGNATURE], type=SignatureFile)
    trusted = signing.load_trusted(keys.trusted_dir)
    assert signing.verify(members[MANIFEST], sig, trusted) == sig.key_id == signing.key_id(signing.load_private(keys.private).public_key())
    with pytest.raises(BundleRejected, match="does not verify"):
        signing.verify(members[MANIFEST] + b" ", sig, trusted)


def test_create_records_graph_signature(make_bundle: Callable[..., Path]) -> None:
    """Without a declared signature, metadata.json carries the ONNX graph's: x FP32 [-1,3] -> y FP32 [-1,3]."""
    meta = msgspec.json.decode(_members(make_bundle())[METADATA], type=Metadata)
    assert meta.signature == GRAPH_SIGNATURE


def test_create_then_read_bundle_round_trip(tmp_path: Path, keys: Any, config: config_mod.Config, make_bundle: Callable[..., Path]) -> None:
    """read_bundle accepts a created bundle: same manifest, digest of manifest.json, signer, metadata and staged bytes."""
    out = make_bundle(reference=True)
    members = _members(out)
    v = read_bundle(out, tmp_path / "stage", limits=_limits(config), trusted=signing.load_trusted(keys.trusted_dir), require_signature=True)
    assert v.manifest == msgspec.json.decode(members[MANIFEST], type=Manifest)
    assert v.digest == hashlib.sha256(members[MANIFEST]).hexdigest()
    assert v.signed_by == signing.key_id(signing.load_private(keys.private).public_key())
    assert v.metadata.name == "tiny" and v.metadata.signature == GRAPH_SIGNATURE
    assert v.metadata.lineage.code_revision == "abc123" and v.metadata.metrics == {"accuracy": 0.9}
    assert set(v.files) == {METADATA, MODEL, REFERENCE}
    for name, staged in v.files.items():
        assert Path(staged.staged).read_bytes() == members[name]
        assert Path(staged.staged).parent == tmp_path / "stage", "members are staged under numbered names, never their own"


def test_create_unsigned_has_no_signature_member(make_bundle: Callable[..., Path]) -> None:
    """Without a sign key the bundle has no manifest.sig."""
    assert SIGNATURE not in _members(make_bundle(sign=False))


def test_create_keeps_more_specific_declared_signature(tmp_path: Path) -> None:
    """A declared signature that fixes a -1 graph dimension is accepted and kept as declared."""
    model, meta = _sources(
        tmp_path / "src",
        meta_extra='[signature]\ninputs = [{name = "x", datatype = "FP32", shape = [8, 3]}]\n'
        'outputs = [{name = "y", datatype = "FP32", shape = [-1, 3]}]\n',
    )
    create(model=model, metadata=meta, out=tmp_path / "out.shb")
    got = msgspec.json.decode(_members(tmp_path / "out.shb")[METADATA], type=Metadata).signature
    assert got is not None and got.inputs[0].shape == [8, 3]


@pytest.mark.parametrize(
    ("declared", "field", "message"),
    [
        (
            'inputs = [{name = "x", datatype = "INT64", shape = [-1, 3]}]\noutputs = [{name = "y", datatype = "FP32", shape = [-1, 3]}]',
            "signature.inputs.x",
            "signature.inputs.x: datatype INT64 but the ONNX graph says FP32",
        ),
        (
            'inputs = [{name = "x", datatype = "FP32", shape = [-1, 4]}]\noutputs = [{name = "y", datatype = "FP32", shape = [-1, 3]}]',
            "signature.inputs.x",
            "signature.inputs.x: shape [-1, 4] does not fit",
        ),
        (
            'inputs = [{name = "features", datatype = "FP32", shape = [-1, 3]}]\noutputs = [{name = "y", datatype = "FP32", shape = [-1, 3]}]',
            "signature.inputs",
            "['features'] do not match the ONNX graph's ['x']",
        ),
    ],
    ids=["datatype", "shape", "name"],
)
def test_create_rejects_declared_signature_disagreeing_with_graph(tmp_path: Path, declared: str, field: str, message: str) -> None:
    """A declared signature that disagrees with the graph makes create fail, naming the input, and writes no bundle."""
    model, meta = _sources(tmp_path / "src", meta_extra=f"[signature]\n{declared}\n")
    out = tmp_path / "out.shb"
    with pytest.raises(BundleRejected) as info:
        create(model=model, metadata=meta, out=out)
    assert info.value.field == field
    assert message in info.value.message
    assert not out.exists() and list(tmp_path.glob(".out.shb.*")) == []


def test_create_rejects_non_parquet_reference(tmp_path: Path) -> None:
    """A reference.parquet that is not Parquet makes create fail naming reference.parquet, and writes no bundle."""
    model, meta = _sources(tmp_path / "src")
    ref = tmp_path / "src" / "reference.parquet"
    ref.write_text("a,b,c\n1,2,3\n")
    out = tmp_path / "out.shb"
    with pytest.raises(BundleRejected) as info:
        create(model=model, metadata=meta, out=out, reference=ref)
    assert info.value.field == REFERENCE
    assert "reference.parquet: not a readable Parquet file" in info.value.message
    assert not out.exists()


def test_create_rejects_invalid_metadata_naming_field(tmp_path: Path) -> None:
    """A metadata file with a bad value makes create fail with InvalidInput naming the field path."""
    model, meta = _sources(tmp_path / "src")
    meta.write_text(meta.read_text().replace("[lineage]", "[lineage]\nparent_version = 0"))
    with pytest.raises(InvalidInput) as info:
        create(model=model, metadata=meta, out=tmp_path / "out.shb")
    assert info.value.field == "metadata"
    assert "`$.lineage.parent_version`" in info.value.message


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A CliRunner; `main` reconfigures structlog and the root logger process-wide, so both are restored after."""
    monkeypatch.delenv("SHEPHERD_CONFIG", raising=False)
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield CliRunner()
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def _cli_create(runner: CliRunner, tmp_path: Path, keys: Any, *, sign: bool = True, key: Path | None = None) -> Path:
    model, meta = _sources(tmp_path / "src")
    out = tmp_path / "cli.shb"
    args = ["bundle", "create", "--model", str(model), "--metadata", str(meta), "-o", str(out)]
    if sign:
        args += ["--sign-key", str(key or keys.private)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"{out}: tiny, 2 files, {'signed' if sign else 'UNSIGNED'}" in result.stdout
    return out


def test_cli_create_then_verify(runner: CliRunner, tmp_path: Path, keys: Any) -> None:
    """`bundle create --sign-key` writes a bundle that `bundle verify --trusted-keys` reports ok, signed by the key."""
    out = _cli_create(runner, tmp_path, keys)
    result = runner.invoke(main, ["bundle", "verify", str(out), "--trusted-keys", str(keys.trusted_dir)])
    assert result.exit_code == 0, result.output
    key_id = signing.key_id(signing.load_private(keys.private).public_key())
    assert f"{out}: ok" in result.stdout
    assert f"signed by: {key_id}" in result.stdout
    assert "model:     tiny" in result.stdout
    assert "file:      model.onnx" in result.stdout and "file:      metadata.json" in result.stdout


def test_cli_verify_tampered_bundle_fails(runner: CliRunner, tmp_path: Path, keys: Any) -> None:
    """A bundle whose model.onnx was altered after signing makes `bundle verify` exit 1 with an `error:` line naming it."""
    out = _cli_create(runner, tmp_path, keys)
    raw = bytearray(out.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r:") as tar:
        m = tar.getmember(MODEL)
    raw[m.offset_data + m.size - 1] ^= 0xFF
    out.write_bytes(bytes(raw))
    result = runner.invoke(main, ["bundle", "verify", str(out), "--trusted-keys", str(keys.trusted_dir)])
    assert result.exit_code == 1
    assert "error: member 'model.onnx': sha256 does not match the manifest" in result.stderr
    assert "ok" not in result.stdout


def test_cli_verify_untrusted_signer_fails(runner: CliRunner, tmp_path: Path, keys: Any) -> None:
    """A bundle signed by a key outside --trusted-keys makes `bundle verify` exit 1 naming the unknown key."""
    out = _cli_create(runner, tmp_path, keys, key=keys.rogue)
    result = runner.invoke(main, ["bundle", "verify", str(out), "--trusted-keys", str(keys.trusted_dir)])
    assert result.exit_code == 1
    assert re.search(r"^error: manifest\.sig: signed by unknown key [0-9a-f]{16}", result.stderr, re.M)


def test_cli_verify_unsigned_fails_by_default(runner: CliRunner, tmp_path: Path, keys: Any) -> None:
    """An unsigned bundle fails `bundle verify` under the default config (signatures required)."""
    out = _cli_create(runner, tmp_path, keys, sign=False)
    result = runner.invoke(main, ["bundle", "verify", str(out), "--trusted-keys", str(keys.trusted_dir)])
    assert result.exit_code == 1
    assert "error: bundle is unsigned and signatures are required" in result.stderr


def test_cli_create_bad_declared_signature_fails(runner: CliRunner, tmp_path: Path) -> None:
    """`bundle create` with a declared signature that disagrees with the graph exits 1 naming the input, writing nothing."""
    model, meta = _sources(
        tmp_path / "src",
        meta_extra='[signature]\ninputs = [{name = "x", datatype = "FP64", shape = [-1, 3]}]\n'
        'outputs = [{name = "y", datatype = "FP32", shape = [-1, 3]}]\n',
    )
    out = tmp_path / "cli.shb"
    result = runner.invoke(main, ["bundle", "create", "--model", str(model), "--metadata", str(meta), "-o", str(out)])
    assert result.exit_code == 1
    assert "error: signature.inputs.x: datatype FP64 but the ONNX graph says FP32" in result.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- idempotent import
def test_import_is_idempotent(
    api: TestClient, tokens: dict[str, str], make_bundle: Callable[..., Path], config: config_mod.Config
) -> None:
    """The same bundle imported twice gives 201 then 200 with the same version; different content becomes version 2."""
    headers = bearer(tokens["operator"])
    body = make_bundle("tiny", bias=1.0).read_bytes()
    first = api.post("/api/v1/bundles", content=body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True and first.json()["version"]["version"] == 1
    after_first = snapshot(config.data_dir)

    again = api.post("/api/v1/bundles", content=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["version"]["version"] == 1
    assert again.json()["version"]["bundle_digest"] == first.json()["version"]["bundle_digest"]
    assert snapshot(config.data_dir) == after_first, "a re-import changes nothing, not even the audit log"

    other = api.post("/api/v1/bundles", content=make_bundle("tiny", bias=2.0).read_bytes(), headers=headers)
    assert other.status_code == 201, other.text
    assert other.json()["created"] is True and other.json()["version"]["version"] == 2
    assert other.json()["version"]["bundle_digest"] != first.json()["version"]["bundle_digest"]



def test_a_failed_import_deletes_the_blobs_it_wrote_and_only_those(
    appliance: Any, make_bundle: Callable[..., Path], config: config_mod.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When registering fails after the files were moved into the blob store (a full disk, a
    database error), the import removes the blobs it created before it re-raises, and keeps one that
    a committed version shares: the data directory is byte for byte as before, with no start-up
    recovery needed."""
    import apsw

    from shepherd.bundles import importer as importer_mod

    v1, _ = appliance.importer.import_file(make_bundle("tiny", bias=1.0), actor="t")
    sharing = make_bundle("other", bias=1.0)
    staged = appliance.importer.verify(sharing, config.data_dir / "tmp" / "peek")
    assert {f.sha256 for f in staged.files.values()} & {f.sha256 for f in v1.files}, "the second bundle must share a blob"
    import shutil

    shutil.rmtree(config.data_dir / "tmp" / "peek")
    before = snapshot(config.data_dir)
    real = importer_mod.registry.register_version

    def full(*args: Any, **kwargs: Any) -> Any:
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(importer_mod.registry, "register_version", full)
    for bundle in (make_bundle("tiny", bias=3.0), sharing):  # new model bytes; then the same model.onnx as v1
        with pytest.raises(apsw.FullError):
            appliance.importer.import_file(bundle, actor="t")
        assert snapshot(config.data_dir) == before
    monkeypatch.setattr(importer_mod.registry, "register_version", real)
    record, created = appliance.importer.import_file(make_bundle("tiny", bias=3.0), actor="t")
    assert created and record.version == 2
    assert all(appliance.blobs.path(f.sha256).is_file() for f in record.files)
