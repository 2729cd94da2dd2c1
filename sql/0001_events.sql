-- Event triggers: the DDL around auditing is watched (see 0001_ddl.sql for what and why).
-- Their functions belong to the installing superuser, not auditdb_owner: giving a new
-- partition its capture triggers needs rights on tables auditdb_owner does not own. They
-- write the log only through auditdb.log_audit_change, and never make the user's DDL fail.

-- Check one relation after DDL touched it: the log's guards, or a tracked table's capture.
create function auditdb.check_relation(rel oid, command text) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    root oid;
    tracked record;
    member record;
    trigger_name text;
    events text[] := array['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'];
    names text[] := array['auditdb_capture_ins', 'auditdb_capture_upd', 'auditdb_capture_del', 'auditdb_capture_trunc'];
    i integer;
    current_columns jsonb;
    current_name text;
    generic_source text;
    bad record;
    added text[] := '{}';
begin
    if not exists (select from pg_class where oid = rel) then
        return;
    end if;
    if rel = 'auditdb.log'::regclass
       or exists (select from pg_inherits where inhrelid = rel and inhparent = 'auditdb.log'::regclass) then
        for bad in
            select c.oid::regclass::text as tbl, t.tgenabled
              from pg_class c
              left join pg_trigger t on t.tgrelid = c.oid and t.tgname = 'log_append_only'
             where c.oid = 'auditdb.log'::regclass
                or c.oid in (select inhrelid from pg_inherits where inhparent = 'auditdb.log'::regclass)
        loop
            if bad.tgenabled is distinct from 'A' then
                perform auditdb.log_audit_change('AuditLog', bad.tbl, bad.tbl, bad.tbl,
                    jsonb_build_object('operation', lower(command), 'trigger', 'log_append_only',
                                       'state', coalesce(bad.tgenabled::text, 'missing')));
            end if;
        end loop;
        for bad in
            select format('auditdb.%I', c.relname) as tbl from pg_class c
             where c.relnamespace = 'auditdb'::regnamespace and c.relkind = 'r'
               and c.relname ~ '^log_([0-9]{4}_[0-9]{2}|default)$' and not c.relispartition
        loop
            perform auditdb.log_audit_change('AuditPartition', bad.tbl, bad.tbl, null,
                jsonb_build_object('operation', 'detach', 'partition', bad.tbl));
        end loop;
        return;
    end if;

    root := coalesce(pg_partition_root(rel), rel);
    select * into tracked from auditdb.tracked_tables where relid = root;
    if not found then
        return;
    end if;
    -- Every member of the table's partition tree carries the capture triggers.
    for member in
        select root as relid union select p.relid from pg_partition_tree(root) p
    loop
        for i in 1 .. 4 loop
            if not exists (select from pg_trigger where tgrelid = member.relid and tgname = names[i]) then
                execute format('create trigger %I %s %s on %s %s for each statement execute function auditdb.%I()',
                               names[i], case when i = 4 then 'before' else 'after' end, lower(events[i]),
                               member.relid::regclass,
                               case i when 1 then 'referencing new table as auditdb_new'
                                      when 2 then 'referencing old table as auditdb_old new table as auditdb_new'
                                      when 3 then 'referencing old table as auditdb_old' else '' end,
                               tracked.function_name);
                execute format('alter table %s enable always trigger %I', member.relid::regclass, names[i]);
                execute format('comment on trigger %I on %s is %L', names[i], member.relid::regclass, tracked.signature);
                added := added || format('%s.%s', member.relid::regclass, names[i]);
            end if;
        end loop;
    end loop;
    if cardinality(added) > 0 then
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, tracked.table_name, tracked.table_name,
            jsonb_build_object('operation', 'capture_partition', 'triggers', to_jsonb(added)));
    end if;
    -- A capture trigger left in any state but ALWAYS is auditing turned (partly) off.
    for bad in
        select t.tgrelid::regclass::text as tbl, t.tgname, t.tgenabled from pg_trigger t
         where t.tgname = any(names)
           and t.tgrelid in (select root union select p.relid from pg_partition_tree(root) p)
           and t.tgenabled <> 'A'
    loop
        perform auditdb.log_audit_change('AuditTrigger', bad.tgname || ' on ' || bad.tbl, bad.tgname, tracked.table_name,
            jsonb_build_object('operation', case bad.tgenabled when 'D' then 'disable' else 'enable_origin_only' end,
                               'trigger', bad.tgname, 'table', bad.tbl, 'state', bad.tgenabled::text,
                               'command', command));
    end loop;
    -- Columns or name changed since apply: the generated function may no longer fit the table.
    select jsonb_agg(jsonb_build_array(a.attname, format_type(a.atttypid, a.atttypmod)) order by a.attnum)
      into current_columns
      from pg_attribute a where a.attrelid = root and a.attnum > 0 and not a.attisdropped;
    select format('%I.%I', n.nspname, c.relname) into current_name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = root;
    if current_columns is distinct from tracked.config->'column_types' or current_name <> tracked.table_name then
        select prosrc into generic_source from pg_proc where oid = 'auditdb.capture_generic()'::regprocedure;
        if (select prosrc from pg_proc where oid = to_regprocedure(format('auditdb.%I()', tracked.function_name)))
           is distinct from generic_source then
            execute format('create or replace function auditdb.%I() returns trigger language plpgsql security definer '
                           'set search_path = pg_catalog, pg_temp set timezone = %L set datestyle = %L '
                           'set intervalstyle = %L set extra_float_digits = 1 set jit = off as %L',
                           tracked.function_name, 'UTC', 'ISO, YMD', 'postgres', generic_source);
            execute format('comment on function auditdb.%I() is %L', tracked.function_name, 'auditdb:generic');
        end if;
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, tracked.table_name, tracked.table_name,
            jsonb_build_object('operation', 'schema_changed', 'command', command, 'table', current_name,
                               'columns', current_columns, 'columns_at_apply', tracked.config->'column_types',
                               'capture', 'generic until `auditdb apply`'));
        update auditdb.tracked_tables set config = jsonb_set(config, '{column_types}', current_columns)
         where relid = root;
    end if;
