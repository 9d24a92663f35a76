DROP INDEX journal_account_charges;
CREATE INDEX journal_account_kind ON journal (account_id, kind, flags);
