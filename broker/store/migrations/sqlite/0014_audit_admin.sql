-- Version 14: a request the chain records cancelled (its call gone, its process ended) is
-- never resumed, nor an answer in it applied, whatever its row says later (a writer who sets
-- it back to approved or pending): the requests cancelled are read from the chain's `admin`
-- records, through this index, as the answered ones are (`audit_answers`).
CREATE INDEX audit_admin ON audit (seq) WHERE phase = 'admin';
