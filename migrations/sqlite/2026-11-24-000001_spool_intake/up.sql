-- Spool intake and reconciliation (SQLite). Keep in step with migrations/postgres/.

-- Array holds: how many tasks a hold covers and how many have been charged. A hold with tasks
-- stays open while its tasks are charged one by one; the last task releases what is left.
ALTER TABLE holds ADD COLUMN tasks BIGINT NULL CHECK (tasks IS NULL OR tasks > 0);
ALTER TABLE holds ADD COLUMN tasks_charged BIGINT NOT NULL DEFAULT 0;
UPDATE holds SET tasks_charged = 1 WHERE state = 'charged';

-- Every arrival of a spool file, exactly once: `file_key` identifies one arrival (name, size,
-- modification time, inode and content), so a rescan after a crash finds the file it already
-- recorded and only finishes moving it.
CREATE TABLE spool_files (
    id          INTEGER PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind IN ('cost', 'job_end', 'plan')),
    name        TEXT   NOT NULL,
    file_key    TEXT   NOT NULL UNIQUE,
    sha256      TEXT   NOT NULL,
    size_bytes  BIGINT NOT NULL,
    outcome     TEXT   NOT NULL CHECK (outcome IN ('stored', 'duplicate', 'conflict', 'rejected')),
    record_id   BIGINT NULL,
    reasons     TEXT   NOT NULL DEFAULT '[]',
    seen_at     TIMESTAMP NOT NULL,
    resolved_at TIMESTAMP NULL,
    resolved_by TEXT   NULL,
    resolution  TEXT   NULL
);
CREATE INDEX spool_files_outcome ON spool_files (outcome, kind);
CREATE INDEX spool_files_record ON spool_files (kind, record_id);

-- One row per run of a job with a cost (`run_key` = job id and run number).
CREATE TABLE cost_records (
    id               INTEGER PRIMARY KEY,
    run_key          TEXT   NOT NULL UNIQUE,
    job_id           TEXT   NOT NULL,
    job_base         BIGINT NOT NULL,
    array_task       BIGINT NULL,
    het_offset       BIGINT NULL,
    run              BIGINT NOT NULL,
    account          TEXT   NOT NULL,
    actual_micros    BIGINT NOT NULL CHECK (actual_micros >= 0),
    producer_estimate_micros BIGINT NULL,
    transaction_ref  TEXT   NULL,
    job_state        TEXT   NULL,
    exit_code        TEXT   NULL,
    user_name        TEXT   NULL,
    partition        TEXT   NULL,
    submitted_at     TIMESTAMP NULL,
    started_at       TIMESTAMP NULL,
    completed_at     TIMESTAMP NULL,
    export_time      TIMESTAMP NULL,
    content_digest   TEXT   NOT NULL,
    status           TEXT   NOT NULL CHECK (status IN ('pending', 'waiting', 'charged')),
    status_reason    TEXT   NOT NULL DEFAULT '',
    status_detail    TEXT   NOT NULL DEFAULT '',
    hold_id          BIGINT NULL,
    charge_entry_id  BIGINT NULL,
    refund_entry_id  BIGINT NULL,
    estimate_micros  BIGINT NULL,
    charged_account  TEXT   NULL,
    charged_partition TEXT  NULL,
    received_at      TIMESTAMP NOT NULL,
    reconciled_at    TIMESTAMP NULL
);
CREATE INDEX cost_records_status ON cost_records (status, id);
CREATE INDEX cost_records_job ON cost_records (job_base);
CREATE INDEX cost_records_reconciled ON cost_records (reconciled_at);

-- One row per finished run of a job, from the jobcomp hook.
CREATE TABLE job_end_records (
    id             INTEGER PRIMARY KEY,
    run_key        TEXT   NOT NULL UNIQUE,
    cluster        TEXT   NOT NULL,
    job_id         TEXT   NOT NULL,
    job_base       BIGINT NOT NULL,
    array_task     BIGINT NULL,
    account        TEXT   NOT NULL,
    partition      TEXT   NULL,
    user_name      TEXT   NULL,
    state          TEXT   NOT NULL,
    exit_code      TEXT   NULL,
    submitted_at   TIMESTAMP NOT NULL,
    started_at     TIMESTAMP NULL,
    ended_at       TIMESTAMP NOT NULL,
    time_limit     TEXT   NULL,
    nodes          BIGINT NULL,
    cpus           BIGINT NULL,
    hold_ref       TEXT   NULL,
    content_digest TEXT   NOT NULL,
    received_at    TIMESTAMP NOT NULL
);
CREATE INDEX job_end_records_job ON job_end_records (job_base);

-- ASBA plans: cost ceilings proposed before submission.
CREATE TABLE plans (
    id                  INTEGER PRIMARY KEY,
    plan_id             TEXT   NOT NULL UNIQUE,
    shape               TEXT   NOT NULL CHECK (shape IN ('asbx', 'asba')),
    account             TEXT   NOT NULL,
    max_total_micros    BIGINT NOT NULL CHECK (max_total_micros >= 0),
    should_burst        BOOLEAN NULL,
    max_duration_micros BIGINT NULL,
    instance_types      TEXT   NOT NULL DEFAULT '',
    instance_count      BIGINT NULL,
    purchasing_option   TEXT   NULL,
    expected_runtime_ns BIGINT NULL,
    confidence          TEXT   NULL,
    generated_at        TIMESTAMP NULL,
    job_id              TEXT   NULL,
    content_digest      TEXT   NOT NULL,
    received_at         TIMESTAMP NOT NULL
);
