-- Keep in step with the other backend's migration of the same name.
--
-- A submission check writes a hold, a journal entry and a check row. Two indexes took each of
-- them a page at a random place (accounts interleave), and the check never reads either:
--
-- 1. `holds_account_open` (open holds by account). What read it gets its number from the
--    account row instead, which every entry rewrites anyway: `open_hold_count` is kept by
--    every change of a hold's state (placed, last charge, release, expiry) and recounted by
--    `asbb audit verify`. The few that list an account's open holds (`hold list --account A
--    --state open`, `account close` while holds are open) read the open holds through
--    `holds_state_expires`, whose open entries are the holds outstanding.
ALTER TABLE accounts ADD COLUMN open_hold_count BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET
    open_hold_count = (SELECT count(*) FROM holds h
                       WHERE h.account_id = accounts.id AND h.state = 'open');
DROP INDEX holds_account_open;

-- 2. `checks_account_partition`: the learned correction of one account and partition
--    (`asbb check`) finds its runs from the other side, among the charged runs, which carry
--    the account and partition they were booked to; reconcile writes that entry, a batch job,
--    instead of every check. Only runs charged against a hold are ever joined to a check.
DROP INDEX checks_account_partition;
CREATE INDEX cost_records_charged_key ON cost_records (charged_account, charged_partition, reconciled_at)
    WHERE hold_id IS NOT NULL;
