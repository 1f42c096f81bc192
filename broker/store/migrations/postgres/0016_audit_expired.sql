-- Version 16: a request the chain records expired (no answer by its deadline) is never
-- answered nor resumed again, whatever its row says later (a writer who sets it back to
-- pending with a later deadline): the requests expired are read from the chain's `denied`
-- records that say so, through this index, as the cancelled ones are (`audit_admin`).
CREATE INDEX audit_expired ON audit (seq) WHERE phase = 'denied' AND detail LIKE '%expired%';
