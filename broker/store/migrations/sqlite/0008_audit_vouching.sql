-- Version 8: loading capabilities (a kernel's open, a resume, a process's capabilities asked
-- for) reads the records that vouch for capability rows (`broker.store.capvouch.VOUCHING`):
-- an index on those alone (partial: every other record, nearly all of a chain, is not in it,
-- and costs its append nothing more) makes that read cost the spawns, not the whole chain.
CREATE INDEX audit_vouching ON audit (seq)
    WHERE syscall IN ('host.spawn', 'host.fork', 'proc.spawn', 'approval.answer', 'caps.narrow');
