-- Allocation schedules, grants with budget periods, burn-rate snapshots and alerts (SQLite).
-- Money columns are BIGINT micro-dollars; timestamps naive UTC. Keep in step with
-- migrations/postgres/ (same names, same meaning). Every change of money these features make is
-- a journal entry (credit or adjustment) with an idempotency key; these tables record why.

-- A schedule credits `amount` to its account at every period from `starts_at` (anchored to that
-- date: monthly from Jan 31 gives Feb 28/29, Mar 31, Apr 30) until `total` is reached or
-- `ends_at` (exclusive) comes. `next_period` / `next_due_at` are the cursor of the timer job.
CREATE TABLE allocation_schedules (
    id              INTEGER PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts (id),
    amount_micros   BIGINT NOT NULL CHECK (amount_micros > 0),
    total_micros    BIGINT NOT NULL CHECK (total_micros > 0),
    frequency       TEXT   NOT NULL CHECK (frequency IN ('daily', 'weekly', 'monthly', 'quarterly', 'yearly')),
    starts_at       TIMESTAMP NOT NULL,
    ends_at         TIMESTAMP NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('active', 'paused', 'finished')),
    next_period     BIGINT NOT NULL DEFAULT 0,
    next_due_at     TIMESTAMP NULL,
    credited_micros BIGINT NOT NULL DEFAULT 0,
    credited_count  BIGINT NOT NULL DEFAULT 0,
    skipped_count   BIGINT NOT NULL DEFAULT 0,
    description     TEXT   NOT NULL DEFAULT '',
    created_by      TEXT   NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP NULL,
    CHECK (ends_at > starts_at)
);
CREATE INDEX allocation_schedules_account ON allocation_schedules (account_id);
CREATE INDEX allocation_schedules_due ON allocation_schedules (status, next_due_at);

-- One row per period of a schedule that was decided: credited (with its journal entry, key
-- alloc:<schedule>:<period>) or skipped (due while the schedule was paused).
CREATE TABLE allocation_periods (
    schedule_id   BIGINT NOT NULL REFERENCES allocation_schedules (id),
    period        BIGINT NOT NULL,
    due_at        TIMESTAMP NOT NULL,
    outcome       TEXT   NOT NULL CHECK (outcome IN ('credited', 'skipped')),
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    entry_id      BIGINT NULL REFERENCES journal (id),
    effective_at  TIMESTAMP NOT NULL,
    reason        TEXT   NOT NULL,
    recorded_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (schedule_id, period)
);

