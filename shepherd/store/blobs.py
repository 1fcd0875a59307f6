"""Content-addressed files: `blobs/ab/abcdef...` named by sha256, written atomically.

A blob is written to a temporary file in the same filesystem, fsynced, renamed into place, and
its directory fsynced, so a crash leaves either the whole blob or none of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

log = structlog.get_logger()
CHUNK = 1024 * 1024


def sha256_file(path: Path) -> tuple[str, int]:
    """The sha256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def empty_dir(path: Path) -> None:
    """Delete everything inside `path` (a link is removed, never followed), keeping `path` itself."""
    for p in path.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid(sha: str) -> bool:
    return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


class BlobStore:
    """Immutable files keyed by their sha256 under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not _valid(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put_file(self, src: Path, sha: str | None = None, *, move: bool = False) -> str:
        """Store the file at `src` (moved when `move`, else copied) and return its sha256.

        When `sha` is given it must match the content; a mismatch raises ValueError and stores nothing.
        """
        actual, _ = sha256_file(src)
        if sha is not None and sha != actual:
            raise ValueError(f"content of {src} does not match sha256 {sha}")
        dest = self.path(actual)
        if dest.is_file():
            if move:
                src.unlink()
            return actual
        if not dest.parent.is_dir():
            dest.parent.mkdir(exist_ok=True)
            fsync_dir(self.root)
        if move:
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            os.replace(src, dest)
        else:
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp)
            try:
                with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp_name, dest)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        os.chmod(dest, 0o444)
        fsync_dir(dest.parent)
        return actual

    def put_bytes(self, data: bytes) -> str:
        """Store `data` and return its sha256."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            return self.put_file(Path(tmp_name), move=True)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def all(self) -> Iterator[str]:
        """Every stored digest."""
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if _valid(f.name):
                        yield f.name

    def collect_garbage(self, referenced: Iterable[str]) -> list[str]:
        """Delete blobs no record refers to (left by a crash between blob write and commit), and temp files.

        Only safe while no import is in flight: the app runs it at start-up, before serving.
        """
        keep = set(referenced)
        removed = [sha for sha in self.all() if sha not in keep]
        for sha in removed:
            self.path(sha).unlink(missing_ok=True)
        for f in self.tmp.iterdir():
            f.unlink(missing_ok=True)
        if removed:
            log.warning("orphan_blobs_removed", count=len(removed))
        return removed
