-- Version 9: the index of the records that vouch for capability rows (version 8's), with
-- `caps.unvouched` and `caps.revoke` (`broker.store.capvouch.VOUCHING`): a kernel's open
-- records in the first the span of records no anchor vouched for, which vouch for nothing
-- after; the second names the rows it removes (a row vouched for, gone and never removed,
-- was deleted). Its condition is OR'd equalities: SQLite checks a partial index's condition
-- at every INSERT, and for `syscall IN (...)` it built a temporary b-tree of the names.
DROP INDEX audit_vouching;
CREATE INDEX audit_vouching ON audit (seq)
    WHERE syscall = 'host.spawn'
    OR syscall = 'host.fork'
    OR syscall = 'proc.spawn'
    OR syscall = 'approval.answer'
    OR syscall = 'caps.narrow'
    OR syscall = 'caps.unvouched'
    OR syscall = 'caps.revoke';
