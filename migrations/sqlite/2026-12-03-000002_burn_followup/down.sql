ALTER TABLE burn_cursors DROP COLUMN seq_seen;
