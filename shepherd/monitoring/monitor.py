"""The monitor: drift windows, ground-truth performance and streaming detectors, per deployment and version.

A version is the model's (deployment, model, version): a deployment's name may serve another model after an
undeploy, whose versions count from 1 again, and each model's rows, windows, labels and detectors stay apart.

A daemon thread runs `tick()` every `monitoring.interval_s` (tests call it directly); the drift
kernels themselves run on a thread of their own at `monitoring.kernel_priority` (`KernelThread`),
once `start()` has made it. For every deployment and every version it has logged predictions
for, one tick:

1. **Drift windows (tumbling).** By count (`drift.window_rows`: the next N logged rows after the
   last window) or by time (`drift.window_seconds`: aligned to multiples of the window length
   since the Unix epoch, and closed once its end has passed and every row logged before its end
   is in DuckDB: `PredictionLog.durable_before`, so a slow or failing flush delays the window
   instead of leaving rows out of it).
   Each complete window is compared with the version's reference profile: numeric features get
   PSI, KS + p-value, Wasserstein-1 (raw and over the reference std) and Jensen-Shannon;
   categorical ones chi-square + p-value and Jensen-Shannon; the outputs get the same tests
   (prediction drift). P-values are Benjamini-Hochberg corrected across the window's features.
   A feature drifts when its PSI > `psi_threshold` or its corrected p-value < `p_value`; the
   window drifts when the share of drifted features (among those with data) >= `drift_share`.
   Results go to DuckDB, Prometheus gauges, and a Warning alert when the window drifted.
   A version's reference profile is built from its bundle as soon as a deployment loads it
   (`version_loaded`: deploy, start-up), on this thread, rather than by the first pass that finds
   the version's logged rows while the version serves. A version without one gets no drift
   windows (a `reference_missing` log event once); an operator can adopt its first logged rows
   (`shepherd reference adopt`).
2. **Performance.** When new labels arrived, the most recent `performance.window_labels`
   labelled rows are scored (`performance.py`) and compared with the version's bundle metric
   (`baseline_metric`): a relative drop above `critical_drop` raises Critical, above
   `emergency_drop` Emergency.
3. **Streaming detectors.** ADWIN and Page-Hinkley watch the score stream (the top class score,
   or the predicted value of a regressor) of every new logged row; DDM (classifiers) or ADWIN
   (regressors, on the absolute error) watches the error stream of new labels. A detection
   raises a Warning. Detector state lives in memory and starts fresh after a restart.

Policies are re-read when their file changes; an invalid file is refused (logged, and the last
good policy stays in force).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa
import structlog
from prometheus_client import CollectorRegistry, Gauge

from shepherd.config import Config, Policy, kernel_threads, load_policy
from shepherd.errors import ConfigError, ShepherdError
from shepherd.monitoring import kernels, performance
from shepherd.monitoring.detectors import ADWIN, DDM, PageHinkley
from shepherd.monitoring.layout import Layout, Targets, build_layout, targets
from shepherd.monitoring.references import References, VersionReference
from shepherd.store.events import EventStore, list_matrix

if TYPE_CHECKING:
    from shepherd.serving.engine import ModelRunner

log = structlog.get_logger()
MAX_WINDOWS_PER_TICK = 50
"""Windows a pass evaluates per version at most: a bounded query and a bounded pass after a long stop."""
MAX_UNRAISED = 1000
"""Alerts kept for a retry while their store fails; past that the oldest is logged (alert_lost) and dropped."""
CATCH_UP_PAUSE_S = 0.1
"""The pause before the next pass when one left complete windows waiting (more than MAX_WINDOWS_PER_TICK):
the monitor keeps up with any rate its CPU share allows, not with at most MAX_WINDOWS_PER_TICK windows per interval_s."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

VersionInfo = Callable[[str, int], tuple[dict[str, Any], dict[str, float], dict[str, np.ndarray] | None]]
"""(model, version) -> (signature, bundle metrics, reference table or None)."""


class StreamState:
    """Detectors of one (deployment, model, version), and how far each stream has been read."""

    def __init__(self, classification: bool) -> None:
        self.score_adwin, self.score_ph = ADWIN(), PageHinkley()
        self.error = DDM() if classification else ADWIN()
        self.score_seq = 0
        self.error_received: datetime | None = None
        self.feedback_seen = -1  # EventStore.feedback_generation when the error stream last ran through


