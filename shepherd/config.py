"""msgspec Structs for shepherd.toml; load, validate and explain errors by key, value and reason.

Each field's attribute docstring is the user documentation of that setting; a test checks that
every field is present and commented in `configs/shepherd.toml`.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from shepherd.errors import ConfigError

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section: unknown keys are an error, never ignored."""


class ServerConfig(Section, kw_only=True):
    host: str = "127.0.0.1"
    """Address the HTTP API binds to. Keep it on loopback unless a reverse proxy fronts it."""
    port: Port = 8080
    """TCP port of the HTTP API."""
    max_request_bytes: PositiveInt = 10 * 1024 * 1024
    """Largest JSON request body accepted, in bytes (bundle uploads use bundles.max_bundle_bytes)."""
    watch_config: bool = False
    """Reload on its own when the config file or a policy file changes, as SIGHUP does (validated first; an invalid file is refused)."""


class StorageConfig(Section, kw_only=True):
    data_dir: str = "shepherd-data"
    """Directory holding every store: registry.sqlite, blobs/, tmp/. Relative paths resolve against the config file's directory."""
    sqlite_readers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """Number of read-only SQLite connections in the reader pool."""
    tracking_sync_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    """Experiment-tracking writes (runs, metrics, params, tags, inputs) skip the fsync at commit and are on disk within this many seconds: a process crash loses nothing, a power loss at most this much of tracking data. 0: fsync every one at commit. Registry, audit, deployment and token writes are always fsynced at commit."""


class BundlesConfig(Section, kw_only=True):
    require_signature: bool = True
    """Refuse bundles without a valid Ed25519 signature from a trusted key. Set false only on a lab box."""
    trusted_keys_dir: str = "trusted_keys"
    """Directory of trusted public keys (*.pub, PEM). Relative paths resolve against the config file's directory."""
    max_bundle_bytes: PositiveInt = 4 * 1024**3
    """Largest bundle file accepted for import, in bytes."""
    max_member_bytes: PositiveInt = 2 * 1024**3
    """Largest single file inside a bundle, in bytes."""
    max_members: Annotated[int, msgspec.Meta(ge=3, le=10_000)] = 64
    """Most files a bundle may contain (manifest and signature included)."""


