-- Version 2: leases of live processes to brokers (see `broker.store.leases`).
CREATE TABLE IF NOT EXISTS leases (
    pid     INTEGER PRIMARY KEY,
    holder  TEXT NOT NULL,          -- the broker's identity
    token   INTEGER NOT NULL,       -- the fencing token: one more at every take, never reused
    expires REAL NOT NULL
);
