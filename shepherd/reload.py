"""Config and policy reload (SIGHUP, `shepherd reload`, POST /api/v1/admin/reload).

Validate first, change second: the new config file and every policy file are parsed and checked
before anything is applied, so an invalid file changes nothing (the old config stays in force
and the error is returned, logged and shown in systemd's STATUS).

What a reload applies at once, without dropping a request: [logging], [auth], [monitoring]
(sampling, buffer and flush sizes, retention, the monitor interval, the policies directory),
and [serving] batching and timeouts (max_batch_size, max_queue_delay_us, max_queue_size,
inline_max_us, request_timeout_ms, drain_timeout_s, keep_previous_warm: new values apply to
versions loaded from then on, and timeouts to new requests). Settings that need a restart
([server], [storage], [bundles] paths, providers and ONNX Runtime threads, the TensorRT
options, monitoring.prediction_log and the drift kernels' threads and priority) are reported in
`restart_required` and keep their old values until then. Policy files are re-read on every reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from shepherd import config as config_mod
from shepherd import log as log_mod
from shepherd.config import Config

if TYPE_CHECKING:
    from shepherd.appliance import Appliance

log = structlog.get_logger()

LIVE: dict[str, set[str] | None] = {
    "logging": None,
    "auth": None,
    "bundles": {"require_signature", "max_bundle_bytes", "max_member_bytes", "max_members"},
    "monitoring": {"sample_rate", "buffer_rows", "flush_rows", "flush_interval_s", "retention_days", "retention_rows", "interval_s", "policies_dir"},
    "serving": {"max_batch_size", "max_queue_delay_us", "max_queue_size", "inline_max_us", "request_timeout_ms", "drain_timeout_s", "keep_previous_warm"},
}


class ReloadResult(msgspec.Struct, kw_only=True):
    applied: list[str]
    """Settings that changed and took effect."""
    restart_required: list[str]
    """Settings that changed in the file but keep their old value until a restart."""
    policies: list[str]
    """Policy files checked (and re-read)."""


def _changes(old: Config, new: Config) -> list[tuple[str, str, Any]]:
    out = []
    a, b = msgspec.to_builtins(old), msgspec.to_builtins(new)
    for section, values in b.items():
        for key, value in values.items():
            if a.get(section, {}).get(key) != value:
                out.append((section, key, getattr(getattr(new, section), key)))
    return out


def reload(appl: Appliance, path: Path | None) -> ReloadResult:
    """Re-read `path` (None: keep the file-less defaults) and the policy files; apply what can change live."""
    new = config_mod.load(path)  # raises ConfigError naming the file, key and reason; nothing applied yet
    policies_dir = Path(new.monitoring.policies_dir)
    checked = []
    if policies_dir.is_dir():
        for f in sorted(policies_dir.glob("*.toml")):
            config_mod.load_policy(policies_dir, f.stem)  # raises ConfigError: nothing applied
            checked.append(str(f))
    applied, restart = [], []
    for section, key, value in _changes(appl.config, new):
        live = LIVE.get(section, set())
        if section in LIVE and (live is None or key in live):
            setattr(getattr(appl.config, section), key, value)
            applied.append(f"{section}.{key}")
        else:
            restart.append(f"{section}.{key}")
    appl.auth.cache_seconds = appl.config.auth.token_cache_seconds
    log_mod.configure(appl.config.logging.level, appl.config.logging.format)
    appl.monitor.forget_policies()
    result = ReloadResult(applied=applied, restart_required=restart, policies=checked)
    log.info("config_reloaded", file=str(path) if path else None, applied=applied, restart_required=restart, policies=len(checked))
    return result
