-- Version 7: the broker polls the requests `libos` commands leave (`control`) several times a
-- second, and nearly always there are none: an index on the pending ones alone (partial: done
-- requests, kept a while for the commands that read their results back, are not in it) makes
-- that look cost the same however many requests were done before.
CREATE INDEX control_pending ON control (id, pid, verb) WHERE done IS NULL;
