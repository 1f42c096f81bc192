-- Version 2: leases of live processes to brokers (see `broker.store.leases`).
CREATE TABLE leases (
    pid     BIGINT PRIMARY KEY,
    holder  TEXT NOT NULL,
    token   BIGINT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
