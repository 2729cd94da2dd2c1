-- The generic capture function, and how any capture shows a column.
--
-- `auditdb apply` generates one capture function per tracked table (sql/templates/capture.sql.j2).
-- When a tracked table's columns or name change, the DDL watcher gives that function this body
-- instead: it reads the table's current columns at run time and writes the same entries, until
-- `apply` generates the fast one again. Capture functions belong to auditdb_capture, which may
-- only append entries and read auditdb.tracked_tables.
--
-- Neither kind runs code the application controls. A column of a type PostgreSQL itself defines
-- is shown with to_jsonb and compared with PostgreSQL's own operators; a column of any other type
-- (which its owner may give casts to json, jsonb or text, or whose operators could be resolved
-- through such a cast) is shown and compared as the text of the type's output function
-- (format('%s', v): output functions are C, and only a superuser makes one), and config
-- expressions see such a column as that text. auditdb.type_kind decides which.
--
-- Columns, keys, the tenant and project columns and expressions are matched by column number: a
-- masked column stays masked whatever it is renamed to, and an expression written for a column
-- that was since renamed, retyped or dropped is skipped (metadata.capture_warning says so), never
-- pointed at whatever column now has its name.
set local role auditdb_owner;

-- The names of a tracked table's four capture triggers, in the order insert, update, delete,
-- truncate: the one list the watchers use (auditdb/names.py CAPTURE_TRIGGERS is Python's, and a
-- test keeps the two equal).
create or replace function auditdb.capture_trigger_names() returns text[]
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select array['auditdb_capture_ins', 'auditdb_capture_upd', 'auditdb_capture_del', 'auditdb_capture_trunc']
$$;

