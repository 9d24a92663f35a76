DROP INDEX holds_account_open;
CREATE INDEX holds_account_state ON holds (account_id, state);
CREATE INDEX journal_account_charges ON journal (account_id, flags) WHERE kind = 'charge';
ALTER TABLE accounts DROP COLUMN unmatched_count;
ALTER TABLE accounts DROP COLUMN overrun_count;
ALTER TABLE accounts DROP COLUMN charge_count;
