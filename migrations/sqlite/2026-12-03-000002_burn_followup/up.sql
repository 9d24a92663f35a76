-- Burn-rate follow-up. Keep in step with the other backend's migration of the same name.
--
-- Backfill detection by per-account sequence number instead of a journal-id watermark:
-- journal ids are handed out before commit, so on PostgreSQL an entry could commit with an id
-- below the watermark a run had already recorded and never be looked at. An account's entries
-- commit in `seq` order (each ledger operation holds the account's lock until it commits), so
-- the entry count a run read before reading the journal is exact: `seq_seen` is that count as
-- the run that last moved the cursor read it, and entries with a higher `seq` are looked at by
-- the next run.
ALTER TABLE burn_cursors ADD COLUMN seq_seen BIGINT NOT NULL DEFAULT 0;

-- Cursors written before this migration: everything the last run's id watermark covered.
UPDATE burn_cursors SET seq_seen = COALESCE((
    SELECT MAX(j.seq) FROM journal j
    WHERE j.account_id = burn_cursors.account_id
      AND j.id <= (SELECT COALESCE(MAX(r.journal_watermark), 0) FROM burn_runs r)
), 0);
