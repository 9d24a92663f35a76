-- Reconcile takes the runs not yet charged in job order, not in arrival order: the holds,
-- journal keys and job indexes it then writes follow the order in which jobs were submitted,
-- so a batch touches neighbouring pages instead of one page per run. The `(status, id)` index
-- becomes `(status, job_base, id)`; counts by status read either.
DROP INDEX cost_records_status;
CREATE INDEX cost_records_status_job ON cost_records (status, job_base, id);

-- A run gets its hold and its reconciliation time when it is charged. Indexed in full, every
-- stored run took a NULL entry in both indexes, and charging it deleted that entry at a place
-- given by its arrival, a page apart from the last one. Only charged runs are looked up by
-- either (learning joins on the hold, accuracy reads a period), so only they are indexed.
DROP INDEX cost_records_hold;
CREATE INDEX cost_records_hold ON cost_records (hold_id) WHERE hold_id IS NOT NULL;
DROP INDEX cost_records_reconciled;
CREATE INDEX cost_records_reconciled ON cost_records (reconciled_at) WHERE reconciled_at IS NOT NULL;
