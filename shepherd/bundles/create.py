"""Build a bundle: a tar of manifest.json, optional manifest.sig, metadata.json, model.onnx, reference.parquet."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from shepherd.bundles import graph, signing
from shepherd.bundles.format import MANIFEST, METADATA, MODEL, REFERENCE, SIGNATURE, Manifest, ManifestFile, Metadata
from shepherd.bundles.reference import check_reference
from shepherd.errors import InvalidInput
from shepherd.store.blobs import sha256_file


def load_metadata(path: Path) -> Metadata:
    """Read a metadata file (.toml or .json) and validate it, naming the bad field."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InvalidInput(f"metadata file {path}: {err.strerror}", field="metadata") from None
    try:
        if path.suffix == ".toml":
            return msgspec.convert(tomllib.loads(raw.decode()), Metadata)
        return msgspec.json.decode(raw, type=Metadata)
    except (msgspec.ValidationError, msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"metadata file {path}: {err}", field="metadata") from None


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    if path is not None:
        info.size = path.stat().st_size
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        assert data is not None
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def create(
    *,
    model: Path,
    metadata: Path,
    out: Path,
    reference: Path | None = None,
    sign_key: Path | None = None,
) -> Manifest:
    """Write a bundle to `out` atomically and return its manifest."""
    meta = load_metadata(metadata)
    if not model.is_file():
        raise InvalidInput(f"model file {model} does not exist", field="model")
    graph_sig = graph.read_signature(model)
    meta.signature = graph.check_declared(meta.signature, graph_sig) if meta.signature else graph_sig
    if reference is not None:
        if not reference.is_file():
            raise InvalidInput(f"reference file {reference} does not exist", field="reference")
        check_reference(reference)
    key = signing.load_private(sign_key) if sign_key else None

    meta_bytes = msgspec.json.format(msgspec.json.encode(meta), indent=2)
    sources: list[tuple[str, bytes | None, Path | None]] = [(METADATA, meta_bytes, None), (MODEL, None, model)]
    if reference is not None:
        sources.append((REFERENCE, None, reference))
    files = []
    for name, data, path in sources:
        if path is not None:
            sha, size = sha256_file(path)
        else:
            assert data is not None
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        files.append(ManifestFile(path=name, sha256=sha, size=size))
    manifest = Manifest(model=meta.name, created_at=datetime.now(UTC).isoformat(timespec="seconds"), files=files)
    manifest_bytes = msgspec.json.format(msgspec.json.encode(manifest), indent=2)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, manifest_bytes)
            if key is not None:
                _add(tar, SIGNATURE, msgspec.json.encode(signing.sign(manifest_bytes, key)))
            for name, data, path in sources:
                _add(tar, name, data, path)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest
