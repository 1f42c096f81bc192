-- Version 4: each writer's newest signed anchor of the audit chain, in the store, so that a
-- verifier on any host finds every broker's (see `broker.store.anchor`). Trust never comes
-- from here: a verifier checks each signature against the public keys it holds itself.
CREATE TABLE anchors (
    signer    TEXT PRIMARY KEY,         -- the broker's identity ('' for a single writer)
    seq       BIGINT NOT NULL,          -- the head it signed
    hash      TEXT NOT NULL,
    key       TEXT NOT NULL,            -- the Ed25519 public key, hex
    signature TEXT NOT NULL,
    at        DOUBLE PRECISION NOT NULL
);
