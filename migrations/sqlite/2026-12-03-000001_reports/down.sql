DROP INDEX journal_account_effective;
DROP INDEX journal_effective_id;
CREATE INDEX journal_effective ON journal (effective_at);
DROP INDEX cost_records_refund_entry;
DROP INDEX cost_records_charge_entry;
ALTER TABLE cost_records DROP COLUMN instance_types;
