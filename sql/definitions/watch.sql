-- The DDL watchers: event triggers that keep capture complete and log, as AUDIT_CHANGED, what DDL
-- does to auditing and to tracked data:
--  * a capture or guard trigger disabled, re-enabled as origin-only, renamed or dropped; a log
--    partition dropped or detached; a tracked table dropped;
--  * a partition created in, attached to, detached from or dropped out of a tracked table (with
--    the rows that joined or left); a new one gets the capture triggers at once;
--  * a tracked table's columns or name changed: its capture function is given the generic body
--    (sql/definitions/capture.sql) until `auditdb apply` generates the fast one again;
--  * DDL that can change stored values of a tracked table without firing a row trigger: a table
--    rewrite (ALTER COLUMN … TYPE … USING, also to the same type), an ALTER TYPE or ALTER DOMAIN of a
--    type a tracked column uses (RENAME VALUE swaps what stored values mean). With
--    refuse_data_ddl set by apply, such DDL is refused unless the session user is a system role.
-- Fail closed: a watcher that cannot write its entry makes the DDL fail, with a message saying so.
--
-- These functions belong to the installing superuser (creating a partition's capture triggers
-- needs rights on tables nobody else has), so none of them runs code another role controls: they
-- read the catalog and auditdb's tables, run DDL whose names come from the catalog, and count a
-- partition's rows with COPY of the table, which plans nothing and calls only output functions
-- (auditdb.counted_rows). auditdb's own upkeep (apply, partitions) marks its transaction
-- (auditdb.begin_maintenance) and logs itself.

