-- Finance reports: the instance types of each run (ASBX's instance_types), for the usage
-- report, and the indexes the reports read the journal and the cost records by.

-- Comma-separated instance types as the cost export listed them ('' when it named none).
-- Records stored before this migration have ''.
ALTER TABLE cost_records ADD COLUMN instance_types TEXT NOT NULL DEFAULT '';

-- The usage and refunds reports find a charge's (or refund's) cost record by its entry.
CREATE INDEX cost_records_charge_entry ON cost_records (charge_entry_id);
-- Few runs are refunded: index only those.
CREATE INDEX cost_records_refund_entry ON cost_records (refund_entry_id)
    WHERE refund_entry_id IS NOT NULL;

-- Reports page through the journal in (effective_at, id) order: all of it, or one account's
-- (an account statement, a grant's linked accounts).
-- It replaces the index on effective_at alone (every journal index costs each append).
DROP INDEX journal_effective;
CREATE INDEX journal_effective_id ON journal (effective_at, id);
CREATE INDEX journal_account_effective ON journal (account_id, effective_at, id);
