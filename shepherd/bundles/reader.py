"""Verify a bundle and extract it safely into a staging directory.

Nothing here touches the registry or the blob store: a bundle that fails any check leaves only
its staging directory behind, which the caller removes. Members are never extracted by their own
names; each is streamed to a numbered file, so no archive path can reach outside the staging dir.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shepherd.bundles import graph, signing
from shepherd.bundles.format import MANIFEST, METADATA, MODEL, REFERENCE, REQUIRED, SIGNATURE, Manifest, Metadata, SignatureFile
from shepherd.bundles.reference import check_reference
from shepherd.errors import BundleRejected, PayloadTooLarge

log = structlog.get_logger()
SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\Z")
MAX_CONTROL_FILE = 1024 * 1024
CHUNK = 1024 * 1024


class Limits(msgspec.Struct, kw_only=True):
    max_bundle_bytes: int
    max_member_bytes: int
    max_members: int


class StagedFile(msgspec.Struct, kw_only=True):
    path: str
    staged: str
    sha256: str
    size: int


class VerifiedBundle(msgspec.Struct, kw_only=True):
    manifest: Manifest
    digest: str
    """sha256 of manifest.json: the bundle's identity."""
    signed_by: str | None
    metadata: Metadata
    files: dict[str, StagedFile]


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "a symlink"
    if m.islnk():
        return "a hard link"
    if m.isdir():
        return "a directory"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    if m.issparse():
        return "a sparse file"
    return f"an unsupported member type {m.type!r}"


def check_member_name(name: str) -> None:
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise BundleRejected(f"member {name!r}: absolute paths are not allowed", field=name)
    if ".." in name.replace("\\", "/").split("/"):
        raise BundleRejected(f"member {name!r}: '..' path components are not allowed", field=name)
    if not SAFE_PATH.match(name) or len(name) > 255:
        raise BundleRejected(f"member {name!r}: unsafe path (allowed: relative paths of letters, digits, '_', '.', '-')", field=name)


def read_bundle(
    path: Path,
    staging: Path,
    *,
    limits: Limits,
    trusted: dict[str, Ed25519PublicKey],
    require_signature: bool,
) -> VerifiedBundle:
    """Check every rule of packaging/BUNDLE.md; return the verified content staged under `staging`."""
    size = path.stat().st_size
    if size > limits.max_bundle_bytes:
        raise PayloadTooLarge(f"bundle is {size} bytes; the limit (bundles.max_bundle_bytes) is {limits.max_bundle_bytes}", field="bundle")
    staging.mkdir(parents=True, exist_ok=True)
    control: dict[str, bytes] = {}
    staged: dict[str, StagedFile] = {}
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            count = 0
            while True:
                member = tar.next()
                if member is None:
                    break
                count += 1
                name = member.name
                if count > limits.max_members:
                    raise BundleRejected(f"bundle has more than {limits.max_members} members (bundles.max_members)", field="bundle")
                check_member_name(name)
                if not member.isreg() or member.issparse():
                    raise BundleRejected(f"member {name!r} is {_kind(member)}; only regular files are allowed", field=name)
                if name in seen:
                    raise BundleRejected(f"member {name!r} appears twice", field=name)
                seen.add(name)
                limit = MAX_CONTROL_FILE if name in (MANIFEST, SIGNATURE) else limits.max_member_bytes
                if member.size > limit:
                    raise PayloadTooLarge(f"member {name!r} is {member.size} bytes; the limit is {limit}", field=name)
                src = tar.extractfile(member)
                assert src is not None
                h = hashlib.sha256()
                got = 0
                try:
                    if name in (MANIFEST, SIGNATURE):
                        data = src.read()
                        got = len(data)
                        control[name] = data
                    else:
                        dest = staging / f"{count:05d}"
                        with open(dest, "wb") as out:
                            while chunk := src.read(CHUNK):
                                h.update(chunk)
                                got += len(chunk)
                                out.write(chunk)
                        staged[name] = StagedFile(path=name, staged=str(dest), sha256=h.hexdigest(), size=got)
                except (tarfile.ReadError, EOFError):
                    got = -1
                if got != member.size:
                    raise BundleRejected(f"archive is truncated: member {name!r} ends before its {member.size} bytes", field=name)
    except (tarfile.ReadError, EOFError) as err:
        raise BundleRejected(f"not a valid or complete tar archive ({err})", field="bundle") from None

    if MANIFEST not in control:
        raise BundleRejected("bundle has no manifest.json", field=MANIFEST)
    manifest_bytes = control[MANIFEST]
    try:
        manifest = msgspec.json.decode(manifest_bytes, type=Manifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise BundleRejected(f"manifest.json: {err}", field=MANIFEST) from None
    listed: dict[str, tuple[str, int]] = {}
    for f in manifest.files:
        check_member_name(f.path)
        if f.path in (MANIFEST, SIGNATURE):
            raise BundleRejected(f"manifest.json: must not list {f.path}", field=MANIFEST)
        if f.path in listed:
            raise BundleRejected(f"manifest.json: lists {f.path!r} twice", field=MANIFEST)
        listed[f.path] = (f.sha256, f.size)
    for required in REQUIRED:
        if required not in listed:
            raise BundleRejected(f"manifest.json: does not list the required file {required}", field=MANIFEST)
    for name in staged:
        if name not in listed:
            raise BundleRejected(f"member {name!r} is not listed in manifest.json", field=name)
    for name, (sha, fsize) in listed.items():
        got = staged.get(name)
        if got is None:
            raise BundleRejected(f"manifest.json lists {name!r} but the archive does not contain it", field=name)
        if got.size != fsize:
            raise BundleRejected(f"member {name!r} is {got.size} bytes but the manifest says {fsize}", field=name)
        if got.sha256 != sha:
            raise BundleRejected(f"member {name!r}: sha256 does not match the manifest (file altered)", field=name)

    signed_by = None
    if SIGNATURE in control:
        try:
            sig = msgspec.json.decode(control[SIGNATURE], type=SignatureFile)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise BundleRejected(f"manifest.sig: {err}", field=SIGNATURE) from None
        if sig.key_id in trusted or require_signature:
            signed_by = signing.verify(manifest_bytes, sig, trusted)
        else:
            log.warning("bundle_signature_unverified", key_id=sig.key_id, reason="unknown key; signatures not required")
    elif require_signature:
        raise BundleRejected(
            "bundle is unsigned and signatures are required (bundles.require_signature); sign it with 'shepherd bundle create --sign-key'",
            field=SIGNATURE,
        )

    try:
        metadata = msgspec.json.decode(Path(staged[METADATA].staged).read_bytes(), type=Metadata)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise BundleRejected(f"metadata.json: {err}", field=METADATA) from None
    if metadata.name != manifest.model:
        raise BundleRejected(f"metadata.json name {metadata.name!r} differs from manifest model {manifest.model!r}", field="name")
    graph_sig = graph.read_signature(Path(staged[MODEL].staged))
    metadata.signature = graph.check_declared(metadata.signature, graph_sig) if metadata.signature else graph_sig
    if REFERENCE in staged:
        check_reference(Path(staged[REFERENCE].staged))
    return VerifiedBundle(
        manifest=manifest,
        digest=hashlib.sha256(manifest_bytes).hexdigest(),
        signed_by=signed_by,
        metadata=metadata,
        files=staged,
    )
