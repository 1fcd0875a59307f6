"""Config loading: validation messages, documentation coverage, path resolution, round-trips."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd import config as config_mod
from shepherd.cli import main
from shepherd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_bind_loopback_8080():
    """The embedded defaults bind 127.0.0.1:8080 and require signatures."""
    cfg = config_mod.load(None)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert cfg.bundles.require_signature is True
    assert Path(cfg.storage.data_dir).is_absolute()


@pytest.mark.parametrize("name", ["shepherd.toml", "demo.toml"])
def test_shipped_configs_are_valid(name):
    """Every config shipped in configs/ passes validation."""
    config_mod.load(ROOT / "configs" / name)


def test_every_setting_is_documented_in_shepherd_toml():
    """Each setting has a docstring in config.py and appears, commented, in configs/shepherd.toml."""
    docs = config_mod.field_docs()
    assert len(docs) >= 10
    text = (ROOT / "configs" / "shepherd.toml").read_text()
    lines = text.splitlines()
    parsed = tomllib.loads(text)
    for key, doc in docs.items():
        assert doc.strip(), f"{key} has no attribute docstring in shepherd/config.py"
        section, _, name = key.rpartition(".")
        assert name in parsed.get(section, {}), f"{key} is missing from configs/shepherd.toml"
        # the line setting it must follow a comment line
        header = lines.index(f"[{section}]")
        idx = next(i for i in range(header, len(lines)) if re.match(rf"^{name}\s*=", lines[i]))
        assert lines[idx - 1].startswith("#"), f"{key} in configs/shepherd.toml has no comment above it"


def test_example_policy_documents_every_setting_with_the_real_defaults(tmp_path):
    """configs/policies/default.toml sets every policy field, commented, to its built-in default."""
    docs = config_mod.field_docs(config_mod.Policy)
    path = ROOT / "configs" / "policies" / "default.toml"
    text = path.read_text()
    lines = text.splitlines()
    for key, doc in docs.items():
        assert doc.strip(), f"policy {key} has no attribute docstring"
        section, _, name = key.rpartition(".")
        header = lines.index(f"[{section}]")
        idx = next(i for i in range(header, len(lines)) if re.match(rf"^{name}\s*=", lines[i]))
        assert lines[idx - 1].startswith("#"), f"policy {key} has no comment above it"
    policy, source = config_mod.load_policy(path.parent, "any-deployment")
    assert source == path and policy == config_mod.Policy()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[drift]\nwindow_rows = 0\n", "drift = {'window_rows': 0}: set window_rows"),
        ("[drift]\npsi_threshold = -1\n", "drift.psi_threshold = -1"),
        ("[drift]\nwindow_rows = 0\nwindow_seconds = 1e-7\n", "window_seconds = 1e-07: time windows (window_rows = 0) are at least 1 second"),
        ("[drift]\nwindow_rows = 0\nwindow_seconds = 1e12\n", "drift.window_seconds = 1000000000000.0"),
        ("[performance]\ncritical_drop = 0.2\nemergency_drop = 0.1\n", "emergency_drop must be larger"),
        ('[alerts]\nwebhook_url = "ftp://x"\n', "alerts.webhook_url = 'ftp://x'"),
        ("[alerts]\ncooldown = 5\n", "alerts.cooldown = 5: unknown setting"),
        ("[drift\n", "not valid TOML"),
    ],
)
def test_bad_policy_file_is_refused_naming_file_and_key(tmp_path, text, fragment):
    """A policy file that breaks a rule raises ConfigError naming the file, the key and the reason."""
    (tmp_path / "d.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        config_mod.load_policy(tmp_path, "d")
    assert str(tmp_path / "d.toml") in str(info.value) and fragment in str(info.value)


def test_shepherd_toml_values_equal_defaults_except_paths():
    """configs/shepherd.toml documents the real defaults (only the data directory differs)."""
    shipped = msgspec.to_builtins(config_mod.load(ROOT / "configs" / "shepherd.toml"))
    default = msgspec.to_builtins(config_mod.load(None))
    for section in default:
        for key, value in default[section].items():
            if key in ("data_dir", "trusted_keys_dir", "policies_dir"):
                continue
            assert shipped[section][key] == value, f"{section}.{key}"


@pytest.mark.parametrize(
    "toml, key, fragment",
    [
        ('[server]\nport = "abc"\n', "server.port", "'abc'"),
        ("[server]\nport = 70000\n", "server.port", "70000"),
        ("[server]\nprot = 8080\n", "server.prot", "unknown setting"),
        ("surprise = 1\n", "surprise", "unknown setting"),
        ('[logging]\nlevel = "loud"\n', "logging.level", "'loud'"),
        ("[bundles]\nmax_members = 1\n", "bundles.max_members", ">= 3"),
        ("[storage]\nsqlite_readers = 0\n", "storage.sqlite_readers", ">= 1"),
        ('[monitoring]\nkernel_priority = "high"\n', "monitoring.kernel_priority", "'high'"),
        ("server = 5\n", "server", "object"),
    ],
)
def test_bad_config_names_key_value_and_reason(tmp_path, toml, key, fragment):
    """An invalid file is refused with a message naming the key, the value and the reason."""
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config_mod.load(f)
    assert info.value.field == key
    assert f"{key}" in info.value.message and fragment in info.value.message


def test_invalid_toml_syntax_is_reported(tmp_path):
    """A file that is not TOML is refused with the parser's location."""
    f = tmp_path / "bad.toml"
    f.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_mod.load(f)


