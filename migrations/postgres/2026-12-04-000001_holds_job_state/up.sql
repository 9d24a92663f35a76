-- Keep in step with the other backend's migration of the same name.
--
-- Open holds are looked up by job (reconcile, recover, re-pricing) with the state beside the
-- job id. With (job_id) alone, SQLite's planner, which has no statistics on a fresh
-- database, preferred the (state, expires_at) index and walked every open hold for each
-- lookup: reconciling a backlog took time quadratic in its size.
DROP INDEX holds_job;
CREATE INDEX holds_job_state ON holds (job_id, state);