class AuthConfig(Section, kw_only=True):
    token_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 2.0
    """How long a verified token is trusted before it is checked against the store again; bounds how fast a revocation made by another process takes effect."""


Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class ServingConfig(Section, kw_only=True):
    providers: Annotated[list[Provider], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    """ONNX Runtime execution providers in order of preference; those not available on this machine are skipped."""
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    """Threads ONNX Runtime uses inside one operator (0: the CPUs the monitor's drift kernels leave, see monitoring.kernel_threads; every CPU when the prediction log is off)."""
    inter_op_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    """Threads ONNX Runtime uses across independent operators (0: ONNX Runtime's default)."""
    trt_engine_cache_dir: str = ""
    """Where TensorRT keeps built engines ("" = <data_dir>/trt-cache). Relative paths resolve against the config file's directory."""
    trt_fp16: bool = False
    """Let TensorRT run in FP16 where the GPU supports it."""
    trt_workspace_bytes: PositiveInt = 2 * 1024**3
    """Most GPU memory TensorRT may use as scratch space while building an engine, in bytes."""
    keep_previous_warm: bool = True
    """Keep the previous primary loaded after a promote, so a rollback loads nothing; false unloads it (memory-tight GPUs) and a rollback reloads it first."""
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 32
    """Most requests the dynamic batcher merges into one model run (only for models whose first dimension is -1)."""
    max_queue_delay_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 200
    """How long the batcher waits for more requests after the first one of a batch, in microseconds."""
    max_queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    """Requests waiting per slot beyond which new ones are refused at once with 503."""
    inline_max_us: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 50
    """Models whose warm-up median is at most this many microseconds run on the event loop instead of the batcher thread (0: never): a lone request at once, requests arriving together as one merged loop batch. The thread hand-off costs the event loop more CPU than such a model; served runs are slower than warm-up (cold caches), so a version goes back to the thread for 30 s only when its runs on the loop mostly compute (CPU time) for longer than 10x this, or stall for longer than 100x (the median, in two rounds of 64 in a row)."""
    request_slice_us: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 100
    """CPU time slice, in microseconds, that the threads answering requests (the event loop, each version's batcher worker) ask Linux for (0: the kernel's default). On Linux 6.12 and later a thread that wakes with a shorter slice than the running one preempts it at once, so a request does not wait out a burst of background work (a prediction-log flush, a drift pass) on its CPU; the kernel clamps it to 100..100,000. Older kernels and other systems ignore it. Applied at start."""
    request_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 10_000
    """A request not answered within this time gets 504; if it has not started running it is dropped from the queue."""
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    """How long a retired model version waits for its in-flight requests before it is released anyway."""


class MonitoringConfig(Section, kw_only=True):
    prediction_log: bool = True
    """Record every served request (sampled by sample_rate) in the prediction log (<data_dir>/events.duckdb)."""
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    """Share of requests recorded in the prediction log (feedback for an unrecorded request is reported as unknown)."""
    buffer_rows: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 200_000
    """Most rows (a request of k rows counts k) held in memory waiting for a flush; beyond it new requests are not recorded, only counted (shepherd_prediction_log_dropped_total), never waited for."""
    flush_rows: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 20_000
    """Flush the prediction log to DuckDB as soon as this many rows are buffered."""
    flush_interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 1.0
    """Flush the prediction log at least this often, in seconds: the most that a crash (not a SIGTERM) can lose."""
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Delete logged predictions (and their feedback) older than this many days (0: keep forever; checked every minute); drift windows and performance evaluations too, except the newest of each deployment and version (checked hourly)."""
    retention_rows: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Keep at most this many logged predictions, deleting the oldest first (0: no limit)."""
    interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 5.0
    """How often the monitor looks for complete drift windows and new feedback, in seconds; a pass that leaves complete windows waiting (more than 50 per version) is followed after 0.1 s instead."""
    kernel_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    """Threads the monitor's drift kernels may use (0: half the CPUs, at least 1; at most Numba's pool, NUMBA_NUM_THREADS); serving.intra_op_threads = 0 gives ONNX Runtime the rest."""
    kernel_priority: Literal["normal", "low", "idle"] = "low"
    """CPU priority of the thread that runs the drift kernels: low (nice 19: the CPU time serving leaves), idle (SCHED_IDLE: only CPU time nothing else wants; windows wait under a load that keeps every CPU busy), or normal."""
    policies_dir: str = "policies"
    """Directory of per-deployment policy files (<deployment>.toml; default.toml applies to the rest). Relative paths resolve against the config file's directory."""


class LoggingConfig(Section, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest log level written."""
    format: Literal["auto", "json", "console"] = "auto"
    """auto: JSON when stderr is not a terminal (journald), coloured console otherwise."""


class Config(Section, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    """HTTP server."""
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    """Where and how state is stored."""
    bundles: BundlesConfig = msgspec.field(default_factory=BundlesConfig)
    """Offline bundle import: signatures and size limits."""
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    """API tokens."""
    serving: ServingConfig = msgspec.field(default_factory=ServingConfig)
    """Inference engine, slots and dynamic batching."""
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    """Prediction log, drift windows and alerts; thresholds live in policy files."""
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    """Structured logging."""

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def trt_cache_dir(self) -> Path:
        return Path(self.serving.trt_engine_cache_dir) if self.serving.trt_engine_cache_dir else self.data_dir / "trt-cache"


MAX_WINDOW_SECONDS = 366 * 86400.0


class DriftPolicy(Section, kw_only=True):
    window_rows: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 1000
    """Tumbling windows of this many logged rows per version (0: use window_seconds)."""
    window_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_WINDOW_SECONDS)] = 0.0
    """Tumbling windows of this many seconds instead (used when window_rows is 0, then 1 s to 366 days), epoch-aligned;
    one closes once every row logged before its end is in DuckDB."""
    psi_threshold: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    """A numeric feature drifts when its PSI exceeds this..."""
    p_value: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    """...or when its KS (numeric) or chi-square (categorical) p-value, after Benjamini-Hochberg correction across features, is below this."""
    drift_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """The window drifts (a Warning alert) when at least this share of the features with data drifted; the
    model's outputs count as features here (prediction drift), and share the correction above."""
    bins: Annotated[int, msgspec.Meta(ge=2, le=1000)] = 10
    """Quantile bins per numeric feature for PSI and Jensen-Shannon, set when the reference profile is built."""
    categorical: list[str] = msgspec.field(default_factory=list)
    """Feature names compared as categories (chi-square) instead of numbers; like bins, fixed for a version
    when its reference profile is built (an edit applies to versions profiled after it)."""

    def __post_init__(self) -> None:
        if self.window_rows == 0 and self.window_seconds <= 0:
            raise ValueError("set window_rows (> 0) or window_seconds (> 0)")
        if self.window_rows == 0 and self.window_seconds < 1:  # under a microsecond it became 0: every pass divided by it
            raise ValueError(f"window_seconds = {self.window_seconds}: time windows (window_rows = 0) are at least 1 second")


class PerformancePolicy(Section, kw_only=True):
    task: Literal["auto", "classification", "regression"] = "auto"
    """auto: classification when the label output has an integer, bool or string type, else regression."""
    label_output: str = ""
    """Output holding the predicted label (classification) or value (regression); "" = the first output."""
    score_output: str = ""
    """Output holding class probabilities, for ROC AUC and the score stream; "" = the first 2-D float output other than the label."""
    baseline_metric: str = ""
    """Key in the version's bundle metrics to compare with ("" = accuracy for classifiers, rmse for regressors).
    A version whose bundle lacks it gets no Critical or Emergency alert (logged once: performance_baseline_missing)."""
    window_labels: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 500
    """Performance is computed over the most recent this many labelled requests of a version."""
    min_labels: Annotated[int, msgspec.Meta(ge=1)] = 50
    """No performance verdict (and no alert) with fewer labelled requests than this."""
    critical_drop: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    """Critical alert when the metric is worse than the baseline by more than this fraction of it."""
    emergency_drop: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.15
    """Emergency alert when it is worse by more than this fraction."""

    def __post_init__(self) -> None:
        if self.emergency_drop <= self.critical_drop:
            raise ValueError("emergency_drop must be larger than critical_drop")


class AlertPolicy(Section, kw_only=True):
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    """A repeat of an open (unacknowledged) incident within this many seconds updates the existing alert instead of raising a new one."""
    webhook_url: Annotated[str, msgspec.Meta(pattern=r"^(https?://\S+)?$")] = ""
    """POST every new or escalated alert as JSON to this URL ("" = no webhook)."""
    webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    """Timeout of one webhook attempt, in seconds."""
    webhook_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    """Further attempts after a failed webhook POST (connection error, 5xx or 429)."""
    webhook_backoff_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.5
    """Wait before the first retry; doubles on each further retry, up to 30 s a wait (webhook.WebhookSender.max_backoff_s)."""


class Policy(Section, kw_only=True):
    """A deployment's monitoring policy: <policies_dir>/<deployment>.toml, else default.toml, else these defaults."""

    drift: DriftPolicy = msgspec.field(default_factory=DriftPolicy)
    """Drift windows and thresholds."""
    performance: PerformancePolicy = msgspec.field(default_factory=PerformancePolicy)
    """Ground-truth performance and its alert thresholds."""
    alerts: AlertPolicy = msgspec.field(default_factory=AlertPolicy)
    """Alert cooldown and webhook."""


def cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. systemd's CPUAffinity=), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def numba_pool() -> int:
    """Threads in Numba's pool (NUMBA_NUM_THREADS, else the machine's CPUs): no kernel can use more."""
    import numba  # the monitor's dependency: imported only when the kernels' share is asked for

    return int(numba.config.NUMBA_NUM_THREADS)


def kernel_threads(cfg: Config) -> int:
    """Threads for the monitor's drift kernels: monitoring.kernel_threads, or half the CPUs (at least 1); at most Numba's pool.

    intra_op_threads() splits the CPUs by this figure, so the cap counts on both sides: with
    NUMBA_NUM_THREADS=1 on a 16-CPU box the kernels use 1 thread and ONNX Runtime gets 15.
    """
    return min(cfg.monitoring.kernel_threads or max(1, cpus() // 2), numba_pool())


def intra_op_threads(cfg: Config) -> int:
    """ONNX Runtime's threads inside one operator: serving.intra_op_threads, or the CPUs the drift kernels leave.

    The two pools split the CPUs instead of both taking all of them: ONNX Runtime's workers spin
    between operators, and on a small box a spinning worker takes the core that the prediction
    log's flush, the monitor and the event loop's other work need (benchmarks/README.md, "ONNX
    Runtime's second thread"). With the prediction log off the kernels have nothing to do, and ONNX
    Runtime gets every CPU, as its own default would.
    """
    if cfg.serving.intra_op_threads:
        return cfg.serving.intra_op_threads
    if not cfg.monitoring.prediction_log:
        return cpus()
    return max(1, cpus() - kernel_threads(cfg))


def load_policy(policies_dir: Path, deployment: str) -> tuple[Policy, Path | None]:
    """The policy for `deployment` and the file it came from (None: built-in defaults). Raises ConfigError naming file and key."""
    for name in (f"{deployment}.toml", "default.toml"):
        path = policies_dir / name
        if path.is_file():
            raw = _read_toml(path)
            try:
                return msgspec.convert(raw, Policy), path
            except msgspec.ValidationError as err:
                raise explain(err, raw, str(path)) from None
    return Policy(), None


_PATH_FIELDS = (
    ("storage", "data_dir"), ("bundles", "trusted_keys_dir"), ("serving", "trt_engine_cache_dir"), ("monitoring", "policies_dir"),
)


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Make every path setting absolute, relative ones taken against `base`."""
    for section, name in _PATH_FIELDS:
        sec = getattr(cfg, section)
        if not getattr(sec, name):
            continue
        value = Path(getattr(sec, name)).expanduser()
        if not value.is_absolute():
            value = (base / value).resolve()
        setattr(sec, name, str(value))
    return cfg


def _lookup(raw: Any, dotted: list[str]) -> tuple[bool, Any]:
    node = raw
    for part in dotted:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def explain(err: msgspec.ValidationError, raw: Any, source: str) -> ConfigError:
    """Turn a msgspec error into one that names the key, the value and the reason."""
    text = str(err)
    reason, _, where = text.partition(" - at `")
    path = where.rstrip("`").removeprefix("$")
    parts = [p for p in re.split(r"\.|\[|\]", path) if p]
    unknown = re.match(r"Object contains unknown field `(.+)`", reason)
    if unknown:
        parts.append(unknown.group(1))
        reason = "unknown setting"
    key = ".".join(parts) or "(top level)"
    found, value = _lookup(raw, parts)
    shown = f" = {value!r}" if found else ""
    return ConfigError(f"{source}: {key}{shown}: {reason}", field=key)


def parse(raw: dict[str, Any], *, source: str = "config", base: Path | None = None) -> Config:
    """Validate a decoded TOML document into a Config, resolving relative paths against `base`."""
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as err:
        raise explain(err, raw, source) from None
    return _resolve_paths(cfg, base or Path.cwd())


def load(path: str | Path | None) -> Config:
    """Load and validate a config file, or the embedded defaults when `path` is None."""
    if path is None:
        return parse({}, source="defaults")
    p = Path(path)
    return parse(_read_toml(p), source=str(p), base=p.resolve().parent)


def _read_toml(p: Path) -> dict[str, Any]:
    """A TOML file's document, or ConfigError naming the file and why it cannot be read."""
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:  # a directory, no permission
        raise ConfigError(f"{p}: cannot be read: {err.strerror or err}") from None


def field_docs(struct: type[msgspec.Struct] = Config, prefix: str = "") -> dict[str, str]:
    """Every setting's dotted key mapped to its attribute docstring, read from this module's source."""
    tree = ast.parse(inspect.getsource(struct))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else ""
            docs[prefix + node.target.id] = doc
    out: dict[str, str] = {}
    hints = struct.__annotations__
    for name, doc in docs.items():
        field = name.removeprefix(prefix)
        sub = globals().get(str(hints.get(field, "")))
        if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
            out.update(field_docs(sub, prefix=f"{name}."))
        else:
            out[name] = doc
    return out
