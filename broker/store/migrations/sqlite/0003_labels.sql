-- Version 3: information-flow labels (see `broker.caps.labels`, `broker.store.labels`).
-- A capability's label policy (JSON: {labels?, flows?}; NULL for none).
ALTER TABLE capabilities ADD COLUMN policy TEXT;
-- A process's context label, an object version's, a message's (JSON list; NULL: public).
ALTER TABLE processes ADD COLUMN labels TEXT;
ALTER TABLE objects ADD COLUMN labels TEXT;
ALTER TABLE mailbox ADD COLUMN labels TEXT;
-- A raised event's (its raiser's), which whoever takes it takes on.
ALTER TABLE raised ADD COLUMN labels TEXT;
-- The labels a flow bound asks a person about (approving declassifies them, once).
ALTER TABLE approvals ADD COLUMN labels TEXT;
-- A file's labels, keyed by its global virtual path; no row: public.
CREATE TABLE IF NOT EXISTS file_labels (
    path   TEXT PRIMARY KEY,
    labels TEXT NOT NULL            -- JSON list
);
