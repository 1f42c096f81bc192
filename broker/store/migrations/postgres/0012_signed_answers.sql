-- Version 12: an answer written into an approval request through the store (`libos approve`,
-- `libos web`) is signed by the key of the user who gave it (`broker.store.answer_sig`): `sig`
-- holds "<public key> <store> <nonce> <signature>" (hex), and a broker applies only an answer
-- signed by a key it trusts, made for this store and this request, and only once: the
-- requests answered are read from the chain's `approval.answer` records (`audit_answers`).
ALTER TABLE approvals ADD COLUMN sig TEXT;
CREATE INDEX audit_answers ON audit (seq) WHERE syscall = 'approval.answer';
