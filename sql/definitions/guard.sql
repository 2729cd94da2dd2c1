-- Append-only enforcement. Privileges keep everyone but auditdb_owner and auditdb_capture (which
-- may INSERT only the columns an entry's author chooses: never id, occurred_at, txid or db_user)
-- from writing the log; two statement triggers on the log and on every partition back them:
-- log_append_only refuses UPDATE, DELETE and TRUNCATE to everyone, superusers included, and
-- log_insert_guard refuses INSERT to any role but those two (a superuser's plain INSERT, or a
-- role given BYPASSRLS and pg_write_all_data). The INSERT guard's condition is its WHEN clause, so
-- an entry written by auditdb calls no function (revision 0008: it was a PL/pgSQL call on every
-- captured statement). Statement-level triggers fire only for the table a statement names, so
-- every partition has its own (auditdb.ensure_partitions gives one to each new month). ENABLE
-- ALWAYS keeps them firing under session_replication_role = replica.
set local role auditdb_owner;

create or replace function auditdb.refuse_log_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        raise exception 'auditdb.log is written only by auditdb itself: INSERT into %.% by % is refused',
                        tg_table_schema, tg_table_name, current_user
            using errcode = 'insufficient_privilege',
                  detail = 'Entries come from audit triggers and auditdb.emit, never from a direct INSERT.',
                  hint = 'Use auditdb.emit(...) to record an event.';
    end if;
    raise exception 'auditdb.log is append-only: % on %.% is refused', tg_op, tg_table_schema, tg_table_name
        using errcode = 'insufficient_privilege',
              detail = 'Audit entries can be neither changed nor removed.',
              hint = 'Old months leave only through `auditdb partitions prune`.';
end
$$;

comment on function auditdb.refuse_log_change() is 'auditdb: guard trigger keeping auditdb.log append-only';

-- Give one log table (the parent or a partition) its guard triggers, enabled ALWAYS.
create or replace function auditdb.guard_log_table(target regclass) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from pg_trigger where tgrelid = target and tgname = 'log_append_only') then
        execute format('create trigger log_append_only before update or delete or truncate on %s '
                       'for each statement execute function auditdb.refuse_log_change()', target);
    end if;
    if not exists (select from pg_trigger where tgrelid = target and tgname = 'log_insert_guard') then
        execute format('create trigger log_insert_guard before insert on %s for each statement '
                       'when (current_user not in (''auditdb_owner'', ''auditdb_capture'')) '
                       'execute function auditdb.refuse_log_change()', target);
    end if;
    execute format('alter table %s enable always trigger log_append_only', target);
    execute format('alter table %s enable always trigger log_insert_guard', target);
end
$$;

comment on function auditdb.guard_log_table(regclass) is 'auditdb: install the append-only guards on a log table';

-- Seals are append-only too, and written only by auditdb_owner (auditdb.seal); the sealer's state
-- is auditdb_owner's alone. Refused here to everyone else, superusers' plain statements included.
create or replace function auditdb.refuse_seal_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'auditdb.% is written only by auditdb.seal(): % by % is refused', tg_table_name, tg_op, current_user
        using errcode = 'insufficient_privilege',
              detail = 'Seals are append-only: each one chains to the one before it.';
end
$$;

comment on function auditdb.refuse_seal_change() is 'auditdb: guard trigger keeping seals append-only';

do $$
begin
    if not exists (select from pg_trigger where tgrelid = 'auditdb.seal'::regclass and tgname = 'seal_append_only') then
        create trigger seal_append_only before update or delete or truncate on auditdb.seal
            for each statement execute function auditdb.refuse_seal_change();
    end if;
    if not exists (select from pg_trigger where tgrelid = 'auditdb.seal'::regclass and tgname = 'seal_insert_guard') then
        create trigger seal_insert_guard before insert on auditdb.seal for each statement
            when (current_user <> 'auditdb_owner') execute function auditdb.refuse_seal_change();
    end if;
    if not exists (select from pg_trigger where tgrelid = 'auditdb.seal_state'::regclass and tgname = 'seal_state_guard') then
        create trigger seal_state_guard before insert or update or delete or truncate on auditdb.seal_state
            for each statement when (current_user <> 'auditdb_owner') execute function auditdb.refuse_seal_change();
    end if;
end
$$;
alter table auditdb.seal enable always trigger seal_append_only, enable always trigger seal_insert_guard;
alter table auditdb.seal_state enable always trigger seal_state_guard;

reset role;
