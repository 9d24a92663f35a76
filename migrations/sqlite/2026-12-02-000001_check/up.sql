-- The submission check (SQLite). Keep in step with migrations/postgres/.

-- One row per budget check that placed a hold, and per check of any outcome that carried a
-- client request id (so that a retry returns the first answer). `base_task_micros` is one task
-- at the partition's rates before any learned correction: estimate-vs-actual learning compares
-- actual costs with it, never with an estimate it already corrected.
CREATE TABLE checks (
    id               INTEGER PRIMARY KEY,
    request_id       TEXT   NULL UNIQUE,
    request_digest   TEXT   NOT NULL,
    account          TEXT   NOT NULL,
    partition        TEXT   NOT NULL,
    cluster          TEXT   NULL,
    user_name        TEXT   NULL,
    job_id           TEXT   NULL,
    allowed          BOOLEAN NOT NULL,
    reason           TEXT   NOT NULL,
    hold_id          BIGINT NULL REFERENCES holds (id),
    replaced_hold_id BIGINT NULL REFERENCES holds (id),
    method           TEXT   NOT NULL CHECK (method IN ('rates', 'plan', 'none')),
    plan_id          TEXT   NULL,
    tasks            BIGINT NOT NULL CHECK (tasks > 0),
    base_task_micros BIGINT NOT NULL CHECK (base_task_micros >= 0),
    estimate_micros  BIGINT NOT NULL CHECK (estimate_micros >= 0),
    factor           TEXT   NULL,
    seconds          BIGINT NOT NULL,
    response         TEXT   NOT NULL,
    created_at       TIMESTAMP NOT NULL
);
CREATE INDEX checks_hold ON checks (hold_id);
CREATE INDEX checks_account_partition ON checks (account, partition);

-- Learning joins reconciled runs to the check that placed their hold.
CREATE INDEX cost_records_hold ON cost_records (hold_id);
