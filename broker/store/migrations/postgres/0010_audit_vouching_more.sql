-- Version 10: `caps.unvouched` and `caps.revoke` are read with the records that vouch for
-- capability rows (`broker.store.capvouch.VOUCHING`): a kernel's open records in the first
-- the span of records no anchor vouched for, which vouch for nothing after; the second
-- names the rows it removes (a row vouched for, gone and never removed, was deleted).
DROP INDEX audit_vouching;
CREATE INDEX audit_vouching ON audit (seq)
    WHERE syscall = 'host.spawn'
    OR syscall = 'host.fork'
    OR syscall = 'proc.spawn'
    OR syscall = 'approval.answer'
    OR syscall = 'caps.narrow'
    OR syscall = 'caps.unvouched'
    OR syscall = 'caps.revoke';
