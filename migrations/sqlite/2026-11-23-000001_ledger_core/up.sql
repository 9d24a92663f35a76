-- Ledger core (SQLite). Money columns are BIGINT micro-dollars (1 USD = 1,000,000).
-- Timestamps are naive UTC. Keep in step with migrations/postgres/ (same names, same meaning).

CREATE TABLE accounts (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    display_name     TEXT    NOT NULL,
    description      TEXT    NOT NULL DEFAULT '',
    starts_at        TIMESTAMP NOT NULL,
    ends_at          TIMESTAMP NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    overdraft_micros BIGINT  NOT NULL DEFAULT 0 CHECK (overdraft_micros >= 0),
    -- cached balances; `asbb audit verify` recomputes them from the journal
    credited_micros  BIGINT  NOT NULL DEFAULT 0,
    charged_micros   BIGINT  NOT NULL DEFAULT 0,
    held_micros      BIGINT  NOT NULL DEFAULT 0,
    -- the per-account hash chain: number of entries and hash of the last one
    entry_count      BIGINT  NOT NULL DEFAULT 0,
    chain_head       TEXT    NOT NULL,
    -- the per-account chain of setting changes (account_changes)
    settings_count   BIGINT  NOT NULL DEFAULT 0,
    settings_head    TEXT    NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL,
    CHECK (ends_at > starts_at)
);

-- Per-partition limits and the cached use (charged + held) of each partition.
CREATE TABLE account_partitions (
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    partition      TEXT   NOT NULL,
    limit_micros   BIGINT NULL CHECK (limit_micros IS NULL OR limit_micros >= 0),
    charged_micros BIGINT NOT NULL DEFAULT 0,
    held_micros    BIGINT NOT NULL DEFAULT 0,
    updated_at     TIMESTAMP NOT NULL,
    PRIMARY KEY (account_id, partition)
);

CREATE TABLE holds (
    id               INTEGER PRIMARY KEY,
    account_id       BIGINT NOT NULL REFERENCES accounts (id),
    partition        TEXT   NULL,
    cluster          TEXT   NULL,
    job_id           TEXT   NULL,
    user_name        TEXT   NULL,
    estimate_micros  BIGINT NOT NULL CHECK (estimate_micros >= 0),
    buffer           TEXT   NOT NULL,
    amount_micros    BIGINT NOT NULL CHECK (amount_micros > 0),
    remaining_micros BIGINT NOT NULL CHECK (remaining_micros >= 0),
    charged_micros   BIGINT NOT NULL DEFAULT 0,
    state            TEXT   NOT NULL CHECK (state IN ('open', 'charged', 'released', 'expired')),
    flags            TEXT   NOT NULL DEFAULT '',
    expires_at       TIMESTAMP NULL,
    created_at       TIMESTAMP NOT NULL,
    resolved_at      TIMESTAMP NULL,
    idempotency_key  TEXT   NOT NULL UNIQUE
);
CREATE INDEX holds_account_state ON holds (account_id, state);
CREATE INDEX holds_state_expires ON holds (state, expires_at);
CREATE INDEX holds_job ON holds (job_id);

-- The append-only journal. Every change of money is one row here.
CREATE TABLE journal (
    id                    INTEGER PRIMARY KEY,
    account_id            BIGINT NOT NULL REFERENCES accounts (id),
    seq                   BIGINT NOT NULL,
    kind                  TEXT   NOT NULL CHECK (kind IN ('credit', 'hold', 'release', 'charge', 'refund', 'adjustment', 'expiry')),
    amount_micros         BIGINT NOT NULL,
    credited_delta_micros BIGINT NOT NULL,
    charged_delta_micros  BIGINT NOT NULL,
    held_delta_micros     BIGINT NOT NULL,
    hold_id               BIGINT NULL REFERENCES holds (id),
    cluster               TEXT   NULL,
    job_id                TEXT   NULL,
    partition             TEXT   NULL,
    user_name             TEXT   NULL,
    actor                 TEXT   NOT NULL,
    reason                TEXT   NOT NULL,
    flags                 TEXT   NOT NULL,
    idempotency_key       TEXT   NOT NULL UNIQUE,
    request_digest        TEXT   NOT NULL,
    effective_at          TIMESTAMP NOT NULL,
    recorded_at           TIMESTAMP NOT NULL,
    prev_hash             TEXT   NOT NULL,
    hash                  TEXT   NOT NULL,
    UNIQUE (account_id, seq)
);
CREATE INDEX journal_hold ON journal (hold_id);
CREATE INDEX journal_job ON journal (job_id);
CREATE INDEX journal_effective ON journal (effective_at);
-- `usage show` / `account show` count an account's charges by flag: an index-only scan.
CREATE INDEX journal_account_kind ON journal (account_id, kind, flags);

CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only: corrections are new entries');
END;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
BEGIN
    SELECT RAISE(ABORT, 'journal is append-only: corrections are new entries');
END;

-- Changes of account settings that are not money (name, dates, status, overdraft, limits),
-- starting with the settings the account was created with. Hash-chained per account like the
-- journal, so `asbb audit verify` can rebuild every setting and prove none was edited.
CREATE TABLE account_changes (
    id         INTEGER PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    field      TEXT   NOT NULL,
    old_value  TEXT   NOT NULL,
    new_value  TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    changed_at TIMESTAMP NOT NULL,
    seq        BIGINT NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    UNIQUE (account_id, seq)
);
CREATE INDEX account_changes_account ON account_changes (account_id);