class KernelThread:
    """The drift kernels' own thread, at `monitoring.kernel_priority`; `thread(kernel, *args)` runs one there and waits.

    The kernels release the GIL, so only the OS scheduler decides when they run. On the monitor's
    thread they ran at the event loop's priority, and on a machine with few CPUs a window pass
    then competed with the event loop and the HTTP clients for a CPU. At a lower priority they get
    what CPU time the serving path leaves. Only the kernels run here: this thread holds the GIL
    just to start one and to return its results, so a low priority does not keep the GIL from the
    event loop (a thread preempted while it holds the GIL would).
    """

    def __init__(self, threads: int, priority: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="drift-kernels", initializer=self._init, initargs=(threads, priority))

    @staticmethod
    def _init(threads: int, priority: str) -> None:
        import numba

        # Thread-local. Worker threads that this thread starts (OpenMP's team of a parallel kernel)
        # inherit its priority; on a 2-CPU box a kernel runs on this thread alone.
        numba.set_num_threads(threads)
        try:
            if priority == "low":
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # on Linux, per thread
            elif priority == "idle":
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
        except (OSError, AttributeError) as err:  # not Linux, or refused: run at normal priority
            log.warning("kernel_priority_not_set", priority=priority, error=str(err))

    def __call__(self, kernel: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(kernel, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Monitor:
    def __init__(
        self, config: Config, events: EventStore, references: References, version_info: VersionInfo,
        deployments: Callable[[], list[str]], alerts: Any, registry: CollectorRegistry,
        run_model: Callable[[str, int], ModelRunner | None], durable_before: Callable[[], int] | None = None,
        slotted: Callable[[str], set[tuple[str, int]]] | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.references = references
        self.version_info = version_info
        self.deployments = deployments
        self.alerts = alerts
        self.run_model = run_model
        # PredictionLog.durable_before: time windows close when every row of theirs is in DuckDB
        self.durable_before = durable_before
        # The (model, version)s in a deployment's slots: a version in none gets no "no data" time windows (None: all do)
        self.slotted = slotted
        self._policies: dict[str, tuple[float | None, Path | None, Policy]] = {}
        self._layouts: dict[tuple[str, int], Layout] = {}
        self._streams: dict[tuple[str, str, int], StreamState] = {}
        # (deployment, model, version) -> EventStore.feedback_generation when its evaluation last ran through (the error
        # stream keeps its own in StreamState)
        self._evaluated: dict[tuple[str, str, int], int] = {}
        # The error streams read labels received from now on: the detectors' state starts fresh in each
        # process, and replaying every stored label into them would raise an old incident again.
        self._labels_from = datetime.now(UTC)
        self._warned: set[tuple[str, int]] = set()
        self._no_baseline: set[tuple[str, int, str]] = set()  # (model, version, metric) without a bundle baseline, logged once
        self._unraised: deque[tuple] = deque()  # alerts whose record failed, retried at the next pass (see _alert)
        self._lock = threading.Lock()  # one tick at a time (thread and explicit callers)
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop, or a version was loaded (version_loaded)
        self._loaded: list[tuple[str, str, int, ModelRunner]] = []  # versions whose reference to prepare, oldest first
        self._loaded_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._kernels: KernelThread | None = None  # from start(); tick() without it runs the kernels on its own thread
        labels = ["deployment", "model", "version"]
        self.g_share = Gauge("shepherd_drift_share", "Share of drifted features in the last window.", labels, registry=registry)
        self.g_drifted = Gauge("shepherd_drift_detected", "1 when the last window drifted.", labels, registry=registry)
        self.g_rows = Gauge("shepherd_drift_window_rows", "Rows in the last window.", labels, registry=registry)
        self.g_psi = Gauge("shepherd_drift_feature_psi", "PSI of each feature in the last window.", [*labels, "feature"], registry=registry)
        self.g_pval = Gauge(
            "shepherd_drift_feature_pvalue", "Corrected p-value of each feature in the last window.", [*labels, "feature"], registry=registry
        )
        self.g_perf = Gauge("shepherd_model_performance", "Metric over the latest labelled rows.", [*labels, "metric"], registry=registry)
        self.g_pass = Gauge(
            "shepherd_monitor_pass_seconds",
            "Wall time of the monitor's last pass.", registry=registry,
        )
        self.g_stream = Gauge(
            "shepherd_stream_drift_detections", "Streaming detector detections since start.", [*labels, "stream"], registry=registry
        )
        self.g_ks = Gauge(
            "shepherd_drift_ks_pvalues",
            "Exact KS p-values (unequal sizes) since start: read from the kernels' table, or computed.", ["source"], registry=registry,
        )
        self.g_ks.labels("table").set_function(lambda: float(kernels.KS_MEMO.counts[1]))
        self.g_ks.labels("computed").set_function(lambda: float(kernels.KS_MEMO.counts[2]))
        self.g_behind = Gauge(
            "shepherd_drift_behind",
            f"1 when the last pass left complete drift windows waiting (a pass evaluates at most {MAX_WINDOWS_PER_TICK} per "
            f"version; the next one then follows after {CATCH_UP_PAUSE_S} s).", labels, registry=registry,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Compile the kernels in the background (the first window does not pay for it), then tick every interval."""
        self._kernels = KernelThread(self.kernel_threads(), self.config.monitoring.kernel_priority)
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._kernels is not None:
            self._kernels.close()

    def version_loaded(self, deployment: str, model: str, version: int, run: ModelRunner) -> None:
        """A deployment loaded a version: profile its reference on the monitor's thread now (never blocks).

        A deployed candidate has its profile long before it is promoted. Otherwise the profile (the
        model run over the bundle's reference rows) would be built by the first pass that finds the
        version's logged rows, while the version serves.
        """
        with self._loaded_lock:
            self._loaded.append((deployment, model, version, run))
        self._wake.set()

    def _prepare_loaded(self) -> None:
        """Build the reference profiles of the versions loaded since the last call (those without one)."""
        with self._loaded_lock:
            todo, self._loaded = self._loaded, []
        for deployment, model, version, run in todo:
            try:
                with self._lock:
                    self.reference(deployment, model, version, run)
            except Exception:
                log.exception("reference_prepare_failed", deployment=deployment, model=model, version=version)

    def kernel_threads(self) -> int:
        """Threads for the drift kernels on their thread (KernelThread): `config.kernel_threads`, which serving's split also uses."""
        return kernel_threads(self.config)

    def _run(self) -> None:
        # Compilation gets its own daemon thread: a first start (no Numba cache yet) compiles for
        # tens of seconds, and a shutdown must not wait for it. Numba writes its cache files by
        # rename, so a compile cut short at exit leaves no broken cache behind.
        compiled = threading.Event()
        threading.Thread(target=self._compile, args=(compiled,), name="drift-compile", daemon=True).start()
        while not compiled.is_set():
            if self._stop.wait(0.1):
                return
        next_tick = time.monotonic() + self.config.monitoring.interval_s
        while not self._stop.is_set():
            self._prepare_loaded()
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)  # a version loaded meanwhile is prepared at once (the list is drained above)
                self._wake.clear()
                continue
            behind = False
            try:
                behind = self.tick()
            except Exception:
                log.exception("monitor_tick_failed")
            # Behind (more complete windows than one pass takes): the next pass follows after a short
            # pause, so the windows keep up with the traffic instead of falling further behind every interval.
            next_tick = time.monotonic() + (min(CATCH_UP_PAUSE_S, self.config.monitoring.interval_s) if behind
                                            else self.config.monitoring.interval_s)

    @staticmethod
    def _compile(done: threading.Event) -> None:
        try:
            seconds = kernels.warm_up()
            log.info("drift_kernels_ready", seconds=round(seconds, 3))
        except Exception:
            log.exception("drift_kernels_warm_up_failed")
        finally:
            done.set()

    # -- policies and layouts -------------------------------------------------------------

    def policy(self, deployment: str) -> Policy:
        """The deployment's policy, re-read when its file changed; an invalid file keeps the last good one."""
        directory = Path(self.config.monitoring.policies_dir)
        path = next((p for p in (directory / f"{deployment}.toml", directory / "default.toml") if p.is_file()), None)
        mtime = path.stat().st_mtime if path is not None else None
        cached = self._policies.get(deployment)
        if cached is not None and cached[0] == mtime and cached[1] == path:
            return cached[2]
        try:
            policy, _ = load_policy(directory, deployment)
        except ConfigError as err:
            log.error("policy_invalid", deployment=deployment, error=str(err))
            if cached is not None:
                self._policies[deployment] = (mtime, path, cached[2])
                return cached[2]
            raise
        self._policies[deployment] = (mtime, path, policy)
        if cached is not None:
            log.info("policy_reloaded", deployment=deployment, file=str(path) if path else None)
        return policy

    def forget_policies(self) -> None:
        """Re-read every policy file on next use (a reload)."""
        self._policies.clear()

    def layout_of(self, model: str, version: int, signature: dict[str, Any] | None = None) -> Layout:
        key = (model, version)
        layout = self._layouts.get(key)
        if layout is None:
            sig, _, table = self.version_info(model, version)
            columns = None if table is None else [c for c, a in table.items() if a.dtype.kind in "iufb"]
            layout = self._layouts[key] = build_layout(signature or sig, columns)
        return layout

    def targets_of(self, deployment: str, model: str, version: int) -> Targets | None:
        """What `deployment`'s performance policy makes of a version's outputs (task, label, scores); None when that
        cannot be told (the version left the registry, the policy file cannot be read)."""
        try:
            return targets(self.layout_of(model, version), self.policy(deployment).performance)
        except ShepherdError:
            return None

    def task_of(self, deployment: str, model: str, version: int) -> str | None:
        """"classification" or "regression" for a version served by `deployment`; None when that cannot be told (targets_of)."""
        t = self.targets_of(deployment, model, version)
        return None if t is None else t.task

    def feature_names(self, model: str, version: int) -> tuple[list[str], list[str]] | None:
        """A version's input feature and output names as the log stores them (x, y); None when it is not in the registry."""
        try:
            layout = self.layout_of(model, version)
        except ShepherdError:  # deleted from the registry since it logged
            return None
        return layout.x_names, layout.y_names

    def reference(
        self, deployment: str, model: str, version: int, run: ModelRunner | None = None, *, loaded_only: bool = False,
    ) -> VersionReference | None:
        """The version's reference profile, built from its bundle the first time (`run`: its model, else a loaded session of it).

        A profile is stored once and never changed, and its outputs' part needs the model. `loaded_only`
        (a request that only reads): build none while no session of the version is loaded, rather than
        store one without outputs for good; the load builds it."""
        ref = self.references.get(model, version)
        if ref is None and (model, version) not in self._warned:
            run = run or self.run_model(model, version)
            if run is None and loaded_only:
                return None
            _, _, table = self.version_info(model, version)
            policy = self.policy(deployment).drift
            if table is not None:
                ref = self.references.from_bundle(
                    model, version, table, self.layout_of(model, version), policy.bins, policy.categorical, run,
                )
            if ref is None:
                self._warned.add((model, version))
                log.warning("reference_missing", deployment=deployment, model=model, version=version)
        return ref

    # -- one pass -------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> bool:
        """One pass over every deployment's logged versions; True when complete drift windows are still waiting
        (some version had more than MAX_WINDOWS_PER_TICK), so that the caller passes again soon."""
        behind = False
        with self._lock:
            started = time.perf_counter()
            now = now or datetime.now(UTC)
            self._raise_unraised()
            generation = self.events.feedback_generation
            for deployment in self.deployments():
                try:
                    policy = self.policy(deployment)
                except ConfigError:
                    continue
                for model, version in self.events.versions_logged(deployment):
                    try:
                        waiting = self._windows(deployment, model, version, policy, now)
                        self.g_behind.labels(deployment, model, str(version)).set(1 if waiting else 0)
                        behind |= waiting
                    except Exception:
                        log.exception("monitor_windows_failed", deployment=deployment, model=model, version=version)
                    # Apart from the windows, and from each other: a failed step must not cost the labels that arrived
                    # the other steps. Feedback counts as seen by a step once it ran through (a failed one tries again).
                    key = (deployment, model, version)
                    if generation != self._evaluated.get(key):
                        try:
                            self._performance(deployment, model, version, policy, now)
                            self._evaluated[key] = generation
                        except Exception:
                            log.exception("monitor_performance_failed", deployment=deployment, model=model, version=version)
                    try:
                        self._streams_step(deployment, model, version, policy, generation)
                    except Exception:
                        log.exception("monitor_streams_failed", deployment=deployment, model=model, version=version)
            self.g_pass.set(time.perf_counter() - started)
        return behind

    # -- drift windows --------------------------------------------------------------------

    def _windows(self, deployment: str, model: str, version: int, policy: Policy, now: datetime) -> bool:
        """Evaluate and store the complete windows waiting (MAX_WINDOWS_PER_TICK at most); True when more are waiting."""
        ref = self.reference(deployment, model, version)
        if ref is None:
            return False
        dp = policy.drift
        window_id, last_seq, last_end = self.events.last_window(deployment, model, version)
        if dp.window_rows:
            # every complete window waiting (up to the limit): one query, and one transaction to store them all;
            # one window's rows beyond the limit tell whether another complete one is waiting
            limit = dp.window_rows * MAX_WINDOWS_PER_TICK
            table = self.events.window_rows(deployment, model, version, last_seq, limit + dp.window_rows)
            more = table.num_rows == limit + dp.window_rows
            complete = min(table.num_rows // dp.window_rows, MAX_WINDOWS_PER_TICK)
            # x and y of all the windows converted at once, and each kernel run once over all of
            # them: every conversion and kernel call lets the event loop's GIL go and come back,
            # and every such hand-off costs it (benchmarks/README.md)
            done = []
            if complete:
                bounds = np.arange(complete + 1) * dp.window_rows
                n = bounds[-1]
                results = self._drift_columns(model, version, ref, list_matrix(table, "x")[:n], list_matrix(table, "y")[:n], bounds)
                # the windows' seq values, first and last timestamps and corrected p-values in a few
                # calls for all of them: pyarrow and numpy calls let the GIL go, and made per window
                # they kept the serving event loop from it for milliseconds (benchmarks/README.md)
                adjusted = _adjusted_pvalues(results)
                seq = table.column("seq").to_numpy()
                ends = table.column("ts").take(np.stack([bounds[:-1], bounds[1:] - 1], axis=1).ravel()).to_pylist()
                for k in range(complete):
                    window_id += 1
                    done.append(self._evaluate(
                        deployment, model, version, window_id, ends[2 * k], ends[2 * k + 1], seq[bounds[k]:bounds[k + 1]],
                        policy, now, last_seq, results[k], adjusted[k]))
                    last_seq = done[-1].window["last_seq"]
            self._store(done, policy)
            return more
        length = timedelta(seconds=dp.window_seconds)
        evaluated_count = 0
        while True:
            if last_end is None:
                first = self.events.first_ts(deployment, model, version)
                if first is None:
                    return False
                start = EPOCH + length * math.floor((first - EPOCH) / length)
            else:
                start = last_end
            end = start + length
            if self.durable_before is None:  # no prediction log here: allow the flush interval the log would take
                if end + timedelta(seconds=self.config.monitoring.flush_interval_s) > now:
                    return False
            elif end > now or end > datetime.fromtimestamp(self.durable_before() / 1e6, UTC):
                return False  # not over yet, or rows of it are still on their way to DuckDB (a slow or failing flush)
            if evaluated_count == MAX_WINDOWS_PER_TICK:
                return True  # another window has closed: for the next pass
            table = self.events.window_by_time(deployment, model, version, start, end)
            if not table.num_rows and self.slotted is not None and (model, version) not in self.slotted(deployment):
                # A version no slot holds (retired, replaced) logs nothing: no "no data" windows for that time, which would
                # go on for ever and crowd out the windows of the versions serving. Its windows go on from its next row.
                later = self.events.first_ts(deployment, model, version, since=end)
                if later is None:
                    return False
                last_end = EPOCH + length * math.floor((later - EPOCH) / length)
                continue
            window_id += 1
            x, y = list_matrix(table, "x"), list_matrix(table, "y")
            (results,) = self._drift_columns(model, version, ref, x, y, np.array([0, table.num_rows]))
            evaluated = self._evaluate(
                deployment, model, version, window_id, start, end, table.column("seq").to_numpy(), policy, now, last_seq, results,
                _adjusted_pvalues([results])[0])
            last_seq = evaluated.window["last_seq"]
            self._store([evaluated], policy)
            last_end = end
            evaluated_count += 1

    def _drift_columns(
        self, model: str, version: int, ref: VersionReference, x: np.ndarray, y: np.ndarray, bounds: np.ndarray,
    ) -> list[dict[str, np.ndarray]]:
        """Per-feature result columns (inputs, then outputs) of each window x[bounds[k]:bounds[k + 1]] (and y's)."""
        layout = self.layout_of(model, version)
        if x.shape[1] == 0:
            x = np.empty((len(x), len(layout.x_names)))
        if y.shape[1] == 0:
            y = np.empty((len(y), len(layout.y_names)))
        call = self._kernels or kernels.direct
        parts = [_profile_columns(ref.inputs, layout.x_names, x, "input", bounds, call)]
        if ref.outputs is not None:
            parts.append(_profile_columns(ref.outputs, layout.y_names, y, "output", bounds, call))
        return _joined(parts)

    def _evaluate(
        self, deployment: str, model: str, version: int, window_id: int, start: datetime, end: datetime,
        seq: np.ndarray, policy: Policy, now: datetime, after_seq: int, f: dict[str, np.ndarray], adjusted: np.ndarray,
    ) -> Evaluated:
        """Judge one window (its rows' `seq` values) from its per-feature results `f` (from _drift_columns)
        and their corrected p-values (`adjusted`, its row of _adjusted_pvalues); nothing stored yet."""
        dp = policy.drift
        has = f["has_data"]
        f["pvalue_adjusted"] = adjusted
        with np.errstate(invalid="ignore"):
            f["drifted"] = has & ((f["psi"] > dp.psi_threshold) | (f["pvalue_adjusted"] < dp.p_value))
        verdict = kernels.dataset_verdict(f["drifted"], has, dp.drift_share)
        first_seq = int(seq[0]) if len(seq) else after_seq
        last_seq = int(seq[-1]) if len(seq) else after_seq
        window = {
            "deployment": deployment, "model": model, "version": version, "window_id": window_id,
            "start_ts": start, "end_ts": end, "first_seq": first_seq, "last_seq": last_seq, "n_rows": len(seq),
            "n_features": verdict.n_features, "n_evaluated": verdict.n_evaluated, "n_drifted": verdict.n_drifted,
            "share": verdict.share_drifted, "drifted": verdict.drifted, "computed_at": now,
        }
        return Evaluated(window, f)

    def _store(self, evaluated: list[Evaluated], policy: Policy) -> None:
        """Store a pass's windows in one transaction, then update the gauges and raise what drifted.

        The gauges show the newest window; one log line sums up the pass. At thousands of requests
        a second, count windows close several times a second: gauges set per window were overwritten
        before any scrape, and a log line per window flooded the journal.
        """
        if not evaluated:
            return
        self.events.save_windows([e.window for e in evaluated], _features_table(evaluated))
        last = evaluated[-1].window
        deployment, model, version = last["deployment"], last["model"], last["version"]
        labels = (deployment, model, str(version))
        self.g_share.labels(*labels).set(last["share"])
        self.g_drifted.labels(*labels).set(1 if last["drifted"] else 0)
        self.g_rows.labels(*labels).set(last["n_rows"])
        f = evaluated[-1].features
        for name, psi, p in zip(f["feature"], f["psi"].tolist(), f["pvalue_adjusted"].tolist()):
            if math.isfinite(psi):
                self.g_psi.labels(*labels, name).set(psi)
            if math.isfinite(p):
                self.g_pval.labels(*labels, name).set(p)
        drifted = [e for e in evaluated if e.window["drifted"]]
        log.info(
            "drift_windows", deployment=deployment, model=model, version=version, windows=len(evaluated),
            first_window_id=evaluated[0].window["window_id"], last_window_id=last["window_id"],
            rows=sum(e.window["n_rows"] for e in evaluated), drifted_windows=len(drifted), last_share=round(last["share"], 4),
        )
        for e in drifted:
            window, window_id = e.window, e.window["window_id"]
            features = [str(n) for n in e.features["feature"][e.features["drifted"]]]
            self._alert(
                deployment, "data_drift", "warning", policy,
                f"{deployment}: {model} v{version} drifted in window {window_id}: {window['n_drifted']} of "
                f"{window['n_evaluated']} features ({window['share']:.0%} >= {policy.drift.drift_share:.0%})",
                {"model": model, "version": version, "window_id": window_id, "features": features[:50], "share": window["share"]},
                key=_version_key("data_drift", model, version),
            )

    # -- performance ----------------------------------------------------------------------

    def evaluate_performance(self, deployment: str, model: str, version: int, policy: Policy) -> dict[str, Any] | None:
        """Metrics over the latest labelled rows of a version (None when it has none)."""
        pp = policy.performance
        table = self.events.labelled(deployment, model, version, pp.window_labels)
        if table.num_rows == 0:
            return None
        t = targets(self.layout_of(model, version), pp)
        metrics = _metrics(t, list_matrix(table, "y"), table.column("label").to_numpy())
        if metrics is None:
            return None
        _, bundle_metrics, _ = self.version_info(model, version)
        name = pp.baseline_metric or ("accuracy" if t.task == "classification" else "rmse")
        baseline = bundle_metrics.get(name)
        current = metrics.get(name)
        drop = None if baseline is None or current is None else performance.relative_drop(name, float(baseline), float(current))
        return {
            "deployment": deployment, "model": model, "version": version, "task": t.task, "n_labels": table.num_rows,
            "metrics": metrics, "baseline_metric": name, "baseline": baseline, "current": current, "drop": drop,
        }

    def _performance(self, deployment: str, model: str, version: int, policy: Policy, now: datetime) -> None:
        """Score a version again (new feedback arrived since the last pass)."""
        result = self.evaluate_performance(deployment, model, version, policy)
        if result is None:
            return
        self.events.save_performance({**result, "computed_at": now, "metrics": msgspec.json.encode(result["metrics"]).decode()})
        for name, value in result["metrics"].items():
            if value is not None:
                self.g_perf.labels(deployment, model, str(version), name).set(value)
        pp = policy.performance
        drop = result["drop"]
        if result["baseline"] is None and (model, version, result["baseline_metric"]) not in self._no_baseline:
            self._no_baseline.add((model, version, result["baseline_metric"]))
            log.warning(
                "performance_baseline_missing", deployment=deployment, model=model, version=version, metric=result["baseline_metric"],
                effect="no Critical or Emergency alert for this version; set [performance] baseline_metric to a metric its bundle has",
            )
        if drop is None or result["n_labels"] < pp.min_labels:
            return
        level = "emergency" if drop > pp.emergency_drop else "critical" if drop > pp.critical_drop else None
        if level:
            name = result["baseline_metric"]
            self._alert(
                deployment, "performance_drop", level, policy,
                f"{deployment}: {model} v{version} {name} {result['current']:.4f} is {drop:.1%} worse than its baseline "
                f"{result['baseline']:.4f} over {result['n_labels']} labelled requests",
                {"model": model, "version": version, "metric": name, "baseline": result["baseline"], "current": result["current"],
                 "drop": drop, "n_labels": result["n_labels"]},
                key=_version_key("performance_drop", model, version),
            )

    # -- streaming detectors --------------------------------------------------------------

    def _streams_step(self, deployment: str, model: str, version: int, policy: Policy, generation: int) -> None:
        """Feed the score stream its new rows and, when feedback arrived since it last ran through (`generation`:
        EventStore.feedback_generation), the error stream its new labels."""
        layout = self.layout_of(model, version)
        t = targets(layout, policy.performance)
        key = (deployment, model, version)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = StreamState(t.task == "classification")
            state.score_seq = self.events.last_window(deployment, model, version)[1]  # start from the present, not the whole history
            state.error_received = self._labels_from
        labels = (deployment, model, str(version))
        new = self.events.outputs_since(deployment, model, version, state.score_seq, 100_000)
        if new.num_rows:
            state.score_seq = int(new.column("seq")[-1].as_py())
            y = list_matrix(new, "y")
            if t.score_indices:
                score = y[:, t.score_indices].max(axis=1)
            elif t.label_index is not None:
                score = y[:, t.label_index]
            else:
                score = np.empty(0)
            score = np.ascontiguousarray(score[np.isfinite(score)], dtype=np.float64)
            hits = len(state.score_adwin.update_many(score)) + len(state.score_ph.update_many(score)) if len(score) else 0
            if hits:
                self.g_stream.labels(*labels, "score").inc(hits)
                self._alert(
                    deployment, "score_stream_drift", "warning", policy,
                    f"{deployment}: {model} v{version}: the prediction score stream changed (ADWIN / Page-Hinkley)",
                    {"model": model, "version": version, "detections": hits}, key=_version_key("score_stream", model, version),
                )
        if generation == state.feedback_seen:
            return
        labelled = self.events.labelled_since(deployment, model, version, state.error_received)
        if labelled.num_rows and t.label_index is not None:
            state.error_received = labelled.column("received_at")[-1].as_py()
            pred = list_matrix(labelled, "y")[:, t.label_index]
            truth = labelled.column("label").to_numpy()
            errors = (pred != truth).astype(np.float64) if t.task == "classification" else np.abs(pred - truth)
            hits = len(state.error.update_many(np.ascontiguousarray(errors)))
            if hits:
                self.g_stream.labels(*labels, "error").inc(hits)
                self._alert(
                    deployment, "error_stream_drift", "warning", policy,
                    f"{deployment}: {model} v{version}: the error rate changed ({type(state.error).__name__})",
                    {"model": model, "version": version, "detections": hits}, key=_version_key("error_stream", model, version),
                )
        state.feedback_seen = generation

    # -- queries for the API and CLI -------------------------------------------------------

    def drift_history(self, deployment: str, start: datetime | None, end: datetime | None, limit: int) -> list[dict[str, Any]]:
        """Windows that ended in [start, end), newest first, each with its per-feature results and its performance
        (`window_performance`)."""
        windows = self.events.windows(deployment, start, end, limit)
        feats = self.events.window_features(deployment, [(w["version"], w["window_id"]) for w in windows])
        by_key: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for f in feats:
            by_key.setdefault((f["version"], f["window_id"]), []).append(
                {k: v for k, v in f.items() if k not in ("deployment", "version", "window_id")}
            )
        scored = self.window_performance(deployment, windows)
        return [
            {**w, "features": by_key.get((w["version"], w["window_id"]), []), "performance": scored.get((w["version"], w["window_id"]))}
            for w in windows
        ]

    def window_performance(self, deployment: str, windows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
        """{(version, window_id): {"task", "n_labels", "metrics"}} for the windows with labelled rows, computed when asked
        (labels that arrive late count). Leaves out a window whose version's targets cannot be told (targets_of)."""
        spans = [(w["model"], w["version"], w["window_id"], w["first_seq"], w["last_seq"]) for w in windows if w["n_rows"]]
        if not spans:
            return {}
        table = self.events.window_labelled(deployment, spans)
        if not table.num_rows:
            return {}
        models = {(w["version"], w["window_id"]): w["model"] for w in windows}
        versions = table.column("version").to_numpy()
        ids = table.column("window_id").to_numpy()
        starts = np.flatnonzero(np.r_[True, (versions[1:] != versions[:-1]) | (ids[1:] != ids[:-1])])
        found: dict[tuple[str, int], Targets | None] = {}  # by model and version: one policy and layout lookup each
        out = {}
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(ids)]):
            key = (int(versions[a]), int(ids[a]))
            mv = (models[key], key[0])
            if mv not in found:
                found[mv] = self.targets_of(deployment, *mv)
            t = found[mv]
            if t is None:
                continue
            rows = table.slice(a, b - a)  # one window: one version, so one width of y
            metrics = _metrics(t, list_matrix(rows, "y"), rows.column("label").to_numpy())
            if metrics is not None:
                out[key] = {"task": t.task, "n_labels": b - a, "metrics": metrics}
        return out

    def adopt_reference(self, deployment: str, model: str, version: int, rows: int, actor: str) -> Any:
        dp = self.policy(deployment).drift
        info = self.references.adopt(model, version, rows, self.layout_of(model, version), dp.bins, dp.categorical, actor)
        self._warned.discard((model, version))
        return info

    def _alert(self, deployment: str, kind: str, level: str, policy: Policy, message: str, details: dict, *, key: str) -> None:
        """Raise an alert; one that cannot be recorded (the SQLite write failed) waits for the next pass.

        What it alerts on (a stored drift window, a performance evaluation) is not evaluated again,
        so a failed alert dropped here would be lost, and with it any later alert of the same pass."""
        if self.alerts is None:
            log.warning("alert", deployment=deployment, kind=kind, level=level, message=message)
            return
        call = (deployment, kind, level, message, details, key, sinks_of(policy))
        if not self._raise(call):
            if len(self._unraised) == MAX_UNRAISED:
                dropped = self._unraised.popleft()
                log.error("alert_lost", deployment=dropped[0], kind=dropped[1], level=dropped[2], message=dropped[3])
            self._unraised.append(call)

    def _raise(self, call: tuple) -> bool:
        deployment, kind, level, message, details, key, sinks = call
        try:
            self.alerts.raise_alert(deployment, kind, level, message, details, key=key, sinks=sinks)
            return True
        except Exception:
            log.exception("alert_not_recorded", deployment=deployment, kind=kind, level=level, retry="next monitor pass")
            return False

    def _raise_unraised(self) -> None:
        """Retry, in order, the alerts that earlier passes could not record; stop at the first that still fails."""
        while self._unraised and self._raise(self._unraised[0]):
            self._unraised.popleft()


def sinks_of(policy: Policy) -> Any:
    from shepherd.monitoring.alerts import AlertSinks

    a = policy.alerts
    return AlertSinks(
        cooldown_s=a.cooldown_s, webhook_url=a.webhook_url, webhook_timeout_s=a.webhook_timeout_s,
        webhook_retries=a.webhook_retries, webhook_backoff_s=a.webhook_backoff_s,
    )


FEATURE_SCHEMA = pa.schema([
    ("deployment", pa.string()), ("version", pa.int32()), ("window_id", pa.int64()), ("feature", pa.string()),
    ("role", pa.string()), ("kind", pa.string()), ("n", pa.int64()), ("has_data", pa.bool_()),
    ("psi", pa.float64()), ("ks", pa.float64()), ("ks_pvalue", pa.float64()), ("wasserstein", pa.float64()),
    ("wasserstein_norm", pa.float64()), ("js", pa.float64()), ("chi2", pa.float64()), ("chi2_pvalue", pa.float64()),
    ("pvalue_adjusted", pa.float64()), ("missing_rate", pa.float64()), ("ref_missing_rate", pa.float64()), ("drifted", pa.bool_()),
])
STATISTICS = ("psi", "ks", "ks_pvalue", "wasserstein", "wasserstein_norm", "js", "chi2", "chi2_pvalue")
"""Per-feature statistics that only a feature with data has (NaN, stored NULL, otherwise)."""


class Evaluated:
    """One evaluated window: its drift_windows row, and its per-feature results as columns.

    `features` holds arrays in feature order: `feature`, `role` and `kind` (str), `n`, `has_data`,
    `drifted`, and a float64 array per statistic of FEATURE_SCHEMA, NaN where it has no value.
    """

    __slots__ = ("window", "features")

    def __init__(self, window: dict[str, Any], features: dict[str, np.ndarray]) -> None:
        self.window = window
        self.features = features


def _version_key(prefix: str, model: str, version: int) -> str:
    """The dedup key of an alert about one version of a deployment: the model is part of it, as a deployment's name may
    serve another model whose versions count from 1 again (SQLite migration 6 moved open alerts' older keys to it)."""
    return f"{prefix}:{model}:{version}"


def _metrics(t: Targets, y: np.ndarray, truth: np.ndarray) -> dict[str, float | None] | None:
    """Performance metrics of predictions `y` (logged outputs) against labels `truth`; None when no output is the label."""
    if t.label_index is None:
        return None
    pred = y[:, t.label_index]
    if t.task == "classification":
        return performance.classification(truth, pred, y[:, t.score_indices] if t.score_indices else None)
    return performance.regression(truth, pred)


def _profile_columns(
    profile: Any, names: list[str], matrix: np.ndarray, role: str, bounds: np.ndarray, call: kernels.KernelCall,
) -> list[dict[str, np.ndarray]]:
    """Run the kernels (through `call`) for one profile over the matching columns of each window: one array per result column."""
    index = {n: j for j, n in enumerate(names)}
    parts: list[list[dict[str, np.ndarray]]] = []
    if profile.numeric:
        cols = np.ascontiguousarray(matrix[:, [index[n] for n in profile.numeric_names]])
        nan = np.full(len(profile.numeric_names), np.nan)
        parts.append([
            _result_columns(res, role, "numeric", {
                "psi": res.psi, "ks": res.ks_stat, "ks_pvalue": res.ks_pvalue, "wasserstein": res.wasserstein,
                "wasserstein_norm": res.wasserstein_norm, "js": res.js, "chi2": nan, "chi2_pvalue": nan,
            })
            for res in kernels.numeric_drift_windows(profile, cols, bounds, call)
        ])
    if profile.categorical:
        # both the reference and the window are float64 columns here, so categories compare alike
        codes = profile.categorical_codes({n: matrix[:, index[n]] for n in profile.categorical_names})
        nan = np.full(len(profile.categorical_names), np.nan)
        parts.append([
            _result_columns(res, role, "categorical", {
                "psi": nan, "ks": nan, "ks_pvalue": nan, "wasserstein": nan, "wasserstein_norm": nan, "js": res.js,
                "chi2": res.chi2_stat, "chi2_pvalue": res.chi2_pvalue,
            })
            for res in kernels.categorical_drift_windows(profile, codes, bounds, call)
        ])
    if not parts:  # a profile without features
        empty = {key: np.empty(0, dtype=object) for key in ("feature", "role", "kind")}
        empty |= {"n": np.empty(0, dtype=np.int64), "has_data": np.empty(0, dtype=bool)}
        empty |= {key: np.empty(0) for key in (*STATISTICS, "missing_rate", "ref_missing_rate")}
        return [dict(empty) for _ in range(len(bounds) - 1)]
    return _joined(parts)


def _joined(parts: list[list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """Per window, the result columns of several feature groups one after the other."""
    return [{key: np.concatenate([p[w][key] for p in parts]) for key in parts[0][w]} for w in range(len(parts[0]))]


def _adjusted_pvalues(results: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Benjamini-Hochberg across each window's features (KS p-value of a numeric one, chi-square of a
    categorical one; NaN, not counted, for a feature without data): one row per window, all the
    windows of a pass in one call (kernels.benjamini_hochberg says why)."""
    kind = results[0]["kind"]  # the same features, in the same order, in every window of a version
    has = np.stack([r["has_data"] for r in results])
    ks = np.stack([r["ks_pvalue"] for r in results])
    chi2 = np.stack([r["chi2_pvalue"] for r in results])
    return kernels.benjamini_hochberg(np.where(has, np.where(kind == "numeric", ks, chi2), np.nan))


def _result_columns(res: Any, role: str, kind: str, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A kernel result as result columns; a statistic of a feature without data is NaN."""
    has = np.asarray(res.has_data, dtype=bool)
    out: dict[str, np.ndarray] = {
        "feature": np.array(res.names, dtype=object), "role": np.full(len(has), role, dtype=object),
        "kind": np.full(len(has), kind, dtype=object), "n": np.asarray(res.n, dtype=np.int64), "has_data": has,
    }
    for key in STATISTICS:
        out[key] = np.where(has, np.asarray(stats[key], dtype=np.float64), np.nan)
    out["missing_rate"] = np.asarray(res.missing_rate, dtype=np.float64)
    out["ref_missing_rate"] = np.asarray(res.ref_missing_rate, dtype=np.float64)
    return out


def _features_table(evaluated: list[Evaluated]) -> pa.Table:
    """The drift_features rows of a pass's windows, as one Arrow table (a non-finite statistic is NULL)."""
    columns: dict[str, pa.Array] = {}
    counts = [len(e.features["feature"]) for e in evaluated]
    total = sum(counts)
    first = evaluated[0].window
    for field in FEATURE_SCHEMA:
        name = field.name
        if name == "deployment":
            columns[name] = pa.repeat(pa.scalar(first["deployment"], pa.string()), total)
        elif name == "version":
            columns[name] = pa.array(np.full(total, first["version"], dtype=np.int32))
        elif name == "window_id":
            columns[name] = pa.array(np.repeat([e.window["window_id"] for e in evaluated], counts).astype(np.int64))
        else:
            values = np.concatenate([e.features[name] for e in evaluated])
            if field.type == pa.float64():
                columns[name] = pa.array(values, pa.float64(), mask=~np.isfinite(values))
            else:
                columns[name] = pa.array(values, field.type)
    return pa.table(columns, schema=FEATURE_SCHEMA)
