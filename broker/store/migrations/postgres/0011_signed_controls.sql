-- Version 11: the requests `libos pause/resume/kill/fork` leave (`control`) are signed by the
-- key of the user who asked (`broker.store.control_sig`): `sig` holds "<public key> <store>
-- <nonce> <signature>" (hex), and a broker applies only a request signed by a key it trusts,
-- made for this store, fresh and not applied before. Each it takes is an audit record
-- (`control.request`, `audit_controls` finds them): the nonces applied are read from there,
-- where a database writer cannot take them away unseen.
ALTER TABLE control ADD COLUMN sig TEXT;
CREATE INDEX audit_controls ON audit (seq) WHERE syscall = 'control.request';
