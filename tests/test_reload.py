"""Config reload in process: what it says it applied is in force, and a bad file applies nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from shepherd import config as config_mod
from shepherd import reload as reload_mod
from shepherd.appliance import Appliance
from shepherd.errors import ConfigError, PayloadTooLarge


def _write(path: Path, cfg: config_mod.Config, max_bundle_bytes: int, policies: Path) -> Path:
    path.write_text(
        f'[storage]\ndata_dir = "{cfg.data_dir}"\n[bundles]\ntrusted_keys_dir = "{cfg.bundles.trusted_keys_dir}"\n'
        f"max_bundle_bytes = {max_bundle_bytes}\n[auth]\ntoken_cache_seconds = 0\n"
        f'[monitoring]\npolicies_dir = "{policies}"\n'
    )
    return path


def test_reloaded_bundle_limits_are_the_ones_imports_obey(config, appliance: Appliance, make_bundle, tmp_path: Path):
    """Reload lists bundles.max_bundle_bytes as applied: the next import must be held to it, and to
    the old value again after reloading back."""
    policies = tmp_path / "policies"
    policies.mkdir()
    big = make_bundle(bias=1.0)
    size = big.stat().st_size
    result = reload_mod.reload(appliance, _write(tmp_path / "small.toml", config, size - 1, policies))
    assert "bundles.max_bundle_bytes" in result.applied
    assert appliance.importer.limits.max_bundle_bytes == size - 1
    with pytest.raises(PayloadTooLarge, match="max_bundle_bytes"):
        appliance.importer.import_file(big, actor="t")
    reload_mod.reload(appliance, _write(tmp_path / "large.toml", config, 64 << 20, policies))
    record, created = appliance.importer.import_file(big, actor="t")
    assert created and record.version == 1


def test_a_policy_file_that_is_not_utf8_applies_nothing(config, appliance: Appliance, tmp_path: Path):
    """A policy file of bytes that are not UTF-8 is a ConfigError naming the file (the service answers
    the reload with it), and nothing of the new config is applied."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "d.toml").write_bytes(b"[drift]\nwindow_rows = \xff\xfe\n")
    before = appliance.config.bundles.max_bundle_bytes
    with pytest.raises(ConfigError, match="d.toml: not UTF-8"):
        reload_mod.reload(appliance, _write(tmp_path / "new.toml", config, 1234, policies))
    assert appliance.config.bundles.max_bundle_bytes == before
