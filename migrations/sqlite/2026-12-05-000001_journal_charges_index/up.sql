-- Keep in step with the other backend's migration of the same name.
--
-- Only `account show` counts an account's charges (all, overrun, unmatched). An index on
-- (account_id, kind, flags) over every entry cost each append a write at a random place
-- (accounts interleave); the partial index below holds charge entries only, about a third
-- of the journal, and answers the same counts. Queries must name the kind as a literal
-- (`kind = 'charge'`) for the planner to see that the index applies.
DROP INDEX journal_account_kind;
CREATE INDEX journal_account_charges ON journal (account_id, flags) WHERE kind = 'charge';
