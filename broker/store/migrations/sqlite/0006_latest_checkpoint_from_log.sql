-- Version 6: a process's latest checkpoint is the newest row of its `checkpoint_log` (which
-- always keeps it), no longer a copy in `checkpoints` as well: one row fewer to write at each
-- of a step's two checkpoints. A process of a store from before the log (if any) has its
-- latest checkpoint moved into it; then the table goes, so a libos that still reads it
-- refuses this store (a newer schema) rather than resuming from a checkpoint left behind.
INSERT INTO checkpoint_log(pid, step, state, created)
    SELECT pid, step, state, created FROM checkpoints c
    WHERE NOT EXISTS (SELECT 1 FROM checkpoint_log l WHERE l.pid = c.pid) ORDER BY pid;
DROP TABLE checkpoints;
