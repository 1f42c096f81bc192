-- Version 15: `aside` holds an audit seq, BIGINT as `taken` beside it is (version 13 made it
-- INTEGER: past seq 2**31 a set-aside failed, the message left taken by a receive that
-- failed, neither delivered nor in line: red team 26).
ALTER TABLE mailbox ALTER COLUMN aside TYPE BIGINT;
ALTER TABLE raised_seen ALTER COLUMN aside TYPE BIGINT;
