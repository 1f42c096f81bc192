-- Version 4: each writer's newest signed anchor of the audit chain, in the store, so that a
-- verifier on any host finds every broker's (see `broker.store.anchor`). Trust never comes
-- from here: a verifier checks each signature against the public keys it holds itself.
-- (An SQLite store's one writer keeps its anchor in the lock file beside it: on one host,
-- nothing to gather; the table keeps the two lines of the schema the same.)
CREATE TABLE IF NOT EXISTS anchors (
    signer    TEXT PRIMARY KEY,         -- the broker's identity ('' for a single writer)
    seq       INTEGER NOT NULL,         -- the head it signed
    hash      TEXT NOT NULL,
    key       TEXT NOT NULL,            -- the Ed25519 public key, hex
    signature TEXT NOT NULL,
    at        REAL NOT NULL
);
