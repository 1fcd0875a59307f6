"""The long-lived resources of one Shepherd process, opened and closed together."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import duckdb
import numpy as np
import structlog

from shepherd.auth import Authenticator
from shepherd.bundles.importer import Importer, recover
from shepherd.config import Config
from shepherd.deploy.manager import DeploymentManager
from shepherd.errors import ShepherdError
from shepherd.monitoring.alerts import AlertManager
from shepherd.monitoring.monitor import Monitor
from shepherd.monitoring.predlog import PredictionLog
from shepherd.monitoring.profile import as_float
from shepherd.monitoring.references import References
from shepherd.serving.metrics import ServingMetrics
from shepherd.store import registry
from shepherd.tracking.mlflow import MlflowApi
from shepherd.tracking.service import Tracker
from shepherd.store.blobs import BlobStore
from shepherd.store.events import EventStore
from shepherd.store.schema import MIGRATIONS
from shepherd.store.sqlite import Database

log = structlog.get_logger()


def open_database(config: Config) -> Database:
    """The metadata database of `config`'s data directory, migrated to the current schema."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(
        config.data_dir / "shepherd.sqlite", MIGRATIONS, readers=config.storage.sqlite_readers, lazy_sync_s=config.storage.tracking_sync_s
    )


def lock_data_dir(data_dir: Path) -> TextIO:
    """Hold an exclusive lock on `data_dir/.lock` for this process's life: one appliance per data directory.

    Start-up recovery deletes temp files and unreferenced blobs, which would destroy an import
    in flight in another process on the same directory.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / ".lock", "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ShepherdError(f"data directory {data_dir} is in use by another Shepherd process (pid {holder})") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Appliance:
    """Stores, importer, authenticator and deployments for one data directory."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path  # what a reload re-reads (None: the built-in defaults)
        self._lock = lock_data_dir(config.data_dir)
        self.db = open_database(config)
        self.blobs = BlobStore(config.data_dir / "blobs")
        self.importer = Importer(config, self.db, self.blobs)
        self.auth = Authenticator(self.db, config.auth.token_cache_seconds)
        self.metrics = ServingMetrics()
        self.events = EventStore(config.data_dir / "events.duckdb")
        mon = config.monitoring
        self.predlog = PredictionLog(self.events, mon, self.metrics.registry) if mon.prediction_log else None
        self.deployments = DeploymentManager(config, self.db, self.blobs, self.metrics, self.predlog)
        self.alerts = AlertManager(self.db)
        self.tracker = Tracker(self.db, self.blobs)
        self.mlflow = MlflowApi(self.tracker)
        self.references = References(self.events)
        self.monitor = Monitor(
            config, self.events, self.references, self.version_info, lambda: list(self.deployments.deployments),
            self.alerts, self.metrics.registry, self.model_runner,
            durable_before=self.predlog.durable_before if self.predlog is not None else None,
            slotted=self.deployments.slotted,
        )
        if self.predlog is not None:  # without logged predictions there are no drift windows to profile for
            self.deployments.on_loaded = self.monitor.version_loaded
        self.ready = False
        # The HTTP server's count of requests it has parsed and not yet answered, set by the server
        # that runs this appliance (service.py); None where it is not known (tests, other servers).
        self.active_requests: Callable[[], int] | None = None

    def reload(self) -> Any:
        """Re-read the config file and policies, validate, apply what can change live (shepherd.reload)."""
        from shepherd.reload import reload

        return reload(self, self.config_path)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: deployments and loaded versions."""
        deps = self.deployments.deployments
        loaded = sum(len(d.slots.loaded()) for d in deps.values())
        return f"serving {len(deps)} deployment(s), {loaded} version(s) loaded"

    def version_info(self, model: str, version: int) -> tuple[dict, dict, dict | None]:
        """A version's signature, bundle metrics and reference table (column -> array, None without one)."""
        rec = self.db.read(lambda c: registry.get_version(c, model, version))
        ref = next((f for f in rec.files if f.path == "reference.parquet"), None)
        table = None
        if ref is not None:
            with duckdb.connect() as con:
                table = con.execute("SELECT * FROM read_parquet(?)", [str(self.blobs.path(ref.sha256))]).fetchnumpy()
            # NULLs of a numeric column stay missing (NaN), as the profile counts them; other columns
            # come back with None where NULL, which the profile also counts as missing
            table = {k: as_float(v) if np.ma.is_masked(v) and v.dtype.kind in "iufb" else np.asarray(v) for k, v in table.items()}
        return rec.signature, rec.metrics, table

    def model_runner(self, model: str, version: int):
        """A function running a loaded session of `model` `version` (any deployment), or None when none is loaded."""
        for dep in self.deployments.deployments.values():
            for loaded in dep.slots.loaded():
                if loaded.model == model and loaded.version == version and loaded.session is not None:
                    return loaded.session.run_named
        return None

    def start(self) -> None:
        """Recover from any crash, then mark the appliance ready for traffic (idempotent)."""
        if self.ready:
            return
        recover(self.db, self.blobs, self.importer.tmp)
        self.deployments.restore()
        self.monitor.start()
        self.ready = True
        log.info("appliance_ready", data_dir=str(self.config.data_dir))

    def close(self) -> None:
        """Stop everything (idempotent): monitor, serving, then flush the prediction log and close the stores."""
        if self._lock.closed:
            return
        self.ready = False
        self.monitor.close()
        self.deployments.close()
        if self.predlog is not None:
            self.predlog.close()  # after serving stopped: flush everything that was answered
        self.events.close()
        self.alerts.close()
        self.db.close()
        if not self._lock.closed:
            self._lock.close()
        log.info("appliance_stopped")
