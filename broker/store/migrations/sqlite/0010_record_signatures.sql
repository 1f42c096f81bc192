-- Version 10: brokers sharing a store sign each record that vouches (it grants capability
-- rows, ends a process or takes an end back) with their own key (`broker.store.recordsig`):
-- `sig` holds "<public key> <signature>" (hex) over the record's hash, NULL for every other
-- record and for every record a single writer appends (its anchor vouches for them). A
-- shared broker's open appends an `audit.signed` record once (`audit_signed` finds it): from
-- it on, a vouching record without a signature by a trusted key vouches for nothing.
ALTER TABLE audit ADD COLUMN sig TEXT;
CREATE INDEX audit_signed ON audit (seq) WHERE syscall = 'audit.signed';
