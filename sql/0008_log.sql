-- Revision 0008: each entry costs less to write (issue 15).
--  * The log's three CHECK constraints go. Only auditdb's own code writes entries (privileges keep
--    every other role out), and it checks what it writes where it is cheaper: emit refuses a
--    malformed action or non-object metadata (and the event queue keeps its own checks), and
--    `apply` checks every action a capture rule names. PostgreSQL re-reads each CHECK expression
--    for every INSERT statement: the three cost a single-row UPDATE's capture about a fifth of its
--    time (measured: bench/CAPTURE.md).
--  * The append-only guard no longer fires on INSERT: UPDATE, DELETE and TRUNCATE stay refused
--    to everyone. INSERT was refused to superusers only (privileges refuse everyone else), and a
--    superuser passed it with `set role auditdb_owner`; it cost every captured statement a
--    PL/pgSQL call.
-- Changes the log's tables only; no entry is read or rewritten.
set local role auditdb_owner;

alter table auditdb.log drop constraint if exists log_action_ck, drop constraint if exists log_changes_ck,
    drop constraint if exists log_metadata_ck;

reset role;

-- auditdb's own DDL: the watchers leave it alone (it is the upgrade's, which logs what it found).
insert into auditdb.maintenance (txid) values (pg_catalog.txid_current()) on conflict do nothing;
-- Each guard trigger that is there is made again without INSERT, in the state it was found in
-- (enabled always, or not): one someone disabled or removed stays so, and the upgrade reports it.
do $$
declare
    g record;
begin
    for g in
        select t.tgrelid::regclass as target, t.tgenabled
          from pg_catalog.pg_trigger t
         where t.tgname = 'log_append_only'
           and t.tgfoid = 'auditdb.refuse_log_change()'::pg_catalog.regprocedure
           and (t.tgrelid = 'auditdb.log'::regclass
                or t.tgrelid in (select i.inhrelid from pg_catalog.pg_inherits i where i.inhparent = 'auditdb.log'::regclass))
    loop
        execute pg_catalog.format('drop trigger log_append_only on %s', g.target);
        execute pg_catalog.format('create trigger log_append_only before update or delete or truncate on %s '
                                  'for each statement execute function auditdb.refuse_log_change()', g.target);
        execute pg_catalog.format('alter table %s %s trigger log_append_only', g.target,
                                  case g.tgenabled when 'A' then 'enable always' when 'R' then 'enable replica'
                                                   when 'D' then 'disable' else 'enable' end);
    end loop;
end
$$;
delete from auditdb.maintenance where txid = pg_catalog.txid_current();
