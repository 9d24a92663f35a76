DROP INDEX cost_records_hold;
DROP TABLE checks;
