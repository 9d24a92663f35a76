DROP INDEX cost_records_charged_key;
CREATE INDEX checks_account_partition ON checks (account, partition);
CREATE INDEX holds_account_open ON holds (account_id) WHERE state = 'open';
ALTER TABLE accounts DROP COLUMN open_hold_count;
