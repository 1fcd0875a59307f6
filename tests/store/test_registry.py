"""Registry records: numbering, immutability, aliases with history, tags and archiving."""

from __future__ import annotations

import apsw
import pytest

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.store import audit, registry


@pytest.fixture
def two_versions(appliance, make_bundle):
    imp = appliance.importer
    imp.import_file(make_bundle(bias=1.0), actor="t")
    imp.import_file(make_bundle(bias=2.0), actor="t")
    return appliance.db


def test_versions_are_numbered_in_order(two_versions):
    """Each new bundle of a model becomes version N+1, with its files, card, lineage and metrics."""
    versions = two_versions.read(lambda c: registry.list_versions(c, "tiny"))
    assert [v.version for v in versions] == [1, 2]
    v = versions[0]
    assert {f.path for f in v.files} == {"model.onnx", "metadata.json"}
    assert v.metrics == {"accuracy": 0.9}
    assert v.lineage["code_revision"] == "abc123"
    assert v.card["owners"] == [{"name": "QA", "contact": "qa@example.invalid"}]
    assert v.signature["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert v.signed_by is not None


def test_version_content_is_immutable(two_versions):
    """The database refuses any change to a registered version's content or files, and deletion."""
    for sql in (
        "UPDATE versions SET card = '{}' WHERE version = 1",
        "UPDATE versions SET version = 9 WHERE version = 1",
        "UPDATE version_files SET sha256 = 'x'",
        "DELETE FROM versions",
        "DELETE FROM version_files",
    ):
        with pytest.raises(apsw.ConstraintError, match="immutable"):
            two_versions.write(lambda c, sql=sql: c.execute(sql))


def test_alias_moves_are_recorded(two_versions):
    """Setting, moving and deleting an alias updates it and appends to its history and the audit log."""
    db = two_versions
    db.write(lambda c: registry.set_alias(c, "tiny", "production", 1, actor="alice"))
    db.write(lambda c: registry.set_alias(c, "tiny", "production", 2, actor="bob"))
    assert db.read(lambda c: registry.resolve(c, "tiny", "production")).version == 2
    db.write(lambda c: registry.delete_alias(c, "tiny", "production", actor="carol"))
    hist = db.read(lambda c: registry.alias_history(c, "tiny", "production"))
    assert [(h.from_version, h.to_version, h.actor) for h in hist] == [(None, 1, "alice"), (1, 2, "bob"), (2, None, "carol")]
    with pytest.raises(NotFound):
        db.read(lambda c: registry.resolve(c, "tiny", "production"))
    actions = [e.action for e in db.read(lambda c: audit.query(c, action="alias."))]
    assert actions == ["alias.set", "alias.set", "alias.delete"]


@pytest.mark.parametrize("alias", ["", "1", "9lives", "has space", "a" * 65, "../x"])
def test_bad_alias_names_are_refused(two_versions, alias):
    """Alias names must start with a letter and be short and plain."""
    with pytest.raises(InvalidInput, match="alias"):
        two_versions.write(lambda c: registry.set_alias(c, "tiny", alias, 1, actor="t"))


def test_alias_to_missing_version_changes_nothing(two_versions):
    """Pointing an alias at a version that does not exist fails and records nothing."""
    before = two_versions.read(lambda c: len(audit.query(c)))
    with pytest.raises(NotFound, match="no version 7"):
        two_versions.write(lambda c: registry.set_alias(c, "tiny", "production", 7, actor="t"))
    assert two_versions.read(lambda c: len(audit.query(c))) == before


def test_archive_rules(two_versions):
    """An aliased version cannot be archived; an archived one takes no alias and hides from active lists."""
    db = two_versions
    db.write(lambda c: registry.set_alias(c, "tiny", "staging", 1, actor="t"))
    with pytest.raises(Conflict, match="staging"):
        db.write(lambda c: registry.set_archived(c, "tiny", 1, True, actor="t"))
    rec = db.write(lambda c: registry.set_archived(c, "tiny", 2, True, actor="t"))
    assert rec.archived and rec.archived_at
    with pytest.raises(Conflict, match="archived"):
        db.write(lambda c: registry.set_alias(c, "tiny", "production", 2, actor="t"))
    assert [v.version for v in db.read(lambda c: registry.list_versions(c, "tiny", include_archived=False))] == [1]
    db.write(lambda c: registry.set_archived(c, "tiny", 2, False, actor="t"))
    assert [v.version for v in db.read(lambda c: registry.list_versions(c, "tiny", include_archived=False))] == [1, 2]


def test_tags_set_and_delete(two_versions):
    """Tags are labels on a version: set, overwrite and delete, each audited with before and after."""
    db = two_versions
    db.write(lambda c: registry.set_tag(c, "tiny", 1, "team", "fraud", actor="t"))
    rec = db.write(lambda c: registry.set_tag(c, "tiny", 1, "team", "risk", actor="t"))
    assert rec.tags == {"team": "risk"}
    last = db.read(lambda c: audit.query(c, action="version.tag"))[-1]
    assert (last.before, last.after) == ({"team": "fraud"}, {"team": "risk"})
    assert db.write(lambda c: registry.delete_tag(c, "tiny", 1, "team", actor="t")).tags == {}
    with pytest.raises(NotFound):
        db.write(lambda c: registry.delete_tag(c, "tiny", 1, "team", actor="t"))
    with pytest.raises(InvalidInput, match="key"):
        db.write(lambda c: registry.set_tag(c, "tiny", 1, "bad key", "v", actor="t"))


def test_models_listing(two_versions):
    """The model list shows version count, latest version and aliases."""
    two_versions.write(lambda c: registry.set_alias(c, "tiny", "production", 2, actor="t"))
    [m] = two_versions.read(registry.list_models)
    assert (m.name, m.versions, m.latest_version, m.aliases) == ("tiny", 2, 2, {"production": 2})
