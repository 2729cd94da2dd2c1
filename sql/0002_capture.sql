-- Revision 0002: the generic capture function (in use between a column change and the next
-- `auditdb apply`) pairs an UPDATE's old and new rows the way the generated ones do: by
-- position while both transition tables have the same length, by key when a BEFORE INSERT
-- trigger on a partition dropped a row that was moving (the old row is then logged as a
-- DELETE, an unpartnered new row as a CREATE). Before, such a row went unlogged.
set local role auditdb_owner;

create or replace function auditdb.capture_generic() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres'
set extra_float_digits = 1
set jit = off
as $auditdb$
#variable_conflict use_variable
declare
    root oid := coalesce(pg_partition_root(tg_relid), tg_relid);
    cfg jsonb;
    treatment jsonb;
    ctx_actor_id text := nullif(current_setting('auditdb.actor_id', true), '');
    ctx_tenant_id text := nullif(current_setting('auditdb.tenant_id', true), '');
    ctx_project_id text := nullif(current_setting('auditdb.project_id', true), '');
    ctx_request_id text := nullif(current_setting('auditdb.request_id', true), '');
    meta jsonb := jsonb_build_object('capture', 'generic');
    row_count bigint;
    table_name text;
    kind text;
    del_kind text;
    action_sql text;
    name_sql text;
    soft_sql text := 'false';
    query text;
    attempt integer;
    new_count bigint;
    pairs text;
    by_key boolean := false;
    extra text[] := '{}';
    extra_query text;
