DROP INDEX cost_records_reconciled;
CREATE INDEX cost_records_reconciled ON cost_records (reconciled_at);
DROP INDEX cost_records_hold;
CREATE INDEX cost_records_hold ON cost_records (hold_id);
DROP INDEX cost_records_status_job;
CREATE INDEX cost_records_status ON cost_records (status, id);
