DROP INDEX holds_job_state;
CREATE INDEX holds_job ON holds (job_id);