-- Pauses of a schedule. Periods due in [paused_at, resumed_at) are skipped unless the resume
-- asked for catch_up.
CREATE TABLE allocation_pauses (
    id          INTEGER PRIMARY KEY,
    schedule_id BIGINT NOT NULL REFERENCES allocation_schedules (id),
    paused_at   TIMESTAMP NOT NULL,
    resumed_at  TIMESTAMP NULL,
    catch_up    BOOLEAN NOT NULL DEFAULT FALSE,
    paused_by   TEXT   NOT NULL,
    resumed_by  TEXT   NULL,
    reason      TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX allocation_pauses_schedule ON allocation_pauses (schedule_id);

CREATE TABLE grants (
    id                     INTEGER PRIMARY KEY,
    number                 TEXT   NOT NULL UNIQUE,
    agency                 TEXT   NOT NULL,
    program                TEXT   NOT NULL DEFAULT '',
    pi                     TEXT   NOT NULL,
    co_pis                 TEXT   NOT NULL DEFAULT '',
    institution            TEXT   NOT NULL DEFAULT '',
    department             TEXT   NOT NULL DEFAULT '',
    amount_micros          BIGINT NOT NULL CHECK (amount_micros > 0),
    starts_at              TIMESTAMP NOT NULL,
    ends_at                TIMESTAMP NOT NULL,
    period_months          BIGINT NOT NULL CHECK (period_months BETWEEN 1 AND 120),
    indirect_rate          TEXT   NOT NULL,
    federal_award_id       TEXT   NOT NULL DEFAULT '',
    project_code           TEXT   NOT NULL DEFAULT '',
    cost_center            TEXT   NOT NULL DEFAULT '',
    carry_over             TEXT   NOT NULL,
    status                 TEXT   NOT NULL CHECK (status IN ('active', 'closed')),
    created_by             TEXT   NOT NULL,
    created_at             TIMESTAMP NOT NULL,
    updated_at             TIMESTAMP NOT NULL,
    closed_at              TIMESTAMP NULL,
    close_reason           TEXT   NOT NULL DEFAULT '',
    CHECK (ends_at > starts_at)
);

-- Budget periods: `budget` is planned at creation (even split per month unless set), the rest
-- is filled in when the period is activated (carry_in, credited) and closed (spent, carried
-- out, expired).
CREATE TABLE grant_periods (
    grant_id            BIGINT NOT NULL REFERENCES grants (id),
    number              BIGINT NOT NULL,
    starts_at           TIMESTAMP NOT NULL,
    ends_at             TIMESTAMP NOT NULL,
    budget_micros       BIGINT NOT NULL CHECK (budget_micros >= 0),
    status              TEXT   NOT NULL CHECK (status IN ('pending', 'active', 'closed', 'cancelled')),
    carry_in_micros     BIGINT NOT NULL DEFAULT 0,
    credited_micros     BIGINT NOT NULL DEFAULT 0,
    spent_micros        BIGINT NULL,
    carried_out_micros  BIGINT NULL,
    expired_micros      BIGINT NULL,
    activated_at        TIMESTAMP NULL,
    closed_at           TIMESTAMP NULL,
    PRIMARY KEY (grant_id, number),
    CHECK (ends_at > starts_at)
);

-- Accounts whose spending counts against a grant; an account has at most one grant at a time.
-- Each linked account receives share_percent of every period's budget.
CREATE TABLE grant_links (
    id            INTEGER PRIMARY KEY,
    grant_id      BIGINT NOT NULL REFERENCES grants (id),
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    share_percent TEXT   NOT NULL,
    linked_at     TIMESTAMP NOT NULL,
    unlinked_at   TIMESTAMP NULL,
    linked_by     TEXT   NOT NULL,
    unlinked_by   TEXT   NULL
);
CREATE UNIQUE INDEX grant_links_one_grant ON grant_links (account_id) WHERE unlinked_at IS NULL;
CREATE INDEX grant_links_grant ON grant_links (grant_id);

-- A period's money on one linked account: the activation credit (journal key
-- grant:<grant>:p<N>:credit:<account>) and, at the period's end, what was spent, carried into
-- the next period, and expired (negative adjustment, key grant:<grant>:p<N>:expire:<account>).
CREATE TABLE grant_period_accounts (
    grant_id         BIGINT NOT NULL REFERENCES grants (id),
    period           BIGINT NOT NULL,
    account_id       BIGINT NOT NULL REFERENCES accounts (id),
    credited_micros  BIGINT NOT NULL,
    credit_entry_id  BIGINT NULL REFERENCES journal (id),
    carry_in_micros  BIGINT NOT NULL DEFAULT 0,
    activated_at     TIMESTAMP NOT NULL,
    spent_micros     BIGINT NULL,
    carried_micros   BIGINT NULL,
    expired_micros   BIGINT NULL,
    expiry_entry_id  BIGINT NULL REFERENCES journal (id),
    closed_at        TIMESTAMP NULL,
    note             TEXT   NOT NULL DEFAULT '',
    PRIMARY KEY (grant_id, period, account_id)
);
CREATE INDEX grant_period_accounts_account ON grant_period_accounts (account_id);

CREATE TABLE grant_changes (
    id         INTEGER PRIMARY KEY,
    grant_id   BIGINT NOT NULL REFERENCES grants (id),
    field      TEXT   NOT NULL,
    old_value  TEXT   NOT NULL,
    new_value  TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    changed_at TIMESTAMP NOT NULL
);
CREATE INDEX grant_changes_grant ON grant_changes (grant_id);

