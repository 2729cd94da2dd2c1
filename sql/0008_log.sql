-- Revision 0008: each entry costs less to write (issue 15).
--  * The log's three CHECK constraints go. Only auditdb's own code writes entries (privileges and
--    the INSERT guard keep every other role out), and it checks what it writes where it is
--    cheaper: emit refuses a malformed action or non-object metadata (and the event queue keeps its
--    own checks), and `apply` checks every action a capture rule names. PostgreSQL re-reads each
--    CHECK expression for every INSERT statement: in a loop of 20,000 single-row UPDATEs of a
--    tracked table, the three cost about 6 µs of the 41 µs each UPDATE took.
--  * INSERT gets a guard of its own whose condition is its WHEN clause (any role but
--    auditdb_owner and auditdb_capture), so an entry auditdb writes calls no function: the guard
--    was a PL/pgSQL call on every captured statement. log_append_only keeps refusing UPDATE,
--    DELETE and TRUNCATE to everyone.
-- Changes the log's tables only; no entry is read or rewritten.
set local role auditdb_owner;

alter table auditdb.log drop constraint if exists log_action_ck, drop constraint if exists log_changes_ck,
    drop constraint if exists log_metadata_ck;

reset role;

-- auditdb's own DDL: the watchers leave it alone (it is the upgrade's, which logs what it found).
insert into auditdb.maintenance (txid) values (pg_catalog.txid_current()) on conflict do nothing;
-- Each guard trigger that is there is made again as the two, in the state it was found in
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
        execute pg_catalog.format('drop trigger if exists log_insert_guard on %s', g.target);
        execute pg_catalog.format('create trigger log_insert_guard before insert on %s for each statement '
                                  'when (current_user not in (''auditdb_owner'', ''auditdb_capture'')) '
                                  'execute function auditdb.refuse_log_change()', g.target);
        execute pg_catalog.format('alter table %1$s %2$s trigger log_append_only, %2$s trigger log_insert_guard',
                                  g.target, case g.tgenabled when 'A' then 'enable always' when 'R' then 'enable replica'
                                                             when 'D' then 'disable' else 'enable' end);
    end loop;
end
$$;
delete from auditdb.maintenance where txid = pg_catalog.txid_current();