def test_relative_paths_resolve_against_config_dir(tmp_path):
    """Relative paths in a file resolve against that file's directory, not the working directory."""
    d = tmp_path / "etc"
    d.mkdir()
    (d / "s.toml").write_text('[storage]\ndata_dir = "state"\n[bundles]\ntrusted_keys_dir = "../keys"\n')
    cfg = config_mod.load(d / "s.toml")
    assert cfg.storage.data_dir == str(d / "state")
    assert cfg.bundles.trusted_keys_dir == str(tmp_path / "keys")


def test_check_config_cli_verdicts(tmp_path):
    """`shepherd check-config` exits 0 on a valid file and non-zero, naming the key, on an invalid one."""
    runner = CliRunner()
    ok = runner.invoke(main, ["check-config", str(ROOT / "configs" / "shepherd.toml")])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -1\n")
    res = runner.invoke(main, ["check-config", str(bad)])
    assert res.exit_code == 2
    assert "server.port = -1" in res.output


sections = st.fixed_dictionaries(
    {
        "server": st.fixed_dictionaries(
            {"host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0"]), "port": st.integers(1, 65535), "max_request_bytes": st.integers(1, 2**40), "watch_config": st.booleans()}
        ),
        "storage": st.fixed_dictionaries({"data_dir": st.sampled_from(["/var/lib/s", "/tmp/x y"]), "sqlite_readers": st.integers(1, 64), "tracking_sync_s": st.floats(0, 60)}),
        "bundles": st.fixed_dictionaries(
            {
                "require_signature": st.booleans(),
                "trusted_keys_dir": st.just("/etc/shepherd/keys"),
                "max_bundle_bytes": st.integers(1, 2**50),
                "max_member_bytes": st.integers(1, 2**50),
                "max_members": st.integers(3, 10_000),
            }
        ),
        "auth": st.fixed_dictionaries({"token_cache_seconds": st.floats(0, 300)}),
        "serving": st.fixed_dictionaries(
            {
                "providers": st.lists(st.sampled_from(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]), min_size=1, max_size=3),
                "intra_op_threads": st.integers(0, 1024),
                "inter_op_threads": st.integers(0, 1024),
                "trt_engine_cache_dir": st.sampled_from(["", "/var/cache/trt"]),
                "trt_fp16": st.booleans(),
                "trt_workspace_bytes": st.integers(1, 2**40),
                "keep_previous_warm": st.booleans(),
                "max_batch_size": st.integers(1, 65536),
                "max_queue_delay_us": st.integers(0, 10_000_000),
                "max_queue_size": st.integers(1, 1_000_000),
                "inline_max_us": st.integers(0, 1000),
                "request_slice_us": st.integers(0, 100_000),
                "request_timeout_ms": st.integers(1, 3_600_000),
                "drain_timeout_s": st.floats(0, 3600),
            }
        ),
        "monitoring": st.fixed_dictionaries(
            {
                "prediction_log": st.booleans(),
                "sample_rate": st.floats(0, 1),
                "buffer_rows": st.integers(1, 10_000_000),
                "flush_rows": st.integers(1, 10_000_000),
                "flush_interval_s": st.floats(0.05, 3600),
                "retention_days": st.floats(0, 1e6),
                "retention_rows": st.integers(0, 2**40),
                "interval_s": st.floats(0.05, 3600),
                "kernel_threads": st.integers(0, 1024),
                "kernel_priority": st.sampled_from(["normal", "low", "idle"]),
                "policies_dir": st.just("/etc/shepherd/policies"),
            }
        ),
        "logging": st.fixed_dictionaries({"level": st.sampled_from(["debug", "info", "warning", "error"]), "format": st.sampled_from(["auto", "json", "console"])}),
    }
)


