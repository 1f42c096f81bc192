-- libos store, SQLite in WAL mode. One file holds everything that must survive a crash.
-- The audit table has no secondary index: every syscall appends to it, and an index costs
-- a third of each append; reading one process's records scans instead.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS images (
    name    TEXT NOT NULL,
    version TEXT NOT NULL,
    spec    TEXT NOT NULL,          -- JSON: tools, needs, limits, planner, types
    created REAL NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS processes (
    pid       INTEGER PRIMARY KEY,
    parent    INTEGER,
    image     TEXT NOT NULL,
    version   TEXT NOT NULL,
    state     TEXT NOT NULL,
    reason    TEXT,
    exit_code INTEGER,
    result    TEXT,                 -- JSON: what the process exited with
    root      TEXT NOT NULL,
    cwd       TEXT NOT NULL,
    usage     TEXT NOT NULL,        -- JSON: budgets spent
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS capabilities (
    id        TEXT PRIMARY KEY,
    owner     INTEGER NOT NULL,
    handle    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    scope     TEXT NOT NULL,
    rights    TEXT NOT NULL,        -- comma separated, sorted
    effect    TEXT NOT NULL,
    uses      INTEGER,
    expires   REAL,
    parent    TEXT,
    args_hash TEXT,
    created   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS capabilities_owner ON capabilities (owner);

CREATE TABLE IF NOT EXISTS object_types (
    name   TEXT PRIMARY KEY,
    schema TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS objects (
    ns      TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    type    TEXT NOT NULL,
    payload TEXT NOT NULL,          -- JSON, validated against the type's schema
    pid     INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (ns, name, version)
);

CREATE TABLE IF NOT EXISTS tool_sources (
    hash   TEXT PRIMARY KEY,        -- sha256 of the source: content addressed
    lang   TEXT NOT NULL,
    source BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS process_tools (
    pid         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,      -- JSON: lang, hash, schema, description, manifest
    PRIMARY KEY (pid, name)
);

CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    ts   REAL NOT NULL,
    pid  INTEGER,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    pid       INTEGER,
    inv       INTEGER,
    tool      TEXT,
    phase     TEXT NOT NULL,        -- intent | outcome | denied | rejected | admin
    syscall   TEXT NOT NULL,
    resource  TEXT,
    args_hash TEXT,
    cap_id    TEXT,
    detail    TEXT NOT NULL,        -- JSON
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
