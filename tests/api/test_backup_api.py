"""Online backups through the HTTP API, in process: two at the same time, two to one place, and one that fails halfway."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shepherd import backup as backup_mod
from shepherd.appliance import Appliance


def _backup(api, token: str, dest: Path):
    return api.post("/api/v1/admin/backup", json={"dest": str(dest)}, headers={"Authorization": f"Bearer {token}"})


def test_two_backups_at_the_same_time_both_complete(api, appliance: Appliance, tokens, make_bundle, tmp_path: Path, monkeypatch):
    """Each backup attaches its DuckDB copy to the store's one connection. Two copying at the same
    moment (held there by a barrier) must not collide: both answer 200 and both verify."""
    appliance.importer.import_file(make_bundle(), actor="t")
    real = appliance.events.cursor
    barrier = threading.Barrier(2)

    class Held:
        """The store's cursor, but a COPY FROM DATABASE waits until the other backup is at its own."""

        def __init__(self, cur):
            self._cur = cur

        def execute(self, sql, *args):
            if sql.startswith("COPY FROM DATABASE"):
                barrier.wait(timeout=20)
            self._cur.execute(sql, *args)
            return self

        def __getattr__(self, name):
            return getattr(self._cur, name)

    monkeypatch.setattr(appliance.events, "cursor", lambda: Held(real()))
    answers: dict[int, tuple[int, str]] = {}

    def run(i: int) -> None:
        r = _backup(api, tokens["admin"], tmp_path / f"bk{i}")
        answers[i] = (r.status_code, r.text)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i][0] for i in range(2)] == [200, 200], answers
    for i in range(2):
        manifest = backup_mod.verify(tmp_path / f"bk{i}")
        assert {"shepherd.sqlite", "events.duckdb"} <= {f.path for f in manifest.files}
        assert any(f.path.startswith("blobs/") for f in manifest.files)


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "empty-dir"])
def test_a_backup_that_fails_halfway_leaves_the_destination_as_it_was(api, appliance: Appliance, tokens, tmp_path: Path,
                                                                      monkeypatch, existing: bool):
    """A failure after the databases were copied (here: hashing the files for the manifest) removes
    what the backup wrote, so the destination is as before (missing, or empty) and the same backup
    can simply be run again."""
    dest = tmp_path / "bk"
    if existing:
        dest.mkdir()
    real = backup_mod._sha256
    monkeypatch.setattr(backup_mod, "_sha256", lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert _backup(api, tokens["admin"], dest).status_code == 500
    assert dest.is_dir() == existing
    assert not existing or list(dest.iterdir()) == []
    monkeypatch.setattr(backup_mod, "_sha256", real)
    assert _backup(api, tokens["admin"], dest).status_code == 200
    assert {"shepherd.sqlite", "events.duckdb"} <= {f.path for f in backup_mod.verify(dest).files}


def test_a_second_backup_to_the_same_destination_is_refused_and_harms_nothing(api, appliance: Appliance, tokens, make_bundle,
                                                                            tmp_path: Path, monkeypatch):
    """While a backup is writing, even before its first file, a second one to the same directory
    gets 409 and writes nothing there; the first completes and verifies, with no claim file left.
    Without the claim the second found the directory empty and wrote into the first one's files."""
    appliance.importer.import_file(make_bundle(), actor="t")
    dest = tmp_path / "bk"
    entered, go = threading.Event(), threading.Event()
    real = appliance.db.backup_to

    def held(target):
        entered.set()
        go.wait(20)
        return real(target)

    monkeypatch.setattr(appliance.db, "backup_to", held)
    first: list = []
    writer = threading.Thread(target=lambda: first.append(_backup(api, tokens["admin"], dest)))
    writer.start()
    try:
        assert entered.wait(20)
        assert [p.name for p in dest.iterdir()] == [backup_mod.IN_PROGRESS]  # nothing written yet
        second = _backup(api, tokens["admin"], dest)
        assert second.status_code == 409 and "another backup" in second.text, second.text
        assert [p.name for p in dest.iterdir()] == [backup_mod.IN_PROGRESS]
    finally:
        go.set()
        writer.join(30)
    assert first[0].status_code == 200
    assert not (dest / backup_mod.IN_PROGRESS).exists()
    assert {"shepherd.sqlite", "events.duckdb"} <= {f.path for f in backup_mod.verify(dest).files}


def test_two_backups_that_both_found_the_destination_empty_one_is_refused(appliance: Appliance, tmp_path: Path, monkeypatch):
    """The claim decides between two backups that passed the emptiness check at the same moment."""
    dest = tmp_path / "bk"
    dest.mkdir()
    (dest / backup_mod.IN_PROGRESS).touch()  # the other backup claimed it just after this one looked
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(()) if self == dest else real_iterdir(self))
    from shepherd.errors import Conflict

    with pytest.raises(Conflict, match="another backup"):
        backup_mod.backup(appliance, dest)
    assert [p.name for p in real_iterdir(dest)] == [backup_mod.IN_PROGRESS]  # the other one's claim stays


def test_a_failed_backup_removes_the_parent_directories_it_created(api, appliance: Appliance, tokens, tmp_path: Path, monkeypatch):
    """A backup to root/a/b/bk, where only root existed, that fails halfway leaves root as it was:
    bk, b and a are all gone. A parent that held something before is kept."""
    root = tmp_path / "backups"
    (root / "kept").mkdir(parents=True)
    (root / "kept" / "file").write_text("x")
    monkeypatch.setattr(backup_mod, "_sha256", lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert _backup(api, tokens["admin"], root / "a" / "b" / "bk").status_code == 500
    assert _backup(api, tokens["admin"], root / "kept" / "c" / "bk").status_code == 500
    assert sorted(p.name for p in root.iterdir()) == ["kept"]
    assert [p.name for p in (root / "kept").iterdir()] == ["file"]
