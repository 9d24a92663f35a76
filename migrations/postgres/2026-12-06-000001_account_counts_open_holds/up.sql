-- Keep in step with the other backend's migration of the same name.
--
-- Every index keyed by account first costs each ledger write a page at a random place, since
-- accounts interleave; a busy ledger writes mostly those pages. Two of them go:
--
-- 1. The charge counts `account show` and `account list` print (all charges, overruns,
--    unmatched) become cached counters on the account row, which every entry rewrites
--    anyway, like the cached balances; `asbb audit verify` recounts them from the journal.
--    They replace the partial index `journal_account_charges`.
ALTER TABLE accounts ADD COLUMN charge_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN overrun_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN unmatched_count BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET
    charge_count = (SELECT count(*) FROM journal j
                    WHERE j.account_id = accounts.id AND j.kind = 'charge'),
    overrun_count = (SELECT count(*) FROM journal j
                     WHERE j.account_id = accounts.id AND j.kind = 'charge' AND j.flags = 'overrun'),
    unmatched_count = (SELECT count(*) FROM journal j
                       WHERE j.account_id = accounts.id AND j.kind = 'charge' AND j.flags = 'unmatched');
DROP INDEX journal_account_charges;

-- 2. Holds by account: (account_id, state) took an entry when a hold was placed and moved
--    it when the hold was charged, both at random places. What reads holds by account wants
--    the open ones (`account show`, `account close`, `hold list --state open`); a partial
--    index of the open holds serves them and stays as small as the holds outstanding. The
--    audit finds an account's holds from its journal entries instead. Queries must name the
--    state as a literal (`state = 'open'`) for the planner to see that the index applies.
DROP INDEX holds_account_state;
CREATE INDEX holds_account_open ON holds (account_id) WHERE state = 'open';