begin
    select t.config into cfg from auditdb.tracked_tables t where t.relid = root;
    if cfg is null then
        return null;
    end if;
    select format('%I.%I', n.nspname, c.relname) into table_name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = root;
    if tg_op = 'TRUNCATE' then
        if current_setting('auditdb.truncating', true) = statement_timestamp()::text then
            return null;
        end if;
        if (select relkind from pg_class where oid = tg_relid) = 'p' then
            perform set_config('auditdb.truncating', statement_timestamp()::text, true);
        end if;
        row_count := 0;
    elsif tg_op = 'INSERT' then
        select count(*) into row_count from auditdb_new;
    else
        select count(*) into row_count from auditdb_old;
    end if;
    if tg_op = 'UPDATE' then
        select count(*) into new_count from auditdb_new;
    end if;
    if row_count = 0 and tg_op <> 'TRUNCATE' then
        return null;
    end if;
    if (cfg->>'require_actor')::boolean and ctx_actor_id is null
       and not auditdb.is_system_role(array(select jsonb_array_elements_text(cfg->'system_roles'))) then
        raise exception 'auditdb: % on % refused: no actor in the session context', tg_op, table_name
            using errcode = 'insufficient_privilege',
                  hint = 'Call auditdb.set_context(actor_id => ...) in the transaction, or add the role to system_roles.';
    end if;
    if ctx_request_id is not null then
        meta := meta || jsonb_build_object('request_id', ctx_request_id);
    end if;
    if row_count > 1 then
        meta := meta || jsonb_build_object('rows', row_count);
    end if;
    if tg_op = 'TRUNCATE' then
        insert into auditdb.log (action, entity_type, project_id, tenant_id, actor_id, actor_email, actor_name,
                                 ip, user_agent, table_name, metadata)
        values ('BULK_DELETE', cfg->>'entity_type', ctx_project_id, ctx_tenant_id, ctx_actor_id,
                nullif(current_setting('auditdb.actor_email', true), ''),
                nullif(current_setting('auditdb.actor_name', true), ''), auditdb.context_ip(),
                nullif(current_setting('auditdb.user_agent', true), ''), table_name,
                meta || jsonb_build_object('truncate', true)
                     || case when tg_relid = root then '{}'::jsonb
                             else jsonb_build_object('partition', format('%I.%I', tg_table_schema, tg_table_name)) end);
        return null;
    end if;

    -- How each current column is shown: masked columns stay masked across renames (by attnum)
    -- and new columns are matched against the config's globs.
    select jsonb_object_agg(a.attname,
             case when a.attnum = any(array(select jsonb_array_elements_text(cfg->'masked_full_attnums'))::int2[])
                    or a.attname ~ any(array(select jsonb_array_elements_text(cfg->'mask_regex'))) then 'full'
                  when a.attnum = any(array(select jsonb_array_elements_text(cfg->'masked_last4_attnums'))::int2[])
                    or a.attname ~ any(array(select jsonb_array_elements_text(cfg->'mask_last4_regex'))) then 'last4'
                  when a.attname ~ any(array(select jsonb_array_elements_text(cfg->'ignore_regex'))) then 'ignore'
                  else 'plain' end)
      into treatment
      from pg_attribute a where a.attrelid = root and a.attnum > 0 and not a.attisdropped;

    kind := case when row_count > 1 then 'BULK_' else '' end
            || case tg_op when 'INSERT' then 'CREATE' when 'UPDATE' then 'UPDATE' else 'DELETE' end;
    del_kind := case when row_count > 1 then 'BULK_DELETE' else 'DELETE' end;
    if tg_op = 'UPDATE' and new_count = row_count then
        -- Old and new rows pair by position (the executor appends them together).
        pairs := '(select row_number() over () as auditdb_pair, t.* from auditdb_old t) o
                  join (select row_number() over () as auditdb_pair, t.* from auditdb_new t) n
                    on n.auditdb_pair = o.auditdb_pair';
    elsif tg_op = 'UPDATE' then
        -- A BEFORE INSERT trigger on a partition dropped moving rows: pair by key; an old row
        -- with no partner is logged as deleted, a new one with none as created.
        by_key := true;
        meta := meta || '{"pairing": "key"}'::jsonb;
        pairs := 'auditdb_old o join auditdb_new n
                    on auditdb.generic_entity_id(to_jsonb(n), $2) is not distinct from auditdb.generic_entity_id(to_jsonb(o), $2)';
    end if;
    for attempt in 1 .. 2 loop
        action_sql := 'case' || coalesce((select string_agg(format(' when %s then %L', coalesce(r->>'when', 'true'), r->>'action'), '')
                                            from jsonb_array_elements(cfg->'rules') r where r->>'on' = tg_op and attempt = 1), '');
        if tg_op = 'UPDATE' and attempt = 1 and cfg->'soft_delete' is not null and cfg->'soft_delete' <> 'null' then
            soft_sql := cfg->'soft_delete'->>'sql';
            action_sql := action_sql || format(' when %s then %L', soft_sql, del_kind);
        elsif attempt = 2 then
            soft_sql := 'false';
        end if;
        action_sql := case when action_sql = 'case' then quote_literal(kind) else action_sql || format(' else %L end', kind) end;
        name_sql := case when attempt = 1 then coalesce(cfg->'name'->>(case when tg_op = 'DELETE' then 'o' else 'n' end), 'null') else 'null' end;
        if tg_op = 'INSERT' then
            query := format($q$
                insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                         actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
                select %s, $1, auditdb.generic_entity_id(x.j, $2), (%s)::text, coalesce(x.j->>$3, $4), coalesce(x.j->>$5, $6),
                       $7, $8, $9, $10, $11, $12, auditdb.generic_row(x.j, $13, 'new'), $14
                  from auditdb_new n cross join lateral (select to_jsonb(n) as j) x$q$, action_sql, name_sql);
        elsif tg_op = 'DELETE' then
            query := format($q$
                insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                         actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
                select %s, $1, auditdb.generic_entity_id(x.j, $2), (%s)::text, coalesce(x.j->>$3, $4), coalesce(x.j->>$5, $6),
                       $7, $8, $9, $10, $11, $12, auditdb.generic_row(x.j, $13, 'old'), $14
                  from auditdb_old o cross join lateral (select to_jsonb(o) as j) x$q$, action_sql, name_sql);
        else
            query := format($q$
                insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                         actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
                select c.action, $1, c.entity_id, c.entity_name, c.project_id, c.tenant_id, $7, $8, $9, $10, $11, $12,
                       c.changes,
                       case when c.previous_id is distinct from c.entity_id
                            then $14 || jsonb_build_object('previous_id', c.previous_id) else $14 end
                  from (select %s as action, auditdb.generic_entity_id(x.nj, $2) as entity_id,
                               auditdb.generic_entity_id(x.oj, $2) as previous_id, (%s)::text as entity_name,
                               coalesce(x.nj->>$3, $4) as project_id, coalesce(x.nj->>$5, $6) as tenant_id,
                               (%s) as soft_deleted, auditdb.generic_diff(x.oj, x.nj, $13) as changes
                          from %s
                         cross join lateral (select to_jsonb(o) - 'auditdb_pair' as oj, to_jsonb(n) - 'auditdb_pair' as nj) x) c
                 where c.changes <> '{}'::jsonb or c.soft_deleted$q$, action_sql, name_sql, soft_sql, pairs);
        end if;
        if by_key then
            extra := '{}';
            foreach extra_query in array array['o', 'n'] loop
                extra := extra || format($q$
                    insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                             actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
                    select %L, $1, auditdb.generic_entity_id(x.j, $2), (%s)::text, coalesce(x.j->>$3, $4), coalesce(x.j->>$5, $6),
                           $7, $8, $9, $10, $11, $12, auditdb.generic_row(x.j, $13, %L), $14 || %L::jsonb
                      from %s %s cross join lateral (select to_jsonb(%s) as j) x
                     where not exists (select from %s p
                                        where auditdb.generic_entity_id(to_jsonb(p), $2) is not distinct from auditdb.generic_entity_id(x.j, $2))$q$,
                    case extra_query when 'o' then del_kind else replace(del_kind, 'DELETE', 'CREATE') end,
                    case when attempt = 1 then coalesce(cfg->'name'->>extra_query, 'null') else 'null' end,
                    case extra_query when 'o' then 'old' else 'new' end,
                    jsonb_build_object('unpaired', case extra_query when 'o' then 'old' else 'new' end),
                    case extra_query when 'o' then 'auditdb_old' else 'auditdb_new' end, extra_query, extra_query,
                    case extra_query when 'o' then 'auditdb_new' else 'auditdb_old' end);
            end loop;
        end if;
        begin
            execute query using cfg->>'entity_type', array(select jsonb_array_elements_text(cfg->'id')),
                                cfg->>'project', ctx_project_id, cfg->>'tenant', ctx_tenant_id, ctx_actor_id,
                                nullif(current_setting('auditdb.actor_email', true), ''),
                                nullif(current_setting('auditdb.actor_name', true), ''), auditdb.context_ip(),
                                nullif(current_setting('auditdb.user_agent', true), ''), table_name, treatment, meta;
            foreach extra_query in array extra loop
                execute extra_query using cfg->>'entity_type', array(select jsonb_array_elements_text(cfg->'id')),
                                          cfg->>'project', ctx_project_id, cfg->>'tenant', ctx_tenant_id, ctx_actor_id,
                                          nullif(current_setting('auditdb.actor_email', true), ''),
                                          nullif(current_setting('auditdb.actor_name', true), ''), auditdb.context_ip(),
                                          nullif(current_setting('auditdb.user_agent', true), ''), table_name, treatment, meta;
            end loop;
            return null;
        exception when undefined_column or undefined_function or datatype_mismatch or cannot_coerce or invalid_text_representation then
            if attempt = 2 then
                raise;
            end if;
            -- A name or rule expression no longer fits the table: log without them, and say so.
            meta := meta || jsonb_build_object('capture_warning',
                'name/rule/soft-delete expressions skipped: ' || sqlerrm || '; run `auditdb apply`');
        end;
    end loop;
    return null;
end
$auditdb$;

comment on function auditdb.capture_generic() is 'auditdb:generic';

reset role;
