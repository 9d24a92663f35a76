DROP TABLE account_changes;
DROP TRIGGER journal_no_delete;
DROP TRIGGER journal_no_update;
DROP TABLE journal;
DROP TABLE holds;
DROP TABLE account_partitions;
DROP TABLE accounts;