-- One row per account and complete UTC day: balances at the end of the day (replayed from the
-- journal), that day's spend (net charges; credits are not spend), and the burn figures as of
-- the following midnight. Written by `asbb burn-rate compute`; derived, so recomputable.
CREATE TABLE burn_snapshots (
    account_id                BIGINT NOT NULL REFERENCES accounts (id),
    day                       DATE   NOT NULL,
    credited_micros           BIGINT NOT NULL,
    charged_micros            BIGINT NOT NULL,
    held_micros               BIGINT NOT NULL,
    spent_micros              BIGINT NOT NULL,
    period_start              TIMESTAMP NOT NULL,
    period_end                TIMESTAMP NOT NULL,
    period_budget_micros      BIGINT NOT NULL,
    period_spent_micros       BIGINT NOT NULL,
    period_expected_micros    BIGINT NOT NULL,
    window_days               BIGINT NOT NULL,
    window_spent_micros       BIGINT NOT NULL,
    window_expected_micros    BIGINT NOT NULL,
    rate_7d_micros            BIGINT NOT NULL,
    rate_30d_micros           BIGINT NOT NULL,
    variance_percent          TEXT   NULL,
    burn_status               TEXT   NOT NULL,
    health_score              BIGINT NOT NULL,
    health_band               TEXT   NOT NULL,
    risk_level                TEXT   NOT NULL,
    depletion_date            DATE   NULL,
    projected_period_micros   BIGINT NOT NULL,
    projected_horizon_micros  BIGINT NOT NULL,
    horizon_spent_micros      BIGINT NOT NULL,
    computed_at               TIMESTAMP NOT NULL,
    PRIMARY KEY (account_id, day)
);
CREATE INDEX burn_snapshots_day ON burn_snapshots (day);

-- The last complete day each account's snapshots reach.
CREATE TABLE burn_cursors (
    account_id BIGINT NOT NULL PRIMARY KEY REFERENCES accounts (id),
    last_day   DATE   NOT NULL
);

-- Each run of `asbb burn-rate compute`: the journal id it had seen, so entries booked later
-- with an earlier effective time (backfills) make the next run recompute from their day.
CREATE TABLE burn_runs (
    id                 INTEGER PRIMARY KEY,
    as_of              TIMESTAMP NOT NULL,
    journal_watermark  BIGINT NOT NULL,
    days_written       BIGINT NOT NULL,
    accounts           BIGINT NOT NULL,
    started_at         TIMESTAMP NOT NULL,
    finished_at        TIMESTAMP NOT NULL
);

-- Alerts, deduplicated by `dedup_key`: while a condition holds its alert stays open (one row);
-- when it clears the alert is resolved; if it comes back a new row is raised.
CREATE TABLE alerts (
    id               INTEGER PRIMARY KEY,
    dedup_key        TEXT   NOT NULL,
    kind             TEXT   NOT NULL,
    severity         TEXT   NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject_kind     TEXT   NOT NULL CHECK (subject_kind IN ('account', 'grant', 'schedule')),
    subject          TEXT   NOT NULL,
    account_id       BIGINT NULL REFERENCES accounts (id),
    grant_id         BIGINT NULL REFERENCES grants (id),
    message          TEXT   NOT NULL,
    value            TEXT   NOT NULL DEFAULT '',
    threshold        TEXT   NOT NULL DEFAULT '',
    raised_at        TIMESTAMP NOT NULL,
    last_seen_at     TIMESTAMP NOT NULL,
    resolved_at      TIMESTAMP NULL,
    acknowledged_at  TIMESTAMP NULL,
    acknowledged_by  TEXT   NULL,
    ack_notes        TEXT   NOT NULL DEFAULT '',
    notified_at      TIMESTAMP NULL,
    notify_attempts  BIGINT NOT NULL DEFAULT 0,
    notify_error     TEXT   NOT NULL DEFAULT '',
    recorded_at      TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX alerts_open_key ON alerts (dedup_key) WHERE resolved_at IS NULL;
CREATE INDEX alerts_grant ON alerts (grant_id);
CREATE INDEX alerts_account ON alerts (account_id);
CREATE INDEX alerts_unnotified ON alerts (notified_at);
