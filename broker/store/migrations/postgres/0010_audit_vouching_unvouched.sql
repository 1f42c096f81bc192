-- Version 10: `caps.unvouched` is read with the records that vouch for capability rows
-- (`broker.store.capvouch.VOUCHING`: a kernel's open records there the span of records no
-- anchor vouched for, which vouch for nothing after): the index names it too.
DROP INDEX audit_vouching;
CREATE INDEX audit_vouching ON audit (seq)
    WHERE syscall = 'host.spawn'
    OR syscall = 'host.fork'
    OR syscall = 'proc.spawn'
    OR syscall = 'approval.answer'
    OR syscall = 'caps.narrow'
    OR syscall = 'caps.unvouched';