-- The rows of one table, counted without running anything its owner controls. Planning even
-- `select count(*)` folds the constants in the table's index expressions and predicates and in
-- its extended statistics, which may call the owner's functions: a table with any of those is not
-- counted (null: the caller records the planner's estimate instead). Otherwise nothing of the
-- owner's is reached (no constraint exclusion, no row-level security for a superuser).
create or replace function auditdb.counted_rows(rel regclass) returns bigint
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
set constraint_exclusion = off
as $$
declare
    n bigint;
begin
    if exists (select from pg_index i where i.indrelid = rel and (i.indexprs is not null or i.indpred is not null))
       or exists (select from pg_statistic_ext x where x.stxrelid = rel and x.stxexprs is not null) then
        return null;
    end if;
    execute format('select count(*) from only %s', rel) into n;
    return n;
end
$$;

comment on function auditdb.counted_rows(regclass) is 'auditdb: a table''s row count, read without running its owner''s code';

-- A partition's rows for an entry: counted, or the planner's estimate where counting could run the
-- owner's code ({"rows": n} or {"rows_estimated": n}).
create or replace function auditdb.partition_rows(rel regclass) returns jsonb
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    n bigint;
begin
    if (select relkind from pg_class where oid = rel) <> 'r' then
        return '{}';
    end if;
    n := auditdb.counted_rows(rel);
    if n is not null then
        return jsonb_build_object('rows', n);
    end if;
    return jsonb_build_object('rows_estimated', nullif(greatest((select reltuples from pg_class where oid = rel), -1), -1)::bigint);
end
$$;

-- Every type a value of type typ is made of: itself, a domain's base, an array's element, a
-- composite's attributes, a range's subtype, a multirange's range (recursively).
create or replace function auditdb.type_closure(typ oid) returns oid[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with recursive parts(t) as (
        select typ
        union
        select x.part from parts
          join pg_type p on p.oid = parts.t
          cross join lateral (
              select p.typbasetype where p.typtype = 'd'
              union all select p.typelem where p.typelem <> 0
              union all select a.atttypid from pg_attribute a where p.typrelid <> 0 and a.attrelid = p.typrelid
                                                              and a.attnum > 0 and not a.attisdropped
              union all select r.rngsubtype from pg_range r where r.rngtypid = p.oid
              union all select r.rngtypid from pg_range r where r.rngmultitypid = p.oid
          ) x(part)
         where x.part <> 0
    )
    select array_agg(t) from parts
$$;

-- Refuse DDL that changes tracked data or turns capture off, when refuse_data_ddl is set and the
-- session user is not a system role.
create or replace function auditdb.refuse_data_ddl(what text, target text,
                                                   reason text default 'it changes tracked data without a row trigger')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if coalesce((select s.value = 'true' from auditdb.settings s where s.name = 'refuse_data_ddl'), false)
       and not auditdb.is_system_role(array(select jsonb_array_elements_text(
               coalesce((select s.value from auditdb.settings s where s.name = 'system_roles'), '[]')))) then
        raise exception 'auditdb: % of % refused: %', what, target, reason
            using errcode = 'insufficient_privilege',
                  detail = 'refuse_data_ddl is set in auditdb.toml and session user ' || session_user || ' is not a system role.',
                  hint = 'Run it as a role listed in system_roles, or change the rows with UPDATE so each change is logged.';
    end if;
end
$$;

-- Give a tracked table's capture function the generic body (same settings), keeping its owner.
create or replace function auditdb.use_generic_capture(function_name text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    if (select prosrc from pg_proc where oid = to_regprocedure(format('auditdb.%I()', function_name)))
       is not distinct from (select prosrc from pg_proc where oid = 'auditdb.capture_generic()'::regprocedure) then
        return;
    end if;
    execute format('create or replace function auditdb.%I() returns trigger language plpgsql security definer as %L',
                   function_name, (select prosrc from pg_proc where oid = 'auditdb.capture_generic()'::regprocedure));
    perform auditdb.pin_capture_settings(format('auditdb.%I()', function_name)::regprocedure);
    execute format('comment on function auditdb.%I() is %L', function_name, 'auditdb:generic');
end
$$;

comment on function auditdb.use_generic_capture(text) is 'auditdb: switch a tracked table''s capture to the generic body';

-- One of a tracked table's four capture triggers (i: 1 insert, 2 update, 3 delete, 4 truncate) on
-- one table of its tree, enabled ALWAYS, with the signature of the config it was generated from.
create or replace function auditdb.create_capture_trigger(target regclass, i integer, function_name text, signature text)
returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    names text[] := auditdb.capture_trigger_names();
begin
    execute format('create trigger %I %s on %s %s for each statement execute function auditdb.%I()',
                   names[i], (array['after insert', 'after update', 'after delete', 'before truncate'])[i], target,
                   (array['referencing new table as auditdb_new',
                          'referencing old table as auditdb_old new table as auditdb_new',
                          'referencing old table as auditdb_old', ''])[i],
                   function_name);
    execute format('alter table %s enable always trigger %I', target, names[i]);
    execute format('comment on trigger %I on %s is %L', names[i], target, signature);
end
$$;

-- The log's guards after DDL touched the log or one of its partitions.
create or replace function auditdb.watch_log(command text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    bad record;
begin
    for bad in
        -- tgtype: 2 BEFORE, 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE (statement level: no 1).
        select c.oid::regclass::text as tbl, g.name,
               case when t.oid is not null
                         and (t.tgtype <> g.tgtype or (t.tgqual is null) <> g.unconditional)
                    then 'changed' else t.tgenabled::text end as tgenabled
          from pg_class c
         cross join (values ('log_append_only', 58::int2, true), ('log_insert_guard', 6::int2, false)) g(name, tgtype, unconditional)
          left join pg_trigger t on t.tgrelid = c.oid and t.tgname = g.name
                                and t.tgfoid = 'auditdb.refuse_log_change()'::regprocedure
         where c.oid = 'auditdb.log'::regclass
            or c.oid in (select inhrelid from pg_inherits where inhparent = 'auditdb.log'::regclass)
    loop
        if bad.tgenabled is distinct from 'A' then
            perform auditdb.log_audit_change('AuditLog', bad.tbl, bad.tbl, bad.tbl,
                jsonb_build_object('operation', lower(command), 'trigger', bad.name,
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
end
$$;

-- A tracked table after DDL touched it (root: the tracked table itself).
create or replace function auditdb.watch_table(root oid, command text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    tracked record;
    member record;
    names text[] := auditdb.capture_trigger_names();
    bits integer[] := array[4, 16, 8, 32];
    capture oid;
    i integer;
    current_columns jsonb;
    current_name text;
    current_partitions oid[];
    part oid;
    added text[];
    bad record;
begin
    select * into tracked from auditdb.tracked_tables where relid = root;
    if not found then
        return;
    end if;
    capture := to_regprocedure(format('auditdb.%I()', tracked.function_name));
    select format('%I.%I', n.nspname, c.relname) into current_name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = root;

    -- Partitions that left (detached: their rows left the tracked table) or joined.
    -- A partition half-detached (DETACH … CONCURRENTLY interrupted) has left already: its rows are
    -- hidden from the table.
    current_partitions := coalesce(array(
        select p.relid from pg_partition_tree(root) p
         where p.relid <> root
           and not exists (select from pg_inherits i where i.inhrelid = p.relid and i.inhdetachpending)
         order by 1), '{}');
    if current_partitions is distinct from tracked.partitions then
        update auditdb.tracked_tables set partitions = current_partitions where relid = root;
    end if;
    foreach part in array tracked.partitions loop
        continue when part = any(current_partitions) or not exists (select from pg_class where oid = part)
                      or (pg_partition_root(part) = root
                          and not exists (select from pg_inherits i where i.inhrelid = part and i.inhdetachpending));
        perform auditdb.refuse_data_ddl('detaching a partition', current_name);
        perform auditdb.log_audit_change('AuditPartition', tracked.table_name, part::regclass::text, tracked.table_name,
            jsonb_build_object('operation', 'detach_partition', 'partition', part::regclass::text, 'command', command) || auditdb.partition_rows(part::regclass));
        -- A table that left is no longer this table's: its writes must not be logged as this one's.
        for bad in
            select t.tgrelid::regclass as tbl, t.tgname from pg_trigger t
             where t.tgfoid = capture
               and t.tgrelid in (select part union select p.relid from pg_partition_tree(part) p)
        loop
            execute format('drop trigger %I on %s', bad.tgname, bad.tbl);
        end loop;
    end loop;
    foreach part in array current_partitions loop
        continue when part = any(tracked.partitions);
        if command <> 'CREATE TABLE' then
            perform auditdb.refuse_data_ddl('attaching a partition', current_name);
        end if;
        added := '{}';
        for i in 1 .. 4 loop
            if not exists (select from pg_trigger where tgrelid = part and tgfoid = capture and tgtype & bits[i] <> 0) then
                perform auditdb.create_capture_trigger(part::regclass, i, tracked.function_name, tracked.signature);
                added := added || names[i];
            end if;
        end loop;
        perform auditdb.log_audit_change('AuditPartition', tracked.table_name, part::regclass::text, tracked.table_name,
            jsonb_build_object('operation', case when command = 'CREATE TABLE' then 'create_partition' else 'attach_partition' end,
                               'partition', part::regclass::text, 'command', command, 'triggers', to_jsonb(added))
            || case when command = 'CREATE TABLE' then '{"rows": 0}'::jsonb else auditdb.partition_rows(part::regclass) end);
    end loop;

    -- Every member of the table's partition tree carries the capture triggers (one dropped is
    -- put back at the table's next DDL, and its drop was logged).
    for member in select root as relid union select unnest(current_partitions) loop
        added := '{}';
        for i in 1 .. 4 loop
            if not exists (select from pg_trigger where tgrelid = member.relid and tgfoid = capture and tgtype & bits[i] <> 0) then
                perform auditdb.create_capture_trigger(member.relid::regclass, i, tracked.function_name, tracked.signature);
                added := added || names[i];
            end if;
        end loop;
        if cardinality(added) > 0 then
            perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, member.relid::regclass::text, tracked.table_name,
                jsonb_build_object('operation', 'restore_triggers', 'table', member.relid::regclass::text,
                                   'triggers', to_jsonb(added), 'command', command));
        end if;
    end loop;
    for bad in
        select t.tgrelid::regclass::text as tbl, t.tgname, t.tgenabled from pg_trigger t
         where t.tgfoid = capture and t.tgenabled <> 'A'
           and t.tgrelid in (select root union select unnest(current_partitions))
    loop
        perform auditdb.refuse_data_ddl('disabling capture', bad.tbl, 'it turns capture off');
        perform auditdb.log_audit_change('AuditTrigger', bad.tgname || ' on ' || bad.tbl, bad.tgname, tracked.table_name,
            jsonb_build_object('operation', case bad.tgenabled when 'D' then 'disable' when 'R' then 'enable_replica_only'
                                                               else 'enable_origin_only' end,
                               'trigger', bad.tgname, 'table', bad.tbl, 'state', bad.tgenabled::text,
                               'command', command));
    end loop;

    -- Columns or name changed since apply: the generated function may no longer fit the table.
    select jsonb_agg(jsonb_build_array(a.attname, a.atttypid::int8, a.atttypmod, a.attcollation::int8) order by a.attnum)
      into current_columns
      from pg_attribute a where a.attrelid = root and a.attnum > 0 and not a.attisdropped;
    if current_columns is distinct from tracked.config->'columns' or current_name <> tracked.table_name then
        perform auditdb.use_generic_capture(tracked.function_name);
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, tracked.table_name, tracked.table_name,
            jsonb_build_object('operation', 'schema_changed', 'command', command, 'table', current_name,
                               'columns', current_columns, 'columns_at_apply', tracked.config->'columns',
                               'capture', 'generic until `auditdb apply`'));
        update auditdb.tracked_tables set config = jsonb_set(config, '{columns}', current_columns) where relid = root;
    end if;
end
$$;

-- Fail closed: a watcher that cannot record what a command does to auditing stops the command.
create or replace function auditdb.watcher_failed(command text, reason text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'auditdb: % refused: its effect on auditing could not be recorded (%)', command, reason
        using errcode = 'external_routine_exception',
              hint = 'Nothing was changed. Check `auditdb doctor`; report this if it persists.';
end
$$;

-- A type a tracked column is made of, after DDL changed it (an enum's RENAME VALUE swaps what stored
-- values mean; a composite's attributes change stored values).
create or replace function auditdb.watch_type(typ oid, identity text, command text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    tracked record;
begin
    if typ is null or typ = 0 then
        return;
    end if;
    for tracked in
        select tt.table_name from auditdb.tracked_tables tt
         where exists (select from pg_attribute a where a.attrelid = tt.relid and a.attnum > 0
                          and not a.attisdropped and typ = any(auditdb.type_closure(a.atttypid)))
    loop
        perform auditdb.refuse_data_ddl(lower(command), identity);
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, identity, tracked.table_name,
            jsonb_build_object('operation', 'alter_type', 'type', identity, 'command', command,
                               'labels', (select jsonb_agg(e.enumlabel order by e.enumsortorder)
                                            from pg_enum e where e.enumtypid = typ)));
    end loop;
end
$$;

-- Tables inheriting from a tracked table, directly or through others (not partitions): their rows
-- show in the tracked table's queries, but their writes fire only their own triggers, so they are
-- not captured. Each one joining or leaving is logged (and refused with refuse_data_ddl).
create or replace function auditdb.watch_children(root oid, command text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    tracked record;
    current_children oid[];
    child oid;
begin
    select * into tracked from auditdb.tracked_tables where relid = root;
    if not found then
        return;
    end if;
    current_children := coalesce(array(
        with recursive down(relid) as (
            select i.inhrelid from pg_inherits i join pg_class c on c.oid = i.inhrelid
             where i.inhparent = root and not c.relispartition
            union
            select i.inhrelid from pg_inherits i join down on i.inhparent = down.relid
        )
        select relid from down order by 1), '{}');
    if current_children is not distinct from tracked.children then
        return;
    end if;
    update auditdb.tracked_tables set children = current_children where relid = root;
    foreach child in array current_children loop
        continue when child = any(tracked.children);
        perform auditdb.refuse_data_ddl('inheriting from', tracked.table_name,
                                        'its rows would show in the tracked table uncaptured');
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, child::regclass::text, tracked.table_name,
            jsonb_build_object('operation', 'inherit', 'child', child::regclass::text, 'command', command,
                               'captured', false) || auditdb.partition_rows(child::regclass));
    end loop;
    foreach child in array tracked.children loop
        continue when child = any(current_children) or not exists (select from pg_class where oid = child);
        perform auditdb.refuse_data_ddl('ending inheritance from', tracked.table_name,
                                        'its rows would leave the tracked table unlogged');
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, child::regclass::text, tracked.table_name,
            jsonb_build_object('operation', 'no_inherit', 'child', child::regclass::text, 'command', command)
            || auditdb.partition_rows(child::regclass));
    end loop;
end
$$;

-- After DDL on a table: the inheritance of every tracked table it is, was or becomes a descendant of.
create or replace function auditdb.watch_inheritance(rel oid, command text) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    root oid;
begin
    for root in
        select t.relid from auditdb.tracked_tables t
         where rel = any(t.children)
            or t.relid in (with recursive up(relid) as (
                               select i.inhparent from pg_inherits i where i.inhrelid = rel
                               union
                               select i.inhparent from pg_inherits i join up on i.inhrelid = up.relid)
                           select relid from up)
    loop
        perform auditdb.watch_children(root, command);
    end loop;
end
$$;

-- ddl_command_end: every table, trigger and type the command touched.
-- definer: the installing superuser's; reads the catalog and runs DDL named from it, never the table owner's code.
create or replace function auditdb.on_ddl_command_end() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    obj record;
    root oid;
    tracked record;
    trg record;
begin
    if auditdb.in_maintenance() or tg_tag in ('GRANT', 'REVOKE', 'COMMENT') then
        return;
    end if;
    begin
        -- The DDL this watcher runs itself (capture triggers, the generic body) is not watched again.
        perform auditdb.begin_maintenance();
        for obj in select distinct on (c.classid, c.objid) c.classid, c.objid, c.object_type, c.object_identity
                      from pg_event_trigger_ddl_commands() c loop
            if obj.classid = 'pg_class'::regclass and exists (select from pg_class where oid = obj.objid) then
                if obj.objid = 'auditdb.log'::regclass
                   or exists (select from pg_inherits where inhrelid = obj.objid and inhparent = 'auditdb.log'::regclass) then
                    perform auditdb.watch_log(tg_tag);
                else
                    root := coalesce(pg_partition_root(obj.objid), obj.objid);
                    perform auditdb.watch_table(root, tg_tag);
                    -- A table detached from a tracked one names only the table it left.
                    if root = obj.objid and (select relispartition from pg_class where oid = obj.objid) is false then
                        for tracked in select t.relid from auditdb.tracked_tables t where obj.objid = any(t.partitions) loop
                            perform auditdb.watch_table(tracked.relid, tg_tag);
                        end loop;
                    end if;
                    perform auditdb.watch_inheritance(obj.objid, tg_tag);
                    -- A table whose row type is a column type of a tracked table (a composite's
                    -- attributes changed: stored values changed with them).
                    if exists (select from pg_depend d
                                where d.refclassid = 'pg_type'::regclass and d.deptype = 'n'
                                  and d.refobjid = (select reltype from pg_class where oid = obj.objid)) then
                        perform auditdb.watch_type((select reltype from pg_class where oid = obj.objid),
                                                   obj.object_identity, tg_tag);
                    end if;
                end if;
            elsif obj.classid = 'pg_trigger'::regclass
                  and exists (select from pg_trigger t where t.oid = obj.objid
                                 and (t.tgrelid = 'auditdb.log'::regclass
                                      or t.tgrelid in (select inhrelid from pg_inherits where inhparent = 'auditdb.log'::regclass))) then
                -- A guard renamed, or replaced by CREATE OR REPLACE TRIGGER.
                perform auditdb.watch_log(tg_tag);
            elsif obj.classid = 'pg_trigger'::regclass then
                -- A capture trigger renamed: still captures, but status and the drop watcher know it by name.
                select t.tgname, t.tgrelid, tt.table_name into trg
                  from pg_trigger t join auditdb.tracked_tables tt
                    on tt.relid = coalesce(pg_partition_root(t.tgrelid), t.tgrelid)
                   and t.tgfoid = to_regprocedure(format('auditdb.%I()', tt.function_name))
                 where t.oid = obj.objid;
                if found and trg.tgname <> all (auditdb.capture_trigger_names()) then
                    perform auditdb.refuse_data_ddl('renaming a capture trigger', obj.object_identity, 'it hides capture');
                    perform auditdb.log_audit_change('AuditTrigger', obj.object_identity, trg.tgname, trg.table_name,
                        jsonb_build_object('operation', 'rename_trigger', 'trigger', obj.object_identity,
                                           'command', tg_tag));
                end if;
            elsif obj.classid = 'pg_type'::regclass then
                perform auditdb.watch_type(obj.objid, obj.object_identity, tg_tag);
            end if;
        end loop;
        perform auditdb.end_maintenance();
    exception when insufficient_privilege then
        raise;
    when others then
        perform auditdb.watcher_failed(tg_tag, sqlerrm);
    end;
end
$$;

-- sql_drop: capture triggers (whatever their name), log partitions, tracked tables and their partitions.
-- definer: the installing superuser's; reads the catalog and auditdb's tables only.
create or replace function auditdb.on_sql_drop() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    obj record;
    rel oid;
    tracked record;
    gone text[];
begin
    if auditdb.in_maintenance() then
        return;
    end if;
    begin
        for obj in select * from pg_event_trigger_dropped_objects() loop
            if obj.object_type = 'trigger' then
                -- The trigger's table, if it is still there (a dropped table drops its triggers too).
                rel := to_regclass(format('%I.%I', obj.address_names[1], obj.address_names[2]));
                continue when rel is null;
                if rel = 'auditdb.log'::regclass
                   or exists (select from pg_inherits where inhrelid = rel and inhparent = 'auditdb.log'::regclass) then
                    -- Any trigger of the log's, whatever it is called now (a guard renamed, then dropped).
                    perform auditdb.log_audit_change('AuditTrigger', obj.object_identity, obj.address_names[3], null,
                        jsonb_build_object('operation', 'drop_trigger', 'trigger', obj.object_identity, 'command', tg_tag));
                    continue;
                end if;
                select * into tracked from auditdb.tracked_tables tt where tt.relid = coalesce(pg_partition_root(rel), rel);
                continue when not found;
                -- Whatever its name: if the table now lacks capture for some event, a capture trigger went.
                select array_agg(e.name) into gone
                  from (values ('INSERT', 4), ('UPDATE', 16), ('DELETE', 8), ('TRUNCATE', 32)) e(name, bit)
                 where not exists (select from pg_trigger t where t.tgrelid = rel and t.tgtype & e.bit <> 0
                                      and t.tgfoid = to_regprocedure(format('auditdb.%I()', tracked.function_name)));
                if gone is not null then
                    perform auditdb.refuse_data_ddl('dropping a capture trigger', obj.object_identity, 'it turns capture off');
                    perform auditdb.log_audit_change('AuditTrigger', obj.object_identity, obj.address_names[3],
                        tracked.table_name, jsonb_build_object('operation', 'drop_trigger', 'trigger', obj.object_identity,
                                                               'uncaptured', to_jsonb(gone), 'command', tg_tag));
                end if;
            elsif obj.object_type = 'table' then
                if obj.schema_name = 'auditdb' and obj.object_name ~ '^log_([0-9]{4}_[0-9]{2}|default)$' then
                    perform auditdb.log_audit_change('AuditPartition', obj.object_name, obj.object_identity, null,
                        jsonb_build_object('operation', 'drop_partition', 'partition', obj.object_identity));
                    continue;
                end if;
                select * into tracked from auditdb.tracked_tables where relid::oid = obj.objid;
                if found then
                    perform auditdb.refuse_data_ddl('dropping', tracked.table_name, 'it removes a tracked table');
                    perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, tracked.table_name,
                        tracked.table_name, jsonb_build_object('operation', 'drop_table', 'table', obj.object_identity));
                    delete from auditdb.tracked_tables where relid::oid = obj.objid;
                    continue;
                end if;
                for tracked in select * from auditdb.tracked_tables tt where obj.objid = any(tt.children) loop
                    perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, obj.object_identity,
                        tracked.table_name, jsonb_build_object('operation', 'drop_child', 'child', obj.object_identity));
                    update auditdb.tracked_tables set children = array_remove(children, obj.objid) where relid = tracked.relid;
                end loop;
                for tracked in select * from auditdb.tracked_tables tt where obj.objid = any(tt.partitions) loop
                    -- A partition dropped in place: its rows left the tracked table (how many is gone with it).
                    perform auditdb.refuse_data_ddl('dropping a partition', tracked.table_name);
                    perform auditdb.log_audit_change('AuditPartition', tracked.table_name, obj.object_identity,
                        tracked.table_name, jsonb_build_object('operation', 'drop_partition', 'partition', obj.object_identity,
                                                               'rows', null));
                    update auditdb.tracked_tables set partitions = array_remove(partitions, obj.objid) where relid = tracked.relid;
                end loop;
            elsif obj.object_type = 'function' and obj.schema_name = 'auditdb' and obj.object_name like 'auditdb\_capture\_%' then
                perform auditdb.log_audit_change('AuditTrigger', obj.object_identity, obj.object_name, null,
                    jsonb_build_object('operation', 'drop_function', 'function', obj.object_identity, 'command', tg_tag));
            end if;
        end loop;
    exception when insufficient_privilege then
        raise;
    when others then
        perform auditdb.watcher_failed(tg_tag, sqlerrm);
    end;
end
$$;

-- table_rewrite: a tracked table (or partition) about to be rewritten: stored values may change
-- with no row trigger firing (ALTER COLUMN … TYPE … USING, even to the same type).
-- definer: the installing superuser's; reads the catalog and auditdb's tables only.
create or replace function auditdb.on_table_rewrite() returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    rel oid := pg_event_trigger_table_rewrite_oid();
    tracked record;
begin
    if auditdb.in_maintenance() then
        return;
    end if;
    select * into tracked from auditdb.tracked_tables tt where tt.relid = coalesce(pg_partition_root(rel), rel);
    if not found then
        return;
    end if;
    perform auditdb.refuse_data_ddl('rewriting', rel::regclass::text);
    begin
        perform auditdb.log_audit_change('AuditTrigger', tracked.table_name, rel::regclass::text, tracked.table_name,
            jsonb_build_object('operation', 'rewrite', 'table', rel::regclass::text, 'command', tg_tag,
                               'reason', pg_event_trigger_table_rewrite_reason()));
    exception when others then
        perform auditdb.watcher_failed(tg_tag, sqlerrm);
    end;
end
$$;

-- Only a superuser or auditdb_owner changes or drops objects of schema auditdb (auditdb_capture,
-- which owns the capture functions, must never alter them). Runs as the role running the DDL.
create or replace function auditdb.guard_objects() returns event_trigger
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    obj record;
begin
    if current_user = 'auditdb_owner' or coalesce((select rolsuper from pg_roles where rolname = current_user), false) then
        return;
    end if;
    if tg_event = 'sql_drop' then
        for obj in select * from pg_event_trigger_dropped_objects() where schema_name = 'auditdb' loop
            raise exception 'auditdb: % of % refused: only auditdb changes its own objects', tg_tag, obj.object_identity
                using errcode = 'insufficient_privilege';
        end loop;
    else
        for obj in select * from pg_event_trigger_ddl_commands() where schema_name = 'auditdb' loop
            raise exception 'auditdb: % of % refused: only auditdb changes its own objects', tg_tag, obj.object_identity
                using errcode = 'insufficient_privilege';
        end loop;
    end if;
end
$$;

-- Create auditdb's event triggers where missing and enable them ALWAYS (install, and apply
-- after someone dropped or disabled one: PostgreSQL fires no event trigger for that).
create or replace function auditdb.ensure_event_triggers() returns text[]
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    made text[] := '{}';
    spec record;
begin
    for spec in
        select * from (values ('auditdb_ddl_command_end', 'ddl_command_end', 'auditdb.on_ddl_command_end()'),
                              ('auditdb_sql_drop', 'sql_drop', 'auditdb.on_sql_drop()'),
                              ('auditdb_table_rewrite', 'table_rewrite', 'auditdb.on_table_rewrite()'),
                              ('auditdb_guard_ddl', 'ddl_command_end', 'auditdb.guard_objects()'),
                              ('auditdb_guard_drop', 'sql_drop', 'auditdb.guard_objects()')) v(name, event, func)
    loop
        if not exists (select from pg_event_trigger where evtname = spec.name) then
            execute format('create event trigger %I on %s execute function %s', spec.name, spec.event, spec.func);
            made := made || spec.name;
        elsif (select evtenabled from pg_event_trigger where evtname = spec.name) <> 'A' then
            made := made || spec.name;
        end if;
        execute format('alter event trigger %I enable always', spec.name);
    end loop;
    return made;
end
$$;

comment on function auditdb.ensure_event_triggers() is 'auditdb: (re)create auditdb''s event triggers, enabled ALWAYS';

select auditdb.ensure_event_triggers();
comment on event trigger auditdb_ddl_command_end is 'auditdb: capture new partitions and inheriting children, keep capture working across schema changes, log AUDIT_CHANGED';
comment on event trigger auditdb_sql_drop is 'auditdb: log dropped capture triggers, log partitions, tracked tables and their partitions as AUDIT_CHANGED';
comment on event trigger auditdb_table_rewrite is 'auditdb: log rewrites of tracked tables (ALTER COLUMN … TYPE … USING) as AUDIT_CHANGED';
comment on event trigger auditdb_guard_ddl is 'auditdb: only a superuser or auditdb_owner changes auditdb''s objects';
comment on event trigger auditdb_guard_drop is 'auditdb: only a superuser or auditdb_owner drops auditdb''s objects';
