-- Version 15: PostgreSQL's `aside` columns made BIGINT (an audit seq, as `taken`); SQLite's
-- INTEGER already holds 64 bits: nothing to change, the versions kept in step.
SELECT 1;
