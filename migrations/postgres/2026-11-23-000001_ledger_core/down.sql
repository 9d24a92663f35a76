DROP TABLE account_changes;
DROP TRIGGER journal_no_truncate ON journal;
DROP TRIGGER journal_no_update ON journal;
DROP FUNCTION asbb_journal_append_only();
DROP TABLE journal;
DROP TABLE holds;
DROP TABLE account_partitions;
DROP TABLE accounts;
