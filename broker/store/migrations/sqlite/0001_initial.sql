-- libos store, SQLite in WAL mode. One file holds everything that must survive a crash.
-- Version 1 of the SQLite line (see `broker.store.migrations`): the schema as it was before
-- migrations were numbered. Every statement is IF NOT EXISTS, so a store made before then is
-- brought to version 1 by running it (and adding the columns added since, in Python).
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
    hash      TEXT NOT NULL,
    -- The full value, for replay (msgpack): a syscall outcome's result (whose hash the
    -- detail carries, so a replay is fed what the chain vouches for) or a tool call's full
    -- arguments (on its intent). In the same row: one insert, one commit.
    payload   BLOB
);

-- Approval requests and questions to a person (the approval queue). A front end in another
-- OS process (the CLI, the web page) only writes an answer into a pending row; the broker
-- notices, audits the answer and applies it (`applied` is set once it has).
CREATE TABLE IF NOT EXISTS approvals (
    id        TEXT PRIMARY KEY,     -- unguessable: apr_ + 96 random bits
    kind      TEXT NOT NULL,        -- capability | question
    pid       INTEGER NOT NULL,
    inv       INTEGER,
    tool      TEXT,
    syscall   TEXT NOT NULL,
    resource  TEXT,
    cap_kind  TEXT,                 -- the `ask` capability that covered the call
    cap_right TEXT,
    cap_id    TEXT,
    cap_scope TEXT,
    args      TEXT NOT NULL,        -- JSON: the exact arguments (bytes as {"$bytes": base64})
    args_hash TEXT NOT NULL,
    reason    TEXT,
    question  TEXT,                 -- JSON for human.ask: {text, schema?, choices?}
    created   REAL NOT NULL,
    deadline  REAL NOT NULL,
    state     TEXT NOT NULL,        -- pending | approved | denied | expired | cancelled
    answer    TEXT,                 -- once | always | deny | deny-always | answer
    scope     TEXT,                 -- for always / deny-always: the scope granted
    value     TEXT,                 -- JSON: a question's answer
    who       TEXT,
    answered  REAL,
    applied   REAL,
    grant_id  TEXT
);
DROP INDEX IF EXISTS approvals_state;  -- superseded by approvals_due
-- Pending requests by deadline: the broker's watcher expires the due ones.
CREATE INDEX IF NOT EXISTS approvals_due ON approvals (state, deadline);
-- A process's pending requests (to resume one after a restart, to cancel them at its end).
CREATE INDEX IF NOT EXISTS approvals_pid ON approvals (pid, state);
-- Answers another OS process wrote that the broker has not applied yet: what its watcher polls.
CREATE INDEX IF NOT EXISTS approvals_unapplied ON approvals (answered)
    WHERE applied IS NULL AND state IN ('approved', 'denied');

-- Refused answers from front ends that cannot write the audit (another OS process while a
-- broker runs): the broker drains them into the audit chain.
CREATE TABLE IF NOT EXISTS approval_rejects (
    seq     INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    detail  TEXT NOT NULL          -- JSON: request id, attempted answer, error
);

-- A process's planner history, one row per step: checkpoints refer to it by step number, so a
-- long history costs one row per step, not a copy per checkpoint.
CREATE TABLE IF NOT EXISTS observations (
    pid    INTEGER NOT NULL,
    step   INTEGER NOT NULL,
    action TEXT NOT NULL,           -- JSON
    result TEXT,                    -- JSON
    error  TEXT,                    -- JSON {code, message}
    PRIMARY KEY (pid, step)
);

-- A model planner's conversation, one row per turn: a checkpoint writes the turns added or
-- changed (elided) since the one before, and says how many turns it stands on.
CREATE TABLE IF NOT EXISTS planner_turns (
    pid  INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    turn TEXT NOT NULL,             -- JSON
    PRIMARY KEY (pid, n)
);

-- The latest checkpoint of each process: cwd, usage, pending action, planner state.
CREATE TABLE IF NOT EXISTS checkpoints (
    pid     INTEGER PRIMARY KEY,
    step    INTEGER NOT NULL,
    state   TEXT NOT NULL,          -- JSON
    created REAL NOT NULL
);

-- Checkpoints kept to fork from (see `broker.store.checkpoints`): each process's latest few,
-- as many as the kernel's retention setting says (the latest always among them), and those an
-- image was committed from (pinned), whatever their age.
CREATE TABLE IF NOT EXISTS checkpoint_log (
    id      INTEGER PRIMARY KEY,    -- the checkpoint id `fork --checkpoint` takes
    pid     INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    state   TEXT NOT NULL,          -- JSON, as in `checkpoints`
    created REAL NOT NULL,
    pinned  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS checkpoint_log_pid ON checkpoint_log (pid, id);

-- Durable mailboxes: a message is stored before `proc.send` returns.
CREATE TABLE IF NOT EXISTS mailbox (
    id       INTEGER PRIMARY KEY,
    to_pid   INTEGER NOT NULL,
    from_pid INTEGER,
    body     TEXT NOT NULL,         -- JSON
    created  REAL NOT NULL,
    taken    INTEGER                -- audit seq of the receive that took it
);
CREATE INDEX IF NOT EXISTS mailbox_to ON mailbox (to_pid, taken);

-- Named external events, raised by the host or a process; each process sees each event once.
CREATE TABLE IF NOT EXISTS raised (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    data    TEXT NOT NULL,          -- JSON
    source  INTEGER,
    created REAL NOT NULL
);
-- A wait reads the events of its one name: never a scan of every event ever raised.
CREATE INDEX IF NOT EXISTS raised_name ON raised (name, id);
CREATE TABLE IF NOT EXISTS raised_seen (
    pid   INTEGER NOT NULL,
    event INTEGER NOT NULL,
    taken INTEGER,                  -- audit seq of the wait_event that saw it
    PRIMARY KEY (pid, event)
);

-- Who holds a paused process: the operator, or a process that paused it (`pid:N`). A process
-- runs only while nobody holds it (see `broker.kernel.holds`).
CREATE TABLE IF NOT EXISTS holds (
    pid    INTEGER NOT NULL,
    holder TEXT NOT NULL,
    PRIMARY KEY (pid, holder)
);

-- Requests from other OS processes (the CLI) to the broker that holds the store.
CREATE TABLE IF NOT EXISTS control (
    id      INTEGER PRIMARY KEY,
    verb    TEXT NOT NULL,
    pid     INTEGER,
    created REAL NOT NULL,
    done    REAL,
    arg     TEXT,                   -- JSON: what the verb takes beyond the pid (fork: checkpoint)
    result  TEXT                    -- JSON: what applying it gave (fork: {pid} or {error})
);
