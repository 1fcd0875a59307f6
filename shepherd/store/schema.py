"""Migrations of the metadata database (`shepherd.sqlite`), applied in order, keyed on user_version."""

MIGRATIONS: list[str] = [
    # 1: registry, aliases with history, tags, audit log, tokens
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id),
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        bundle_digest TEXT NOT NULL,
        signed_by TEXT,
        description TEXT NOT NULL,
        io_signature TEXT NOT NULL,
        metrics TEXT NOT NULL,
        lineage TEXT NOT NULL,
        card TEXT NOT NULL,
        manifest TEXT NOT NULL,
        archived_at TEXT,
        UNIQUE (model_id, version),
        UNIQUE (model_id, bundle_digest)
    );
    CREATE TABLE version_files (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (version_id, path)
    );
    CREATE INDEX version_files_sha ON version_files(sha256);
    CREATE TABLE version_tags (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (version_id, key)
    );
    CREATE TABLE aliases (
        model_id INTEGER NOT NULL REFERENCES models(id),
        alias TEXT NOT NULL,
        version_id INTEGER NOT NULL REFERENCES versions(id),
        updated_at TEXT NOT NULL,
        PRIMARY KEY (model_id, alias)
    );
    CREATE TABLE alias_history (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id),
        alias TEXT NOT NULL,
        from_version INTEGER,
        to_version INTEGER,
        actor TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX alias_history_model ON alias_history(model_id, alias, id);

    -- A version's content never changes: only archived_at may be updated, and nothing is deleted.
    CREATE TRIGGER versions_immutable BEFORE UPDATE ON versions
    WHEN NEW.id IS NOT OLD.id OR NEW.model_id IS NOT OLD.model_id OR NEW.version IS NOT OLD.version
      OR NEW.created_at IS NOT OLD.created_at OR NEW.bundle_digest IS NOT OLD.bundle_digest
      OR NEW.signed_by IS NOT OLD.signed_by OR NEW.description IS NOT OLD.description
      OR NEW.io_signature IS NOT OLD.io_signature OR NEW.metrics IS NOT OLD.metrics
      OR NEW.lineage IS NOT OLD.lineage OR NEW.card IS NOT OLD.card OR NEW.manifest IS NOT OLD.manifest
    BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;
    CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
    BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;
    CREATE TRIGGER version_files_immutable BEFORE UPDATE ON version_files
    BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;
    CREATE TRIGGER version_files_no_delete BEFORE DELETE ON version_files
    BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;

    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    CREATE INDEX audit_action ON audit(action, id);
    CREATE INDEX audit_target ON audit(target, id);
    CREATE TRIGGER audit_append_only_u BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_append_only_d BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        secret_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at TEXT
    );
    """,
    # 2: deployments and their slots
    """
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        primary_version INTEGER,
        previous_version INTEGER,
        candidate_version INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 3: alerts (one row per incident; see shepherd/monitoring/alerts.py for the dedup rule)
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        deployment TEXT NOT NULL,
        kind TEXT NOT NULL,
        level TEXT NOT NULL CHECK (level IN ('warning', 'critical', 'emergency')),
        dedup_key TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        occurrences INTEGER NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
        acknowledged_at TEXT,
        acknowledged_by TEXT,
        closed_at TEXT,
        CHECK ((acknowledged_at IS NULL) = (acknowledged_by IS NULL)),
        CHECK (acknowledged_at IS NULL OR closed_at IS NOT NULL)
    );
    -- At most one open incident per key: a later occurrence updates it instead of adding a row.
    CREATE UNIQUE INDEX alerts_open_incident ON alerts(deployment, kind, dedup_key) WHERE closed_at IS NULL;
    CREATE INDEX alerts_deployment ON alerts(deployment, id);
    CREATE INDEX alerts_level ON alerts(level, id);
    CREATE INDEX alerts_unacknowledged ON alerts(id) WHERE acknowledged_at IS NULL;
    CREATE INDEX alerts_last_at ON alerts(last_at);
    """,
    # 4: experiment tracking (the MLflow-compatible surface; see shepherd/tracking/)
    """
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        artifact_location TEXT NOT NULL,
        lifecycle_stage TEXT NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
        creation_time INTEGER NOT NULL,
        last_update_time INTEGER NOT NULL
    );
    CREATE TABLE experiment_tags (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (experiment_id, key)
    ) WITHOUT ROWID;
    INSERT INTO experiments(id, name, artifact_location, creation_time, last_update_time)
        VALUES (0, 'Default', 'mlflow-artifacts:/0', CAST(unixepoch('subsec') * 1000 AS INTEGER), CAST(unixepoch('subsec') * 1000 AS INTEGER));
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_uuid TEXT NOT NULL UNIQUE,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        name TEXT NOT NULL,
        user_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED')),
        start_time INTEGER NOT NULL,
        end_time INTEGER,
        lifecycle_stage TEXT NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
        deleted_time INTEGER,
        artifact_uri TEXT NOT NULL
    );
    CREATE INDEX runs_experiment ON runs(experiment_id, lifecycle_stage, start_time DESC, id);
    CREATE TABLE run_params (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX run_params_kv ON run_params(key, value);
    CREATE TABLE run_tags (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX run_tags_kv ON run_tags(key, value);
    -- every logged value: the history, paged by (step, timestamp, id); an identical entry
    -- (same key, step, timestamp and value) is stored once, as MLflow does
    CREATE TABLE run_metrics (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        value REAL NOT NULL,   -- 0 for NaN
        is_nan INTEGER NOT NULL DEFAULT 0,
        timestamp INTEGER NOT NULL,
        step INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX run_metrics_history ON run_metrics(run_id, key, step, timestamp, value, is_nan);
    -- the latest value of each metric (largest step, then timestamp, then value), as MLflow defines it
    CREATE TABLE run_latest_metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        value REAL NOT NULL,
        is_nan INTEGER NOT NULL DEFAULT 0,
        timestamp INTEGER NOT NULL,
        step INTEGER NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX run_latest_metrics_kv ON run_latest_metrics(key, value);
    CREATE TABLE run_inputs (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        source_type TEXT NOT NULL,
        source TEXT NOT NULL,
        schema TEXT,
        profile TEXT,
        context TEXT,
        PRIMARY KEY (run_id, name, digest)
    ) WITHOUT ROWID;
    -- artifacts live in the blob store; this maps a run's (or logged model's) paths to blobs
    CREATE TABLE artifacts (
        root TEXT NOT NULL,    -- e.g. '<experiment>/<run_uuid>/artifacts' or 'models/<model_id>/artifacts'
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (root, path)
    ) WITHOUT ROWID;
    CREATE INDEX artifacts_sha ON artifacts(sha256);
    CREATE TABLE logged_models (
        id INTEGER PRIMARY KEY,
        model_id TEXT NOT NULL UNIQUE,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        name TEXT NOT NULL,
        source_run_id TEXT,
        status TEXT NOT NULL,
        model_type TEXT,
        creation_time INTEGER NOT NULL,
        last_updated_time INTEGER NOT NULL,
        artifact_location TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '{}',
        lifecycle_stage TEXT NOT NULL DEFAULT 'active'
    );
    """,
    # 5: metric history without a rowid: the primary key (run_id, key, step, timestamp, is_nan,
    # value) is both the dedup rule and the history's order, so each logged value is one B-tree
    # insert instead of two (table + unique index). History pages now resume after
    # (step, timestamp, is_nan, value); a page token from before this migration is refused.
    """
    CREATE TABLE run_metrics_v5 (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        step INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        is_nan INTEGER NOT NULL DEFAULT 0,
        value REAL NOT NULL,   -- 0 for NaN
        PRIMARY KEY (run_id, key, step, timestamp, is_nan, value)
    ) WITHOUT ROWID;
    INSERT INTO run_metrics_v5 (run_id, key, step, timestamp, is_nan, value)
        SELECT run_id, key, step, timestamp, is_nan, value FROM run_metrics;
    DROP TABLE run_metrics;
    ALTER TABLE run_metrics_v5 RENAME TO run_metrics;
    """,
    # 6: the monitor's alerts about one version name its model in their dedup key (data_drift:iris:1, no longer
    # data_drift:1; a deployment's name may serve another model after an undeploy, whose versions count from 1
    # again). Open incidents take the new key, so that their next occurrence is folded in, not raised again.
    """
    UPDATE alerts
    SET dedup_key = substr(dedup_key, 1, instr(dedup_key, ':')) || json_extract(details, '$.model')
                    || substr(dedup_key, instr(dedup_key, ':'))
    WHERE closed_at IS NULL
      AND kind IN ('data_drift', 'performance_drop', 'score_stream_drift', 'error_stream_drift')
      AND json_valid(details) AND json_type(details, '$.model') = 'text'
      AND dedup_key GLOB '*:[0-9]*' AND substr(dedup_key, instr(dedup_key, ':') + 1) NOT GLOB '*[^0-9]*';
    """,
]
