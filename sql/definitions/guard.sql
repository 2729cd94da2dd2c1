-- Append-only enforcement. Privileges keep everyone but auditdb_owner and auditdb_capture (which
-- may INSERT only the columns an entry's author chooses: never id, occurred_at, txid or db_user)
-- from writing the log; these statement triggers refuse UPDATE, DELETE and TRUNCATE to everyone,
-- superusers included. (A superuser can still add entries, as it can do anything: sealing is what
-- makes that visible. Refusing its plain INSERT cost every captured statement a PL/pgSQL call and
-- stopped nobody, since `set role auditdb_owner` passed it: revision 0008.) Statement-level
-- triggers fire only for the table a statement names, so every partition has its own
-- (auditdb.ensure_partitions gives one to each new month). ENABLE ALWAYS keeps them firing under
-- session_replication_role = replica.
set local role auditdb_owner;

create or replace function auditdb.refuse_log_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'auditdb.log is append-only: % on %.% is refused', tg_op, tg_table_schema, tg_table_name
        using errcode = 'insufficient_privilege',
              detail = 'Audit entries can be neither changed nor removed.',
              hint = 'Old months leave only through `auditdb partitions prune`.';
end
$$;

comment on function auditdb.refuse_log_change() is 'auditdb: guard trigger keeping auditdb.log append-only';

-- Give one log table (the parent or a partition) its guard trigger, enabled ALWAYS.
create or replace function auditdb.guard_log_table(target regclass) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from pg_trigger where tgrelid = target and tgname = 'log_append_only') then
        execute format('create trigger log_append_only before update or delete or truncate on %s '
                       'for each statement execute function auditdb.refuse_log_change()', target);
    end if;
    execute format('alter table %s enable always trigger log_append_only', target);
end
$$;

comment on function auditdb.guard_log_table(regclass) is 'auditdb: install the append-only guard on a log table';

reset role;
