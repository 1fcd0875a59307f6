"""Ed25519 keys (PEM files) and signatures over a manifest digest, via `cryptography`."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shepherd.bundles.format import SignatureFile
from shepherd.errors import BundleRejected, InvalidInput


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (private, mode 0600) and `<name>.pub` into `out_dir`; refuse to overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise InvalidInput(f"{p} already exists; refusing to overwrite a key", field="name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise InvalidInput(f"sign key {path}: cannot read an unencrypted PEM private key ({err})", field="sign_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"sign key {path}: not an Ed25519 key", field="sign_key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise InvalidInput(f"public key {path.name}: cannot read a PEM public key ({err})", field="trusted_key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"public key {path.name}: not an Ed25519 key", field="trusted_key")
    return key


def load_trusted(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every `*.pub` in `directory`, by key id; a missing directory trusts nothing."""
    if not directory.is_dir():
        return {}
    keys = (load_public(p) for p in sorted(directory.glob("*.pub")))
    return {key_id(k): k for k in keys}


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> SignatureFile:
    digest = hashlib.sha256(manifest_bytes).digest()
    return SignatureFile(key_id=key_id(key.public_key()), signature=base64.b64encode(key.sign(digest)).decode())


def verify(manifest_bytes: bytes, sig: SignatureFile, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check `sig` over the manifest against the trusted keys; return the signer's key id."""
    key = trusted.get(sig.key_id)
    if key is None:
        raise BundleRejected(f"manifest.sig: signed by unknown key {sig.key_id}; it is not among the trusted keys", field="manifest.sig")
    try:
        raw = base64.b64decode(sig.signature, validate=True)
        key.verify(raw, hashlib.sha256(manifest_bytes).digest())
    except (InvalidSignature, ValueError):
        raise BundleRejected(f"manifest.sig: signature does not verify with key {sig.key_id}", field="manifest.sig") from None
    return sig.key_id
