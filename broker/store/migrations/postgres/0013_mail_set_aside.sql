-- Version 13: a message or an event a tool's receive or wait took and could not be sent
-- (past its sandbox's bound: `Sandbox.unsendable`) goes back set aside, `aside` the audit
-- seq of that call: a tool's receive or wait goes on past it, so one such message first in
-- line does not stop the mailbox (nor one event the name); the planner's (in the broker)
-- still takes it, and the host sees it (`messages_set_aside`, `events_set_aside`).
ALTER TABLE mailbox ADD COLUMN aside INTEGER;
ALTER TABLE raised_seen ADD COLUMN aside INTEGER;
