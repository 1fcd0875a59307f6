"""The content-addressed blob store."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.store.blobs import BlobStore


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=5000))
def test_put_bytes_addresses_by_sha256(tmp_path_factory, data):
    """A blob is stored under its sha256 and reads back byte for byte."""
    store = BlobStore(tmp_path_factory.mktemp("b"))
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha).read_bytes() == data
    assert store.put_bytes(data) == sha  # idempotent
    assert list(store.all()) == [sha]
    assert list(store.tmp.iterdir()) == []


def test_wrong_digest_stores_nothing(tmp_path):
    """put_file with a sha256 that does not match the content raises and stores nothing."""
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    with pytest.raises(ValueError, match="does not match"):
        store.put_file(src, "0" * 64)
    assert list(store.all()) == []
    assert src.exists()


def test_blobs_are_read_only_files(tmp_path):
    """Stored blobs are mode 0444: content is immutable on disk too."""
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"x")
    assert store.path(sha).stat().st_mode & 0o777 == 0o444


def test_garbage_collection_keeps_referenced(tmp_path):
    """GC deletes only unreferenced blobs and temp files."""
    store = BlobStore(tmp_path / "blobs")
    keep, drop = store.put_bytes(b"keep"), store.put_bytes(b"drop")
    (store.tmp / "partial").write_bytes(b"half")
    assert store.collect_garbage({keep}) == [drop]
    assert list(store.all()) == [keep]
    assert list(store.tmp.iterdir()) == []


def test_rejects_non_digest_names(tmp_path):
    """Only sha256 hex digests name blobs, so no path can escape the store."""
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")