end
$$;

create function auditdb.on_ddl_command_end() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    rel oid;
begin
    if auditdb.in_maintenance() then
        return;
    end if;
    for rel in
        select distinct c.objid from pg_event_trigger_ddl_commands() c
         where c.classid = 'pg_class'::regclass and c.object_type in ('table', 'table column')
    loop
        perform auditdb.check_relation(rel, tg_tag);
    end loop;
exception when others then
    raise warning 'auditdb: could not check the auditing state after %: %', tg_tag, sqlerrm
        using hint = 'Run `auditdb status` and `auditdb apply`.';
end
$$;

create function auditdb.on_sql_drop() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    obj record;
    trigger_name text;
    tracked record;
begin
    if auditdb.in_maintenance() then
        return;
    end if;
    for obj in select * from pg_event_trigger_dropped_objects() loop
        if obj.object_type = 'trigger' and obj.original then
            trigger_name := obj.address_names[cardinality(obj.address_names)];
            if trigger_name in ('auditdb_capture_ins', 'auditdb_capture_upd', 'auditdb_capture_del',
                                'auditdb_capture_trunc', 'log_append_only') then
                perform auditdb.log_audit_change('AuditTrigger', obj.object_identity, trigger_name, null,
                    jsonb_build_object('operation', 'drop_trigger', 'trigger', obj.object_identity, 'command', tg_tag));
            end if;
        elsif obj.object_type = 'table' and obj.original then
            if obj.schema_name = 'auditdb' and obj.object_name ~ '^log_([0-9]{4}_[0-9]{2}|default)$' then
                perform auditdb.log_audit_change('AuditPartition', obj.object_name, obj.object_identity, null,
                    jsonb_build_object('operation', 'drop_partition', 'partition', obj.object_identity));
            else
                select * into tracked from auditdb.tracked_tables where relid::oid = obj.objid;
                if found then
                    perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, tracked.table_name,
                        tracked.table_name, jsonb_build_object('operation', 'drop_table', 'table', obj.object_identity));
                    delete from auditdb.tracked_tables where relid::oid = obj.objid;
                end if;
            end if;
        end if;
    end loop;
exception when others then
    raise warning 'auditdb: could not record the drop by %: %', tg_tag, sqlerrm;
end
$$;

revoke all on function auditdb.check_relation(oid, text), auditdb.on_ddl_command_end(), auditdb.on_sql_drop()
    from public;

create event trigger auditdb_ddl_command_end on ddl_command_end execute function auditdb.on_ddl_command_end();
create event trigger auditdb_sql_drop on sql_drop execute function auditdb.on_sql_drop();
alter event trigger auditdb_ddl_command_end enable always;
alter event trigger auditdb_sql_drop enable always;
comment on event trigger auditdb_ddl_command_end is 'auditdb: capture new partitions, keep capture working across schema changes, log AUDIT_CHANGED';
comment on event trigger auditdb_sql_drop is 'auditdb: log dropped capture triggers, log partitions and tracked tables as AUDIT_CHANGED';
