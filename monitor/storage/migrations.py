"""The schema, as numbered migrations: :meth:`Store.migrate` applies the ones not yet recorded in
``schema_migrations``, each in its own transaction, so re-opening a database is a no-op.

Append new steps; never edit an applied one (a database that ran it would not run it again).
"""

_LABEL_COLUMNS = """            project VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            prediction_id VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            source VARCHAR NOT NULL,
            annotator VARCHAR,
"""
"""Columns of a label, stored (``feedback``) or waiting for its prediction (``pending_feedback``)."""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        f"""
        CREATE TABLE predictions (
            project VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            model_version VARCHAR,
            text VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            confidence DOUBLE,
            margin DOUBLE,
            probs JSON,
            embedding FLOAT[],
            latency_ms DOUBLE,
            metadata JSON,
            ingest_seq BIGINT NOT NULL,
            PRIMARY KEY (project, id)
        );
        CREATE TABLE feedback (
{_LABEL_COLUMNS}            prediction_ts TIMESTAMP,
            predicted_label VARCHAR,
            model_version VARCHAR,
            PRIMARY KEY (project, id)
        );
        CREATE TABLE pending_feedback (
{_LABEL_COLUMNS}            PRIMARY KEY (project, id)
        );
        CREATE TABLE prediction_hourly (
            project VARCHAR NOT NULL,
            hour TIMESTAMP NOT NULL,
            model_version VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            confidence_sum DOUBLE NOT NULL,
            PRIMARY KEY (project, hour, model_version, label)
        );
        CREATE TABLE projects (
            project VARCHAR PRIMARY KEY,
            labels JSON NOT NULL,
            created_at TIMESTAMP NOT NULL,
            settings JSON
        );
        CREATE TABLE reference_rows (
            project VARCHAR NOT NULL,
            reference VARCHAR NOT NULL,
            text VARCHAR NOT NULL,
            label VARCHAR,
            true_label VARCHAR,
            confidence DOUBLE,
            probs JSON,
            embedding FLOAT[]
        );
        CREATE TABLE model_versions (
            project VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            parent VARCHAR,
            status VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            metrics JSON,
            data_snapshot VARCHAR,
            promoted_at TIMESTAMP,
            reasons JSON,
            PRIMARY KEY (project, version)
        );
        CREATE SEQUENCE drift_check_ids;
        CREATE TABLE drift_checks (
            id BIGINT NOT NULL,
            project VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            window_start TIMESTAMP,
            window_end TIMESTAMP,
            reference VARCHAR,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            threshold DOUBLE,
            drifted BOOLEAN NOT NULL,
            details JSON,
            report_path VARCHAR
        );
        CREATE SEQUENCE alert_ids;
        CREATE TABLE alerts (
            id BIGINT PRIMARY KEY,
            project VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            kind VARCHAR NOT NULL,
            severity VARCHAR NOT NULL,
            message VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            closed_at TIMESTAMP,
            acked_at TIMESTAMP,
            acked_by VARCHAR,
            details JSON
        );
        CREATE SEQUENCE retrain_run_ids;
        CREATE TABLE retrain_runs (
            id BIGINT PRIMARY KEY,
            project VARCHAR NOT NULL,
            started TIMESTAMP NOT NULL,
            finished TIMESTAMP,
            trigger VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            n_examples BIGINT,
            version VARCHAR,
            metrics JSON,
            reasons JSON,
            log_path VARCHAR,
            snapshot_path VARCHAR
        );
        CREATE TABLE tokens (
            token_hash VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            role VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE reference_rows ADD COLUMN split VARCHAR;
        CREATE TABLE alert_deliveries (
            alert_id BIGINT NOT NULL,
            url VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            status VARCHAR NOT NULL,
            attempts INTEGER NOT NULL,
            error VARCHAR
        );
        """,
    ),
    (
        3,
        """
        -- Promotion history (monitor/registry.py): every change of champion, so rollback can walk back.
        CREATE SEQUENCE promotion_ids;
        CREATE TABLE promotions (
            id BIGINT NOT NULL,
            project VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            actor VARCHAR,
            reason VARCHAR,
            kind VARCHAR NOT NULL,
            previous VARCHAR
        );
        """,
    ),
    (
        4,
        """
        -- Labelled accuracy of hours whose raw rows the retention job deleted (monitor/operations.py):
        -- the latest label per prediction, frozen when its prediction ages out, so history survives.
        CREATE TABLE feedback_hourly (
            project VARCHAR NOT NULL,
            hour TIMESTAMP NOT NULL,
            model_version VARCHAR NOT NULL,
            n_labelled BIGINT NOT NULL,
            n_correct BIGINT NOT NULL,
            PRIMARY KEY (project, hour, model_version)
        );
        """,
    ),
    (
        5,
        """
        -- Which API token wrote each feedback row (stored or pending; same (project, id) in both):
        -- retracting a row is allowed to that token, not to whoever reuses its name or annotator.
        CREATE TABLE feedback_writers (
            project VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            token_id VARCHAR NOT NULL,
            PRIMARY KEY (project, id)
        );
        """,
    ),
    (
        6,
        """
        -- prediction_hourly holds partial rollups: an append adds its own small aggregate (no upsert on
        -- the write path), readers sum per key, and Store.compact_rollup folds the partial rows.
        CREATE TABLE prediction_hourly_parts (
            project VARCHAR NOT NULL,
            hour TIMESTAMP NOT NULL,
            model_version VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            confidence_sum DOUBLE NOT NULL
        );
        INSERT INTO prediction_hourly_parts SELECT * FROM prediction_hourly;
        DROP TABLE prediction_hourly;
        ALTER TABLE prediction_hourly_parts RENAME TO prediction_hourly;
        """,
    ),
    (
        7,
        """
        -- The drift window reads the newest rows by arrival (ORDER BY ingest_seq DESC, ts DESC LIMIT n).
        -- PostgreSQL reads them from an index (the dialect adds it) instead of sorting the table on disk;
        -- DuckDB sorts a column scan quickly and keeps no index.
        SELECT 1;
        """,
    ),
    (
        8,
        """
        -- the replica running a retrain run, and when it last said so: a run whose replica went silent is failed
        ALTER TABLE retrain_runs ADD COLUMN owner VARCHAR;
        ALTER TABLE retrain_runs ADD COLUMN heartbeat TIMESTAMP;
        """,
    ),
    (
        9,
        """
        -- The DuckDB store rolls predictions up after commits: prediction_hourly counts every prediction
        -- whose ingest_seq is at or below rolled_up_seq and none above (see storage/rollup.py). Every row
        -- stored so far was rolled up on ingest. PostgreSQL rolls up on ingest and leaves the row as it is.
        CREATE TABLE prediction_rollup_state (rolled_up_seq BIGINT NOT NULL);
        INSERT INTO prediction_rollup_state SELECT coalesce(max(ingest_seq), 0) FROM predictions;
        """,
    ),
]
