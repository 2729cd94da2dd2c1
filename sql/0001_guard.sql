-- Append-only enforcement. No grant lets anyone but auditdb_owner insert; these triggers refuse
-- UPDATE, DELETE and TRUNCATE to everyone, superusers included, and INSERT to anyone but
-- auditdb_owner (whose security-definer functions write every entry), so not even a superuser
-- forges an entry by a plain INSERT. Statement-level triggers fire
-- only for the table a statement names, so auditdb.ensure_partitions gives every partition its
-- own. ENABLE ALWAYS keeps them firing under session_replication_role = replica.
set local role auditdb_owner;

create function auditdb.refuse_log_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if current_user = 'auditdb_owner' then
            return null;
        end if;
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

-- Give one log table (the parent or a partition) its guard trigger, enabled ALWAYS.
create function auditdb.guard_log_table(target regclass) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from pg_trigger where tgrelid = target and tgname = 'log_append_only') then
        execute format('create trigger log_append_only before insert or update or delete or truncate on %s '
                       'for each statement execute function auditdb.refuse_log_change()', target);
    end if;
    execute format('alter table %s enable always trigger log_append_only', target);
end
$$;

comment on function auditdb.guard_log_table(regclass) is 'auditdb: install the append-only guard on a log table';

select auditdb.guard_log_table('auditdb.log');

reset role;
