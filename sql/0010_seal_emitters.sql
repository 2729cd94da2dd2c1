-- Revision 0010: sealing reads no other session's activity (issue 17, after review).
--
-- The bound later entries may not be dated before (floor_at) was the start of the earliest
-- transaction holding a transaction id, read from pg_stat_activity, for which auditdb_owner held
-- pg_read_all_stats (every session's queries included). It is now taken from pg_locks, which
-- every role reads: an event's time is when auditdb.emit queued it, after its transaction took
-- the queue's id sequence, whose lock it then holds to its end. seal_state remembers the
-- transactions holding that lock when the pending range was noted, so that the next note knows
-- which of them are new since (their events are dated after that note) and which are not (their
-- events are bounded by the bound noted then).
set local role auditdb_owner;

alter table auditdb.seal_state add column pending_emitters text[];

comment on column auditdb.seal_state.pending_emitters is
    'auditdb: the transactions holding the event queue''s id sequence when pending_upto was noted';

reset role;

revoke pg_read_all_stats from auditdb_owner;
