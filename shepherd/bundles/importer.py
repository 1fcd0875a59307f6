"""Import a verified bundle as the next version of its model, atomically.

Order of steps, and why a SIGKILL at any point leaves a consistent registry:
1. the upload sits in `tmp/`; 2. it is verified and staged in `tmp/`; 3. each file is moved into
the blob store (atomic rename); 4. one SQLite transaction registers the version and its files.
A version exists only once step 4 commits, and then all its blobs exist. An import that fails
(a bad file, a full disk, a database error) deletes the blobs it wrote before it re-raises, unless
another import in flight holds them or a committed record refers to them. Blobs written by an
import that died before step 4 are referenced by nothing; `recover()` at start-up deletes them
and everything under `tmp/`.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path

import anyio
import msgspec
import structlog

from shepherd.bundles import signing
from shepherd.bundles.reader import Limits, VerifiedBundle, read_bundle
from shepherd.config import Config
from shepherd.store import registry
from shepherd.store.blobs import BlobStore, empty_dir
from shepherd.store.sqlite import Database

log = structlog.get_logger()
IMPORT_CONCURRENCY = 2


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named step when SHEPHERD_CRASH_AT names it."""
    if os.environ.get("SHEPHERD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def limits_of(config: Config) -> Limits:
    b = config.bundles
    return Limits(max_bundle_bytes=b.max_bundle_bytes, max_member_bytes=b.max_member_bytes, max_members=b.max_members)


def verify_bundle(
    config: Config, path: Path, staging: Path, trusted_keys_dir: Path | None = None, limits: Limits | None = None
) -> VerifiedBundle:
    """Every import check of `config` on the bundle at `path`, staged under `staging`; changes nothing else.

    Keys are re-read on every call, so adding or removing a *.pub needs no restart.
    """
    trusted = signing.load_trusted(trusted_keys_dir or Path(config.bundles.trusted_keys_dir))
    return read_bundle(
        path, staging, limits=limits or limits_of(config), trusted=trusted, require_signature=config.bundles.require_signature
    )


class Importer:
    """Verifies, stages and registers bundles under one data directory."""

    def __init__(self, config: Config, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs
        self.config = config
        self.tmp = config.data_dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Imports hash and check up to max_bundle_bytes each: run at most this many at once.
        self.limiter = anyio.CapacityLimiter(IMPORT_CONCURRENCY)
        # Blobs that imports in flight are storing or rely on, counted per import: a failed import
        # deletes the blobs it created only when no other import in flight holds them (two bundles may
        # share a file) and no committed version refers to them. Counting and deleting happen under
        # the lock, so an import that starts meanwhile either holds the blob first or writes it anew.
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._in_flight_lock = threading.Lock()

    @property
    def limits(self) -> Limits:
        """The [bundles] limits as the config holds them now (a reload changes them in place)."""
        return limits_of(self.config)

    def new_upload_path(self) -> Path:
        """A fresh path under tmp/ for an incoming bundle."""
        return self.tmp / f"upload-{uuid.uuid4().hex}.shb"

    def verify(self, path: Path, staging: Path) -> VerifiedBundle:
        return verify_bundle(self.config, path, staging, limits=self.limits)

    def import_file(self, path: Path, *, actor: str) -> tuple[registry.VersionRecord, bool]:
        """Verify and register the bundle at `path`; (record, created). Raises BundleRejected, changing nothing."""
        staging = self.tmp / f"stage-{uuid.uuid4().hex}"
        held: list[str] = []  # blobs this import counts in _in_flight
        created: list[str] = []  # blobs this import wrote that were not stored before
        try:
            bundle = self.verify(path, staging)
            crash_point("verified")
            ordered = sorted(bundle.files.values(), key=lambda f: f.path)
            with self._in_flight_lock:
                held = [f.sha256 for f in ordered]
                self._in_flight.update(held)
            files = []
            for i, f in enumerate(ordered):
                if not self.blobs.path(f.sha256).is_file():
                    created.append(f.sha256)
                self.blobs.put_file(Path(f.staged), f.sha256, move=True)
                if i == 0:
                    crash_point("first_blob")
                files.append(registry.VersionFile(path=f.path, sha256=f.sha256, size=f.size))
            crash_point("blobs_stored")
            meta = bundle.metadata
            new = registry.NewVersion(
                model=meta.name,
                bundle_digest=bundle.digest,
                signed_by=bundle.signed_by,
                description=meta.description,
                signature=msgspec.to_builtins(meta.signature),
                metrics=meta.metrics,
                lineage=msgspec.to_builtins(meta.lineage),
                card=msgspec.to_builtins(meta.card),
                manifest=msgspec.to_builtins(bundle.manifest),
                files=files,
            )
            record, is_new = self.db.write(lambda c: registry.register_version(c, new, actor=actor))
            crash_point("committed")
        except BaseException:
            self._release(held, created)
            raise
        else:
            self._release(held, [])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "bundle_imported" if is_new else "bundle_already_imported",
            model=record.model, version=record.version, digest=bundle.digest, signed_by=bundle.signed_by, actor=actor,
        )
        return record, is_new

    def _release(self, held: list[str], created: list[str]) -> None:
        """Stop holding `held`; delete the blobs of `created` (a failed import's) that nothing else holds or refers to."""
        with self._in_flight_lock:
            self._in_flight.subtract(held)
            self._in_flight += collections.Counter()  # drop the zero counts
            doomed = [sha for sha in created if not self._in_flight[sha]]
            if doomed:
                referenced = self.db.read(registry.referenced_blobs)
                for sha in doomed:
                    if sha not in referenced:
                        self.blobs.path(sha).unlink(missing_ok=True)


def recover(db: Database, blobs: BlobStore, tmp: Path) -> None:
    """Start-up recovery after a crash: drop half-done uploads and blobs no version refers to."""
    if tmp.is_dir():
        empty_dir(tmp)
    blobs.collect_garbage(db.read(registry.referenced_blobs))