@settings(max_examples=60, deadline=None)
@given(sections)
def test_config_round_trips(raw):
    """Any valid config survives parse -> to_builtins -> parse unchanged."""
    cfg = config_mod.parse(raw)
    assert msgspec.to_builtins(cfg) == raw
    assert config_mod.parse(msgspec.to_builtins(cfg)) == cfg


@settings(max_examples=60, deadline=None)
@given(sections, st.data())
def test_any_wrong_typed_value_is_named(raw, data):
    """Replacing any setting with a value of the wrong type is refused, naming that setting."""
    section = data.draw(st.sampled_from(sorted(raw)))
    key = data.draw(st.sampled_from(sorted(raw[section])))
    raw[section][key] = [1, 2]  # a list is never a valid setting
    with pytest.raises(ConfigError) as info:
        config_mod.parse(raw)
    # a list-valued setting is blamed at its first bad element (serving.providers.0)
    assert info.value.field == f"{section}.{key}" or info.value.field == f"{section}.{key}.0"


@pytest.mark.parametrize(("cpus", "log", "kernel", "intra", "want_kernel", "want_intra"), [
    (2, True, 0, 0, 1, 1),      # a 2-CPU box: one for the drift kernels, one for ONNX Runtime's pool
    (16, True, 0, 0, 8, 8),
    (1, True, 0, 0, 1, 1),      # never 0 (ONNX Runtime would read 0 as "every core")
    (16, True, 4, 0, 4, 12),    # ONNX Runtime takes what the kernels leave
    (16, True, 20, 0, 20, 1),
    (16, False, 0, 0, 8, 16),   # no prediction log: the kernels have nothing to do, ONNX Runtime gets every CPU
    (16, True, 0, 3, 8, 3),     # explicit settings win
])
def test_drift_kernels_and_onnx_runtime_split_the_cpus(monkeypatch, cpus, log, kernel, intra, want_kernel, want_intra):
    monkeypatch.setattr(config_mod, "cpus", lambda: cpus)
    monkeypatch.setattr(config_mod, "numba_pool", lambda: 64)
    cfg = config_mod.parse({"monitoring": {"prediction_log": log, "kernel_threads": kernel}, "serving": {"intra_op_threads": intra}})
    assert config_mod.kernel_threads(cfg) == want_kernel
    assert config_mod.intra_op_threads(cfg) == want_intra


@pytest.mark.parametrize(("kernel", "want_kernel", "want_intra"), [(0, 2, 14), (8, 2, 14), (1, 1, 15)])
def test_numbas_pool_caps_the_kernels_share_on_both_sides_of_the_split(monkeypatch, kernel, want_kernel, want_intra):
    """NUMBA_NUM_THREADS=2 on a 16-CPU box: the kernels cannot use more than 2 threads, so ONNX Runtime gets the other 14."""
    monkeypatch.setattr(config_mod, "cpus", lambda: 16)
    monkeypatch.setattr(config_mod, "numba_pool", lambda: 2)
    cfg = config_mod.parse({"monitoring": {"kernel_threads": kernel}})
    assert (config_mod.kernel_threads(cfg), config_mod.intra_op_threads(cfg)) == (want_kernel, want_intra)


def test_numba_pool_is_numbas_configured_thread_count():
    import numba

    assert config_mod.numba_pool() == numba.config.NUMBA_NUM_THREADS


def test_a_model_session_gets_the_intra_op_threads_of_the_split(tmp_path, monkeypatch):
    """The engine hands ONNX Runtime the resolved count, not the raw 0 (which would mean every core)."""
    from shepherd.serving.engine import ModelSession
    from tests.conftest import write_model

    monkeypatch.setattr(config_mod, "cpus", lambda: 4)
    monkeypatch.setattr(config_mod, "numba_pool", lambda: 4)
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
                 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}
    for log, want in ((True, 2), (False, 4)):
        cfg = config_mod.parse({"monitoring": {"prediction_log": log}, "serving": {"providers": ["CPUExecutionProvider"]}})
        session = ModelSession(cfg, write_model(tmp_path / "m.onnx"), signature, label="m:1")
        assert session.session.get_session_options().intra_op_num_threads == want


def test_cpus_follow_the_process_affinity():
    """A server pinned to one CPU (systemd CPUAffinity=, taskset) counts one, not the machine's, and splits nothing."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from shepherd import config as c; "
            "cfg = c.parse({}); print(c.cpus(), c.kernel_threads(cfg), c.intra_op_threads(cfg))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]