-- SQL for a column's value as text (null stays null), read from row alias r.
create or replace function auditdb.capture_text_sql(r text, col text, kind text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case when kind = 'builtin' then format('%s.%I::text', r, col)
                else format('(case when pg_catalog.num_nulls(%1$s.%2$I) = 0 then pg_catalog.format(%3$L, %1$s.%2$I) end)',
                            r, col, '%s') end
$$;

-- SQL for a column's value as an entry shows it (masked fully, or all but the last 4 characters).
create or replace function auditdb.capture_value_sql(r text, col text, kind text, mask text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when mask = 'full' then format('(case when %s is null then null else %L end)', auditdb.capture_text_sql(r, col, kind), '***')
        when mask = 'last4' then format('(case when %1$s is null then null when pg_catalog.length(%1$s) > 8 '
                                        'then %2$L || pg_catalog.right(%1$s, 4) else %2$L end)',
                                        auditdb.capture_text_sql(r, col, kind), '***')
        when kind = 'builtin' then format('%s.%I', r, col)
        when kind = 'text_array' then format('(%s)::text[]', auditdb.capture_text_sql(r, col, kind))
        else auditdb.capture_text_sql(r, col, kind)
    end
$$;

-- SQL testing whether a column differs between rows o and n: by its text, in the "C" collation,
-- so that values equal but not the same (1.0 and 1.00, 0 and -0, 'a' and 'A' under a
-- case-insensitive collation) count as a change. (The generated capture uses the type's own
-- equality where it is exact: auditdb/columns.py.)
create or replace function auditdb.capture_changed_sql(col text, kind text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select format('(%s collate "C") is distinct from (%s collate "C")', auditdb.capture_text_sql('o', col, kind),
                  auditdb.capture_text_sql('n', col, kind))
$$;

-- SQL building one jsonb object from 'key', value pairs (jsonb_build_object takes at most 100
-- arguments: 50 pairs a call, joined with ||).
create or replace function auditdb.capture_object_sql(pairs text[]) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(string_agg(format('pg_catalog.jsonb_build_object(%s)', chunk), ' || ' order by g), '''{}''::jsonb')
      from (select g, string_agg(p, ', ' order by i) as chunk
              from unnest(pairs) with ordinality u(p, i), lateral (select (i - 1) / 50 as g) x
             group by g) c
$$;

-- Whether every column an expression was written for (uses: [[attnum, name, type oid, collation oid], …]) is
-- still there under the same name, type and collation, and (unless masked_ok: a rule may test a masked
-- column, an entity name may not show one) not masked.
create or replace function auditdb.capture_columns_unchanged(uses jsonb, current_columns jsonb, masked_ok boolean)
returns boolean
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_typeof(uses) = 'array'
       and not exists (
           select from jsonb_array_elements(uses) u
            where current_columns->(u->>0) is null
               or current_columns->(u->>0)->>'name' is distinct from u->>1
               or (current_columns->(u->>0)->>'type')::oid is distinct from (u->>2)::oid
               or (u->3 is not null and (current_columns->(u->>0)->>'collation')::oid is distinct from (u->>3)::oid)
               or (not masked_ok and (current_columns->(u->>0)->>'masked')::boolean))
$$;

reset role;

-- The generic body belongs to auditdb_capture like every capture function (a superuser creates and
-- replaces it: auditdb_capture may create nothing).
-- Reads the trigger's transition tables only through SQL built from the catalog, shows values of
-- non-builtin types through their output functions, and runs only expressions `apply` checked,
-- after checking that their columns are still the ones they were written for.
-- Its SET block is every capture function's: the generated ones and the generic copies take it
-- from here through auditdb.pin_capture_settings, so values are rendered the same whatever the
-- session's time zone and styles. (jit off: compiling the capture query costs more than it saves;
-- a 20,000-row UPDATE spent 0.4 s in JIT.)
-- definer: runs as append-only auditdb_capture; calls no cast, operator or function an application type brings.
create or replace function auditdb.capture_generic() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres'
set extra_float_digits = 1
set bytea_output = 'hex'
set array_nulls = on
set lc_monetary = 'C'
set jit = off
as $auditdb$
#variable_conflict use_variable
declare
    root oid := coalesce(pg_partition_root(tg_relid), tg_relid);
    cfg jsonb;
    ctx record;
    -- The one column list of this function's inserts (the template has its own: log_columns()).
    into_log constant text := 'insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, '
                              'tenant_id, actor_id, actor_email, actor_name, ip, user_agent, table_name, changes, metadata) ';
    meta jsonb := '{"capture": "generic"}';
    skipped text[] := '{}';
    row_count bigint;
    new_count bigint;
    table_name text;
    kind text;
    del_kind text;
    col record;
    current_columns jsonb := '{}';
    row_columns text[] := '{}';
    pair text;
    -- A whole row (CREATE, DELETE): its columns as they are, and under "" (no column's name) its side.
    new_pairs text[] := array[format('%L, %L', '', 'new')];
    old_pairs text[] := array[format('%L, %L', '', 'old')];
    diff text[] := '{}';
    key_columns text[] := '{}';
    key_n text;
    key_o text;
    key_eq text;
    name_n text := 'null';
    name_o text := 'null';
    tenant_n text := '$4';
    tenant_o text := '$4';
    project_n text := '$3';
    project_o text := '$3';
    soft_sql text := 'false';
    rule jsonb;
    rules_sql jsonb := '{"INSERT": "", "UPDATE": "", "DELETE": ""}';
    query text;
    pairs text;
    updates text;
    ref jsonb;
    c jsonb;
begin
    select t.config into cfg from auditdb.tracked_tables t where t.relid = root;
    if cfg is null then
        return null;
    end if;
    select format('%I.%I', n.nspname, cl.relname) into table_name
      from pg_class cl join pg_namespace n on n.oid = cl.relnamespace where cl.oid = root;
    select * into ctx from auditdb.context_values();
    if tg_op = 'TRUNCATE' then
        -- TRUNCATE of a partitioned table fires every partition's trigger: each table that held
        -- rows logs itself, so nothing the session can set decides whether an entry is written.
        if (select cl.relkind from pg_class cl where cl.oid = tg_relid) = 'p' then
            return null;
        end if;
        row_count := 0;
    elsif tg_op = 'INSERT' then
        select count(*) into row_count from auditdb_new;
    elsif tg_op = 'UPDATE' then
        select (select count(*) from auditdb_old), (select count(*) from auditdb_new) into row_count, new_count;
    else
        select count(*) into row_count from auditdb_old;
    end if;
    if row_count = 0 and tg_op <> 'TRUNCATE' then
        return null;
    end if;
    if (cfg->>'require_actor')::boolean and ctx.actor_id is null
       and not auditdb.is_system_role(array(select jsonb_array_elements_text(cfg->'system_roles'))) then
        raise exception 'auditdb: % on % refused: no actor in the session context', tg_op, table_name
            using errcode = 'insufficient_privilege',
                  detail = 'require_actor is set for this table and session user ' || session_user || ' is not a system role.',
                  hint = 'Call auditdb.set_context(actor_id => ...) in the transaction, or add the role to system_roles.';
    end if;
    meta := meta || jsonb_strip_nulls(jsonb_build_object('request_id', ctx.request_id, 'invalid_ip', ctx.invalid_ip));
    if row_count > 1 then
        meta := meta || jsonb_build_object('rows', row_count);
    end if;
    if tg_op = 'TRUNCATE' then
        execute into_log || 'values ($11, $1, null, null, $3, $4, $5, $6, $7, $8, $9, $2, null, $10)'
        using cfg->>'entity_type', table_name, ctx.project_id, ctx.tenant_id, ctx.actor_id, ctx.actor_email,
              ctx.actor_name, ctx.ip, ctx.user_agent,
              meta || jsonb_build_object('truncate', true)
                   || case when tg_relid = root then '{}'::jsonb
                           else jsonb_build_object('partition', format('%I.%I', tg_table_schema, tg_table_name)) end,
              'BULK_DELETE';
        return null;
    end if;

    -- Every current column: how it is shown (masked by number, or by the globs on its name now).
    for col in
        select a.attnum, a.attname::text as name, a.atttypid, a.attcollation, auditdb.type_kind(a.atttypid) as kind,
               case when a.attnum = any(array(select jsonb_array_elements_text(cfg->'masked_full_attnums'))::int2[])
                      or a.attname ~ any(array(select jsonb_array_elements_text(cfg->'mask_regex'))) then 'full'
                    when a.attnum = any(array(select jsonb_array_elements_text(cfg->'masked_last4_attnums'))::int2[])
                      or a.attname ~ any(array(select jsonb_array_elements_text(cfg->'mask_last4_regex'))) then 'last4'
               end as mask,
               -- Ignored: the columns ignored at apply (by number), and new ones whose name matches a glob
               -- (a column renamed to an ignored name is still compared).
               case when a.attnum = any(array(select jsonb_array_elements_text(cfg->'known_attnums'))::int2[])
                    then a.attnum = any(array(select jsonb_array_elements_text(cfg->'ignored_attnums'))::int2[])
                    else coalesce(a.attname ~ any(array(select jsonb_array_elements_text(cfg->'ignore_regex'))), false)
               end as ignored
          from pg_attribute a
         where a.attrelid = root and a.attnum > 0 and not a.attisdropped and a.attgenerated <> 'v'
         order by a.attnum
    loop
        row_columns := row_columns || format('t.%I', col.name);
        current_columns := current_columns || jsonb_build_object(col.attnum::text,
            jsonb_build_object('name', col.name, 'type', col.atttypid, 'collation', col.attcollation, 'kind', col.kind,
                               'masked', col.mask is not null));
        new_pairs := new_pairs || format('%L, %s', col.name, auditdb.capture_value_sql('n', col.name, col.kind, col.mask));
        old_pairs := old_pairs || format('%L, %s', col.name, auditdb.capture_value_sql('o', col.name, col.kind, col.mask));
        if not col.ignored then
            diff := diff || format('case when %s then pg_catalog.jsonb_build_object(%L, pg_catalog.jsonb_build_object(%L, %s, %L, %s)) else %L::jsonb end',
                                   auditdb.capture_changed_sql(col.name, col.kind), col.name,
                                   'old', auditdb.capture_value_sql('o', col.name, col.kind, col.mask),
                                   'new', auditdb.capture_value_sql('n', col.name, col.kind, col.mask), '{}');
        end if;
    end loop;

    -- The key, by column number; none that is gone or masked now is shown.
    for ref in select * from jsonb_array_elements(cfg->'key') loop
        c := current_columns->(ref->>0);
        if c is null or (c->>'masked')::boolean then
            skipped := array_append(skipped, 'id');
            key_columns := '{}';
            exit;
        end if;
        key_columns := key_columns || (c->>'name');
    end loop;
    if cardinality(key_columns) = 0 then
        key_n := 'null::text';
        key_o := 'null::text';
        key_eq := 'false';
    elsif cardinality(key_columns) = 1 then
        c := current_columns->(cfg->'key'->0->>0);
        key_n := auditdb.capture_text_sql('n', c->>'name', c->>'kind');
        key_o := auditdb.capture_text_sql('o', c->>'name', c->>'kind');
        key_eq := format('not (%s)', auditdb.capture_changed_sql(c->>'name', c->>'kind'));
    else
        select format('pg_catalog.jsonb_build_object(%s)::text',
                      string_agg(format('%L, %s', x->>'name', auditdb.capture_value_sql('n', x->>'name', x->>'kind', null)), ', ' order by i)),
               format('pg_catalog.jsonb_build_object(%s)::text',
                      string_agg(format('%L, %s', x->>'name', auditdb.capture_value_sql('o', x->>'name', x->>'kind', null)), ', ' order by i)),
               string_agg(format('not (%s)', auditdb.capture_changed_sql(x->>'name', x->>'kind')), ' and ' order by i)
          into key_n, key_o, key_eq
          from jsonb_array_elements(cfg->'key') with ordinality k(ref, i), lateral (select current_columns->(k.ref->>0) as x) y;
    end if;

    -- Tenant and project from the row where configured and still there unmasked, else the context.
    c := current_columns->(cfg->'tenant'->>0);
    if cfg->'tenant' is not null and jsonb_typeof(cfg->'tenant') = 'array' then
        if c is null or (c->>'masked')::boolean then
            skipped := array_append(skipped, 'tenant');
        else
            tenant_n := format('coalesce(%s, $4)', auditdb.capture_text_sql('n', c->>'name', c->>'kind'));
            tenant_o := format('coalesce(%s, $4)', auditdb.capture_text_sql('o', c->>'name', c->>'kind'));
        end if;
    end if;
    c := current_columns->(cfg->'project'->>0);
    if cfg->'project' is not null and jsonb_typeof(cfg->'project') = 'array' then
        if c is null or (c->>'masked')::boolean then
            skipped := array_append(skipped, 'project');
        else
            project_n := format('coalesce(%s, $3)', auditdb.capture_text_sql('n', c->>'name', c->>'kind'));
            project_o := format('coalesce(%s, $3)', auditdb.capture_text_sql('o', c->>'name', c->>'kind'));
        end if;
    end if;

    -- Expressions run only while every column they were written for is still there, under the
    -- same name, type and collation (by number): never against a column that took another's name.
    if jsonb_typeof(cfg->'name') = 'object' then
        if auditdb.capture_columns_unchanged(cfg->'name'->'uses', current_columns, false) then
            name_n := cfg->'name'->>'n';
            name_o := cfg->'name'->>'o';
        else
            skipped := array_append(skipped, 'name');
        end if;
    end if;
    if tg_op = 'UPDATE' and jsonb_typeof(cfg->'soft_delete') = 'object' then
        if auditdb.capture_columns_unchanged(cfg->'soft_delete'->'uses', current_columns, true) then
            soft_sql := cfg->'soft_delete'->>'sql';
        else
            skipped := array_append(skipped, 'soft_delete');
        end if;
    end if;
    for rule in select * from jsonb_array_elements(coalesce(cfg->'rules', '[]')) loop
        if not auditdb.capture_columns_unchanged(rule->'uses', current_columns, true) then
            skipped := array_append(skipped, 'rule ' || (rule->>'action'));
            continue;
        end if;
        rules_sql := jsonb_set(rules_sql, array[rule->>'on'],
                               to_jsonb((rules_sql->>(rule->>'on')) || format(' when %s then %L', coalesce(rule->>'when', 'true'), rule->>'action')));
    end loop;
    skipped := skipped || array(select jsonb_array_elements_text(coalesce(cfg->'upgrade_skipped', '[]')));
    if cardinality(skipped) > 0 then
        meta := meta || jsonb_build_object('capture_warning',
            'skipped (columns renamed, retyped, dropped or masked since apply): ' || array_to_string(skipped, ', ')
            || '; run `auditdb apply`');
    end if;

    kind := case when row_count > 1 then 'BULK_' else '' end
            || case tg_op when 'INSERT' then 'CREATE' when 'UPDATE' then 'UPDATE' else 'DELETE' end;
    del_kind := case when row_count > 1 then 'BULK_DELETE' else 'DELETE' end;
    if tg_op = 'UPDATE' and soft_sql <> 'false' then
        rules_sql := jsonb_set(rules_sql, '{UPDATE}', to_jsonb((rules_sql->>'UPDATE') || format(' when %s then $12', soft_sql)));
    end if;

    if tg_op in ('INSERT', 'DELETE') then
        query := format($q$
            %s
            select %s, $1, %s, (%s)::text, %s, %s, $5, $6, $7, $8, $9, $2, %s, $10
              from %s$q$,
            into_log,
            case when rules_sql->>tg_op = '' then '$11' else format('case%s else $11 end', rules_sql->>tg_op) end,
            case tg_op when 'INSERT' then key_n else key_o end,
            case tg_op when 'INSERT' then name_n else name_o end,
            case tg_op when 'INSERT' then project_n else project_o end,
            case tg_op when 'INSERT' then tenant_n else tenant_o end,
            auditdb.capture_object_sql(case tg_op when 'INSERT' then new_pairs else old_pairs end),
            case tg_op when 'INSERT' then 'auditdb_new n' else 'auditdb_old o' end);
        execute query using cfg->>'entity_type', table_name, ctx.project_id, ctx.tenant_id, ctx.actor_id,
                            ctx.actor_email, ctx.actor_name, ctx.ip, ctx.user_agent, meta, kind, del_kind;
        return null;
    end if;

    if new_count = row_count then
        -- Old and new rows pair by position (the executor appends them together); the pairing
        -- column takes a name none of the table's columns has, and only captured columns are read.
        pair := 'auditdb_pair';
        while exists (select from jsonb_each(current_columns) e where e.value->>'name' = pair) loop
            pair := pair || '_';
        end loop;
        pairs := format('from (select row_number() over () as %1$I, %2$s from auditdb_old t) o
                          join (select row_number() over () as %1$I, %2$s from auditdb_new t) n
                            on n.%1$I = o.%1$I', pair, coalesce(nullif(array_to_string(row_columns, ', '), ''), 'null'));
    else
        -- A BEFORE INSERT trigger on a partition dropped moving rows: pair by key; an old row
        -- with no partner is logged as deleted, a new one with none as created.
        meta := meta || '{"pairing": "key"}'::jsonb;
        pairs := format('from auditdb_old o join auditdb_new n on %s', key_eq);
    end if;
    updates := format($q$
        %s
        select c.action, $1, c.entity_id, c.entity_name, c.project_id, c.tenant_id, $5, $6, $7, $8, $9, $2, c.changes,
               case when c.previous_id is distinct from c.entity_id
                    then $10 || pg_catalog.jsonb_build_object('previous_id', c.previous_id) else $10 end
          from (select %s as action, %s as entity_id, %s as previous_id, (%s)::text as entity_name,
                       %s as project_id, %s as tenant_id, (%s) as soft_deleted, %s as changes
                  %s
                offset 0) c
         where c.changes <> '{}'::jsonb or c.soft_deleted$q$,
        into_log,
        case when rules_sql->>'UPDATE' = '' then '$11' else format('case%s else $11 end', rules_sql->>'UPDATE') end,
        key_n, key_o, name_n, project_n, tenant_n, soft_sql,
        case when cardinality(diff) = 0 then '''{}''::jsonb' else '(' || array_to_string(diff, ' || ') || ')' end,
        pairs);
    execute updates using cfg->>'entity_type', table_name, ctx.project_id, ctx.tenant_id, ctx.actor_id,
                          ctx.actor_email, ctx.actor_name, ctx.ip, ctx.user_agent, meta, kind, del_kind;
    if new_count <> row_count then
        execute format($q$
            %s
            select $12, $1, %s, (%s)::text, %s, %s, $5, $6, $7, $8, $9, $2, %s, $10 || '{"unpaired": "old"}'::jsonb
              from auditdb_old o where not exists (select from auditdb_new n where %s)$q$,
            into_log, key_o, name_o, project_o, tenant_o, auditdb.capture_object_sql(old_pairs), key_eq)
        using cfg->>'entity_type', table_name, ctx.project_id, ctx.tenant_id, ctx.actor_id,
              ctx.actor_email, ctx.actor_name, ctx.ip, ctx.user_agent, meta, kind, del_kind;
        execute format($q$
            %s
            select replace($12, 'DELETE', 'CREATE'), $1, %s, (%s)::text, %s, %s, $5, $6, $7, $8, $9, $2, %s,
                   $10 || '{"unpaired": "new"}'::jsonb
              from auditdb_new n where not exists (select from auditdb_old o where %s)$q$,
            into_log, key_n, name_n, project_n, tenant_n, auditdb.capture_object_sql(new_pairs), key_eq)
        using cfg->>'entity_type', table_name, ctx.project_id, ctx.tenant_id, ctx.actor_id,
              ctx.actor_email, ctx.actor_name, ctx.ip, ctx.user_agent, meta, kind, del_kind;
    end if;
    return null;
end
$auditdb$;

comment on function auditdb.capture_generic() is 'auditdb:generic';

alter function auditdb.capture_generic() owner to auditdb_capture;

-- Give a capture function exactly the generic one's settings (above): the one list of them.
create or replace function auditdb.pin_capture_settings(target regprocedure) returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    setting text;
    setting_name text;
begin
    if target = 'auditdb.capture_generic()'::regprocedure then
        return;
    end if;
    execute format('alter function %s reset all', target);
    for setting in select unnest(proconfig) from pg_proc where oid = 'auditdb.capture_generic()'::regprocedure loop
        setting_name := split_part(setting, '=', 1);
        if setting_name = 'search_path' then
            execute format('alter function %s set search_path = %s', target,
                           (select string_agg(quote_ident(btrim(s)), ', ')
                              from unnest(string_to_array(substr(setting, length(setting_name) + 2), ',')) s));
        else
            execute format('alter function %s set %I = %L', target, setting_name,
                           substr(setting, length(setting_name) + 2));
        end if;
    end loop;
end
$$;

comment on function auditdb.pin_capture_settings(regprocedure) is 'auditdb: give a capture function the capture settings';
