"""The serving process: start-up, systemd notification, signals, config reload and file watching.

`shepherd serve` calls `run`. The order of a start: open the stores and load deployed models
(STATUS=starting), import any `--import` bundles, bind the socket, then READY=1. SIGHUP, a
`shepherd reload` (through the API) and, when `server.watch_config` is on, a change to the config
file or a policy file all go through one reload path (`shepherd.reload`): validate first, apply
second. SIGTERM drains in-flight requests, flushes the prediction log, closes the stores, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from shepherd import sched
from shepherd.errors import ShepherdError

if TYPE_CHECKING:
    from shepherd.appliance import Appliance
    from shepherd.config import Config
    from shepherd.notify import Notifier

log = structlog.get_logger()

GC_YOUNG_THRESHOLD = 10_000
"""Net new container objects before a young garbage collection (CPython's default is 700). In a
server, the objects of the requests in flight come and go by the thousand; at 700, collections ran
about a hundred times a second at 64 connections, each one walking the requests in flight, and
every tenth promoted them to the older generations, whose collections followed. At 10,000 a
collection waits for garbage that reference counting cannot free (cycles), and in a benchmark run
none happened at all (benchmarks/README.md)."""

GIL_SWITCH_INTERVAL_S = 0.0005
"""Background threads (prediction-log flusher, monitor, batcher workers) hand the GIL back to the
event loop after at most this long instead of CPython's 5 ms, which otherwise shows up whole in
the request tail latency (benchmarks/README.md)."""


class StartupError(ShepherdError):
    """The appliance could not start (bad data directory, a bundle given to --import failed)."""


def run(cfg: Config, config_path: Path | None, imports: Sequence[Path], actor: str) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. Raises StartupError before serving."""
    import uvicorn

    from shepherd import log as log_mod
    from shepherd.app import create_app
    from shepherd.appliance import Appliance
    from shepherd.notify import Notifier

    log_mod.configure(cfg.logging.level, cfg.logging.format)
    notifier = Notifier()
    try:
        appliance = Appliance(cfg, config_path)
    except ShepherdError as err:
        notifier.status(f"failed: {err.message}")
        notifier.close()
        raise StartupError(err.message) from err
    watcher = None
    try:
        notifier.status("starting: recovering stores, loading deployed models")
        appliance.start()
        for bundle in imports:
            try:
                appliance.importer.import_file(bundle, actor=actor)
            except ShepherdError as err:
                raise StartupError(f"{bundle}: {err.message}") from err
        server = _server(
            uvicorn.Config(
                create_app(cfg, appliance=appliance),
                host=cfg.server.host,
                port=cfg.server.port,
                loop="uvloop",
                http="httptools",
                log_config=None,
                access_log=False,
                lifespan="on",
                # Nothing here reads the client's address, so X-Forwarded-* rewriting (uvicorn's
                # default middleware around every request) would be work for nothing.
                proxy_headers=False,
            ),
            appliance,
            notifier,
        )
        if cfg.server.watch_config and config_path is not None:
            watcher = ConfigWatcher(appliance, server)
        settle_heap()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        # The event loop runs on this thread from here on. Threads started before (the flusher, the
        # monitor, the stores' writers) and those it starts later keep the default slice.
        sched.request_path(cfg.serving.request_slice_us, "event-loop")
        # uvicorn drains on SIGTERM, then restores the previous handler and re-raises the signal.
        # With the default handler that would kill the process before `finally` flushes the
        # prediction log and closes the stores; this one turns it into a clean exit 0.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        server.run()
        return 0 if server.started else 3
    finally:
        if watcher is not None:
            watcher.close()
        notifier.stopping()
        appliance.close()
        notifier.close()


def settle_heap() -> None:
    """Collect the garbage of start-up, freeze what is left out of the cyclic collector, and make
    young collections rare (GC_YOUNG_THRESHOLD).

    Start-up leaves ~100k long-lived objects (modules, sessions); frozen, they are never walked
    again, which keeps full collections (tens of ms each, holding the GIL) out of the request
    path's tail latency. `serve` calls this once before it binds its socket.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _server(config: Any, appliance: Appliance, notifier: Notifier) -> Any:
    """A uvicorn.Server that tells systemd when it is ready (socket bound, deployed models warm),
    pings the watchdog from the event loop, and reloads config and policies on SIGHUP."""
    import uvicorn

    from shepherd.notify import watchdog, watchdog_interval

    class Server(uvicorn.Server):
        _watchdog: asyncio.Task | None = None
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            self.loop = loop = asyncio.get_running_loop()
            # uvicorn's own count of requests being served (it keeps one task per parsed request;
            # its limit_concurrency reads the same set): a lone one can run inline at once.
            appliance.active_requests = self.server_state.tasks.__len__
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
            interval = watchdog_interval()
            if interval:
                self._watchdog = loop.create_task(watchdog(notifier, interval))
            notifier.ready(appliance.status_line())

        async def reload(self, cause: str) -> None:
            await reload(appliance, notifier, cause)

        async def shutdown(self, sockets: Any = None) -> None:
            appliance.active_requests = None
            notifier.stopping()
            notifier.status("stopping: draining in-flight requests")
            if self._watchdog is not None:
                self._watchdog.cancel()
            await super().shutdown(sockets)

    return Server(config)


async def reload(appliance: Appliance, notifier: Notifier, cause: str) -> None:
    """Validate and apply the config and policy files; on error keep the old ones and say so (log, STATUS=)."""
    import anyio

    notifier.reloading()
    try:
        result = await anyio.to_thread.run_sync(appliance.reload)
    except ShepherdError as err:
        log.error("config_reload_refused", cause=cause, error=err.message)
        notifier.send("READY=1", f"STATUS=reload refused (old config still in force): {err.message}"[:1000])
        return
    extra = f"; restart needed for {', '.join(result.restart_required)}" if result.restart_required else ""
    notifier.send("READY=1", f"STATUS={appliance.status_line()}; reloaded{extra}"[:1000])


class ConfigWatcher:
    """`server.watch_config`: reload when the config file or a *.toml in the policies directory
    changes, through the same path as SIGHUP.

    Directories are watched, not files, so an editor that saves by writing a new file and renaming
    it over the old one is seen. watchfiles (inotify) groups the events of one save: a burst of
    changes makes one reload. A reload that changes `monitoring.policies_dir` moves the watch.
    """

    def __init__(self, appliance: Appliance, server: Any) -> None:
        self.appliance = appliance
        self.server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)
        self._thread.start()

    def _targets(self) -> tuple[Path, Path]:
        config_file = Path(self.appliance.config_path).resolve()
        return config_file, Path(self.appliance.config.monitoring.policies_dir).resolve()

    def _run(self) -> None:
        import watchfiles

        while not self._stop.is_set():
            config_file, policies = self._targets()
            dirs = sorted({str(config_file.parent), *([str(policies)] if policies.is_dir() else [])})

            def relevant(change: watchfiles.Change, path: str) -> bool:
                p = Path(path)
                return p == config_file or (p.parent == policies and p.suffix == ".toml")

            log.info("config_watch_started", paths=dirs)
            try:
                for changes in watchfiles.watch(*dirs, watch_filter=relevant, stop_event=self._stop, recursive=False, raise_interrupt=False):
                    self._reload(sorted(path for _, path in changes))
                    if self._targets() != (config_file, policies):
                        break  # the policies directory moved: watch the new one
                else:
                    return  # stopped
            except Exception:
                log.exception("config_watch_failed")
                self._stop.wait(5.0)

    def _reload(self, paths: list[str]) -> None:
        loop = self.server.loop
        if loop is None or loop.is_closed():
            return
        log.info("config_files_changed", files=paths)
        future = asyncio.run_coroutine_threadsafe(self.server.reload("file change"), loop)
        try:
            future.result(timeout=60)
        except Exception:
            log.exception("config_watch_reload_failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)
