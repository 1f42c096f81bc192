-- Version 9: the index of the records that vouch for capability rows (version 8's), its
-- condition as OR'd equalities: SQLite built a temporary b-tree for the IN list at every
-- audit insert. (Another line of work writes this version too: theirs stands for it.)
DROP INDEX audit_vouching;
CREATE INDEX audit_vouching ON audit (seq)
    WHERE syscall = 'host.spawn'
    OR syscall = 'host.fork'
    OR syscall = 'proc.spawn'
    OR syscall = 'approval.answer'
    OR syscall = 'caps.narrow';
