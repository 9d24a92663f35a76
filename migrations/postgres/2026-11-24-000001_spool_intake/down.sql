DROP TABLE plans;
DROP TABLE job_end_records;
DROP TABLE cost_records;
DROP TABLE spool_files;
ALTER TABLE holds DROP COLUMN tasks_charged;
ALTER TABLE holds DROP COLUMN tasks;
