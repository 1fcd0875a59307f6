"""Online backup and offline restore of a data directory.

A backup is a directory:
  shepherd.sqlite    SQLite's online backup API, one consistent snapshot (registry, deployments,
                     audit, tokens, alerts, tracking)
  events.duckdb      the prediction log and monitoring results: the log is flushed first, then
                     DuckDB copies the database inside one transaction (COPY FROM DATABASE)
  blobs/<aa>/<sha>   every blob the SQLite snapshot refers to (blobs are immutable, so copying
                     them after the snapshot is consistent with it)
  manifest.json      format, Shepherd version, schema version, time, and the sha256 and size of
                     every file above; written last, so a backup without it is incomplete

Backups may run at the same time, each to its own destination. A backup claims its destination
first, by creating `.backup-in-progress` there (O_EXCL), and removes that file just before it
writes the manifest: a second backup to the same place is refused, even one that checked the
directory empty at the same moment, and never writes into the first one's files. One that fails
removes what it wrote: the destination is left as it was found (missing, with the parent
directories the backup created, or empty), so the same command can be run again.

`restore` checks every file against the manifest before it writes anything, and only restores
into an empty (or missing) data directory: it assembles the copy beside the target and renames
it into place, so a failed restore leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import msgspec
import structlog

from shepherd import __version__
from shepherd.errors import Conflict, InvalidInput
from shepherd.store import registry
from shepherd.store.blobs import empty_dir
from shepherd.store.events import sql_ident, sql_literal

if TYPE_CHECKING:
    from shepherd.appliance import Appliance

log = structlog.get_logger()
FORMAT = "shepherd-backup/1"
IN_PROGRESS = ".backup-in-progress"
"""The file that claims a destination while a backup writes there (the module docstring)."""


class FileEntry(msgspec.Struct):
    path: str
    sha256: str
    size: int


class Manifest(msgspec.Struct, kw_only=True):
    format: str
    shepherd_version: str
    schema_version: int
    created_at: str
    files: list[FileEntry]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def backup(appl: Appliance, dest: Path) -> Manifest:
    """Write a consistent backup of the running appliance to `dest` (a new or empty directory)."""
    if "\0" in str(dest):
        raise InvalidInput("backup destination: a path cannot hold a NUL character", field="dest")
    try:
        dest = dest.expanduser().resolve()
        if dest.exists() and not dest.is_dir():
            raise InvalidInput(f"backup destination {dest} exists and is not a directory", field="dest")
        if dest.exists() and any(dest.iterdir()):
            _refuse_busy(dest)
            raise Conflict(f"backup destination {dest} is not empty")
        if dest == appl.config.data_dir.resolve() or appl.config.data_dir.resolve() in dest.parents:
            raise InvalidInput(f"backup destination {dest} is inside the data directory", field="dest")
        made = _missing(dest)
        dest.mkdir(parents=True, exist_ok=True)
        try:  # claim it: of two backups that both found it empty, one gets here second
            os.close(os.open(dest / IN_PROGRESS, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            _refuse_busy(dest)
        except OSError:
            _remove_empty(made)
            raise
    except OSError as err:  # a name too long, a parent that is a file, no permission
        raise InvalidInput(f"backup destination {dest}: {err.strerror or err}", field="dest") from None
    started = time.monotonic()
    try:
        manifest = _write(appl, dest)
    except BaseException:
        _remove_written(dest, made)
        raise
    log.info("backup_written", dest=str(dest), files=len(manifest.files), seconds=round(time.monotonic() - started, 3))
    return manifest


def _refuse_busy(dest: Path) -> None:
    """Conflict when another backup holds `dest` (its IN_PROGRESS file is there)."""
    if (dest / IN_PROGRESS).exists():
        raise Conflict(
            f"backup destination {dest} is being written by another backup ({IN_PROGRESS}; if no backup is "
            "running, one was killed there: remove the directory)"
        )


def _missing(dest: Path) -> list[Path]:
    """`dest` and the ancestors of it that do not exist (and a backup would create), deepest first."""
    made, p = [], dest
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    return made


def _remove_empty(made: list[Path]) -> None:
    """Remove the directories a backup created, deepest first, as long as each is empty."""
    for p in made:
        try:
            p.rmdir()
        except OSError:  # not empty (someone else's now), or gone
            return


def _remove_written(dest: Path, made: list[Path]) -> None:
    """Put `dest` back as a failed backup found it: gone, with the parents it created, if it made
    it; else empty."""
    if made:
        shutil.rmtree(dest, ignore_errors=True)
        _remove_empty(made[1:])
    else:
        empty_dir(dest)


def _write(appl: Appliance, dest: Path) -> Manifest:
    schema = appl.db.backup_to(dest / "shepherd.sqlite")
    if appl.predlog is not None:
        appl.predlog.flush()
    _copy_duckdb(appl, dest / "events.duckdb")

    snap = apsw.Connection(str(dest / "shepherd.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        shas = sorted(registry.referenced_blobs(snap))
    finally:
        snap.close()
    for sha in shas:
        target = dest / "blobs" / sha[:2] / sha
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(appl.blobs.path(sha), target)
    claim = dest / IN_PROGRESS
    files = [
        FileEntry(str(p.relative_to(dest)), _sha256(p), p.stat().st_size)
        for p in sorted(dest.rglob("*")) if p.is_file() and p != claim
    ]
    manifest = Manifest(
        format=FORMAT, shepherd_version=__version__, schema_version=schema,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files=files,
    )
    claim.unlink()  # the files are all there: nothing writes into them any more
    tmp = dest / "manifest.json.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(dest / "manifest.json")
    return manifest


def _copy_duckdb(appl: Appliance, target: Path) -> None:
    cur = appl.events.cursor()
    (name,) = cur.execute("SELECT current_database()").fetchone()
    # An attached database is the connection's, not the cursor's: a name of its own for each backup,
    # or a second backup running meanwhile fails to attach.
    alias = f"shepherd_backup_{uuid.uuid4().hex}"
    cur.execute(f"ATTACH {sql_literal(str(target))} AS {alias}")
    try:
        cur.execute(f"COPY FROM DATABASE {sql_ident(name)} TO {alias}")
    finally:
        cur.execute(f"DETACH {alias}")


def verify(src: Path) -> Manifest:
    """Check a backup against its manifest: every listed file present with its sha256 and size, nothing extra."""
    src = src.expanduser().resolve()
    path = src / "manifest.json"
    if not path.is_file():
        raise InvalidInput(f"{src}: no manifest.json (not a backup, or an incomplete one)", field="src")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as err:
        raise InvalidInput(f"{path}: not a valid manifest ({err})", field="src") from None
    if manifest.format != FORMAT:
        raise InvalidInput(f"{path}: format {manifest.format!r} is not {FORMAT!r}", field="src")
    listed = {f.path for f in manifest.files}
    for f in manifest.files:
        p = src / f.path
        if ".." in Path(f.path).parts or Path(f.path).is_absolute():
            raise InvalidInput(f"{path}: bad path {f.path!r}", field="src")
        if not p.is_file():
            raise InvalidInput(f"{src}: {f.path} is missing", field="src")
        if p.stat().st_size != f.size or _sha256(p) != f.sha256:
            raise InvalidInput(f"{src}: {f.path} is corrupt (sha256 or size differs from the manifest)", field="src")
    extra = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and p.name != "manifest.json" and str(p.relative_to(src)) not in listed]
    if extra:
        raise InvalidInput(f"{src}: files not in the manifest: {extra[:5]}", field="src")
    return manifest


def restore(src: Path, data_dir: Path) -> Manifest:
    """Restore a verified backup into an empty data directory (all or nothing)."""
    manifest = verify(src)
    data_dir = data_dir.expanduser().resolve()
    if data_dir.exists() and any(p.name != ".lock" for p in data_dir.iterdir()):
        raise Conflict(f"data directory {data_dir} is not empty; restore needs an empty one")
    staging = data_dir.parent / f".{data_dir.name}.restoring-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for f in manifest.files:
            target = staging / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f.path, target)
            if f.path.startswith("blobs/"):
                os.chmod(target, 0o444)
        if data_dir.exists():
            (data_dir / ".lock").unlink(missing_ok=True)
            data_dir.rmdir()
        staging.replace(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("backup_restored", src=str(src), data_dir=str(data_dir), files=len(manifest.files))
    return manifest
