-- Who reads what: row-level security on auditdb.log, decided from the login (session_user) and
-- every role it belongs to, never from a setting or a role the session SETs:
--   * bound: the login, or any role it belongs to, is listed in auditdb.tenant_roles: it sees
--     those tenants' entries only, whatever it sets, whatever role it becomes, admin or not;
--   * otherwise a member of auditdb_admin sees every entry;
--   * otherwise a reader an admin granted --tenant-from-context sees the tenant named in its
--     auditdb.tenant_id setting (one application serving many tenants through one role);
--   * anyone else sees nothing.
-- The policies ask once per query (initplans), not once per row. EXPLAIN ANALYZE still shows how
-- many rows a filter removed, which is a count of hidden entries, never their content.
-- auditdb_owner (whose functions write the log) is not subject to the policies; auditdb_capture
-- may only append.
set local role auditdb_owner;

-- The tenants the login may read (see above); empty for an unbound admin, who sees all anyway.
-- definer: reads auditdb's reader bindings for the session user only; takes no argument.
create or replace function auditdb.reader_tenants() returns text[]
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select case
        when exists (select from auditdb.tenant_roles t where t.roleid = any(auditdb.login_roles()))
            then array(select distinct t.tenant_id from auditdb.tenant_roles t
                        where t.roleid = any(auditdb.login_roles()) order by 1)
        when exists (select from auditdb.tenant_from_context_roles f where f.roleid = any(auditdb.login_roles()))
            then array_remove(array[left(nullif(current_setting('auditdb.tenant_id', true), ''), 256)], null)
        else '{}'::text[]
    end
$$;

comment on function auditdb.reader_tenants() is 'auditdb: tenants the login may read (row-level security)';

-- Whether the login reads every tenant: an admin here that is bound to no tenant.
-- definer: reads auditdb's reader bindings for the session user only; takes no argument.
create or replace function auditdb.reader_sees_all() returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select r.rolsuper from pg_roles r where r.rolname = session_user), false)
        or (auditdb.is_admin_here()
            and not exists (select from auditdb.tenant_roles t where t.roleid = any(auditdb.login_roles())))
$$;

comment on function auditdb.reader_sees_all() is 'auditdb: does the login read every tenant (row-level security)';

-- One log table (the parent or a monthly partition) readable only under the policies: a role that
-- can read a partition directly (pg_read_all_data, say) meets the same rows as through the log.
create or replace function auditdb.protect_log_table(target regclass) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('alter table %s enable row level security', target);
    execute format('drop policy if exists log_admin_read on %s', target);
    execute format('create policy log_admin_read on %s for select to auditdb_admin '
                   'using ((select auditdb.reader_sees_all()) or tenant_id = any ((select auditdb.reader_tenants())::text[]))',
                   target);
    execute format('drop policy if exists log_viewer_read on %s', target);
    execute format('create policy log_viewer_read on %s for select to auditdb_viewer '
                   'using (tenant_id = any ((select auditdb.reader_tenants())::text[]))', target);
end
$$;

comment on function auditdb.protect_log_table(regclass) is 'auditdb: row-level security on one log table';

select auditdb.protect_log_table(c.oid::regclass)
  from pg_class c
 where c.oid = 'auditdb.log'::regclass or c.oid in (select inhrelid from pg_inherits where inhparent = 'auditdb.log'::regclass);
drop policy if exists log_capture_append on auditdb.log;
create policy log_capture_append on auditdb.log for insert to auditdb_capture with check (true);

-- auditdb's own tables: row-level security too, so a role that reads every table
-- (pg_read_all_data) still sees only what an admin of this database would.
do $$
declare
    t text;
begin
    foreach t in array array['tracked_tables', 'maintenance', 'settings', 'event_queue', 'event_dead_letter',
                             'worker_heartbeat', 'tenant_roles', 'tenant_from_context_roles', 'admin_roles',
                             'partition_archive']
    loop
        execute format('alter table auditdb.%I enable row level security', t);
        execute format('drop policy if exists admin_read on auditdb.%I', t);
        if t not in ('maintenance', 'settings') then
            execute format('create policy admin_read on auditdb.%I for select to auditdb_admin '
                           'using ((select auditdb.reader_sees_all()))', t);
        end if;
    end loop;
end
$$;
drop policy if exists capture_read on auditdb.tracked_tables;
create policy capture_read on auditdb.tracked_tables for select to auditdb_capture using (true);

-- The WHERE clause (over alias l) for `log`/`export` filters given as JSON, every value a quoted
-- literal: what auditdb.log_export counts. auditdb/query.py builds the same clause for the
-- client's own query (tests/test_export.py checks that both select the same entries).
create or replace function auditdb.filter_sql(filters jsonb) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
declare
    parts text[] := '{}';
    unknown text;
    capture_actions text[] := array['CREATE', 'UPDATE', 'DELETE', 'BULK_CREATE', 'BULK_UPDATE', 'BULK_DELETE'];
    actions text[];
    pattern text;
begin
    filters := coalesce(filters, '{}');
    if jsonb_typeof(filters) <> 'object' then
        raise exception 'auditdb: filters must be a JSON object' using errcode = 'invalid_parameter_value';
    end if;
    select k into unknown from jsonb_object_keys(filters) k
     where k not in ('since', 'until', 'actions', 'entity_types', 'entity_id', 'user', 'project', 'tenant', 'search')
     limit 1;
    if unknown is not null then
        raise exception 'auditdb: unknown filter %', quote_literal(left(unknown, 64)) using errcode = 'invalid_parameter_value';
    end if;
    if filters->>'since' is not null then
        parts := parts || format('l.occurred_at >= %L::timestamptz', (filters->>'since')::timestamptz);
    end if;
    if filters->>'until' is not null then
        parts := parts || format('l.occurred_at < %L::timestamptz', (filters->>'until')::timestamptz);
    end if;
    if jsonb_typeof(filters->'actions') = 'array' and jsonb_array_length(filters->'actions') > 0 then
        actions := array(select jsonb_array_elements_text(filters->'actions'));
        parts := parts || format('l.action = any(%L::text[])', actions);
        if not actions && capture_actions then
            parts := parts || format('l.action <> all(%L::text[])', capture_actions);
        end if;
    end if;
    if jsonb_typeof(filters->'entity_types') = 'array' and jsonb_array_length(filters->'entity_types') > 0 then
        parts := parts || format('l.entity_type = any(%L::text[])', array(select jsonb_array_elements_text(filters->'entity_types')));
    end if;
    if filters->>'entity_id' is not null then
        parts := parts || format('l.entity_id = %L', filters->>'entity_id');
    end if;
    if filters->>'user' is not null then
        parts := parts || format('(l.actor_id = %1$L or lower(l.actor_email) = lower(%1$L) or l.actor_name = %1$L)', filters->>'user');
    end if;
    if filters->>'project' is not null then
        parts := parts || format('l.project_id = %L', filters->>'project');
    end if;
    if filters->>'tenant' is not null then
        parts := parts || format('l.tenant_id = %L', filters->>'tenant');
    end if;
    if coalesce(filters->>'search', '') <> '' then
        pattern := '%' || replace(replace(replace(filters->>'search', '\', '\\'), '%', '\%'), '_', '\_') || '%';
        parts := parts || format('(l.entity_name ilike %1$L or l.entity_id ilike %1$L or l.actor_email ilike %1$L)', pattern);
    end if;
    return coalesce(nullif(array_to_string(parts, ' and '), ''), 'true');
end
$$;

comment on function auditdb.filter_sql(jsonb) is 'auditdb: the WHERE clause of log/export filters';

-- Record an export as DATA_EXPORTED: the filters and format as given, and the rows those filters
-- select for this login under its own snapshot and read scope, counted here (a caller cannot
-- record other figures). An export that failed part-way is recorded with complete = false and
-- rows_sent, the client's own count of what it wrote.
-- definer: counts the log within the session user's read scope by quoted filters; writes one entry.
create or replace function auditdb.log_export(filters jsonb, export_format text, actor_id text, actor_email text,
                                              complete boolean default true, rows_sent bigint default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
declare
    matched bigint;
    tenants text[];
begin
    if export_format is null or export_format not in ('csv', 'jsonl') then
        raise exception 'auditdb.log_export: format must be csv or jsonl' using errcode = 'invalid_parameter_value';
    end if;
    if octet_length(filters::text) > 16384 then
        raise exception 'auditdb.log_export: filters are % bytes, at most 16 kB are allowed', octet_length(filters::text)
            using errcode = 'program_limit_exceeded';
    end if;
    if actor_email is not null and (actor_email !~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]+$'
                                    or length(actor_email) > 320) then
        raise exception 'auditdb.log_export: actor_email is not an e-mail address' using errcode = 'invalid_parameter_value';
    end if;
    if actor_id ~ '[[:cntrl:]]' then
        raise exception 'auditdb.log_export: actor_id contains control characters' using errcode = 'invalid_parameter_value';
    end if;
    execute format('select count(*) from auditdb.log l where ((select auditdb.reader_sees_all()) '
                   'or l.tenant_id = any ((select auditdb.reader_tenants())::text[])) and (%s)', auditdb.filter_sql(filters))
       into matched;
    tenants := case when auditdb.reader_sees_all() then '{}' else auditdb.reader_tenants() end;
    insert into auditdb.log (action, entity_type, entity_name, actor_id, actor_email, actor_name, ip, user_agent,
                             tenant_id, metadata)
    select 'DATA_EXPORTED', 'AuditLog', 'auditdb export', coalesce(left(actor_id, 256), session_user),
           left(actor_email, 320), c.actor_name, c.ip, c.user_agent,
           case when cardinality(tenants) = 1 then tenants[1] end,
           jsonb_build_object('filters', coalesce(filters, '{}'), 'format', export_format, 'rows', matched,
                              'complete', coalesce(complete, false))
           || case when coalesce(complete, false) then '{}'::jsonb
                   else jsonb_build_object('rows_sent', rows_sent) end
           || case when cardinality(tenants) > 1 then jsonb_build_object('tenants', tenants) else '{}'::jsonb end
      from auditdb.context_values() c;
    return matched;
end
$$;

comment on function auditdb.log_export(jsonb, text, text, text, boolean, bigint) is 'auditdb: log an export as DATA_EXPORTED, counted by the server';

-- Record a change of who may read or emit (auditdb grant / revoke).
-- definer: writes one PERMISSION_GRANT/REVOKE entry from text arguments.
create or replace function auditdb.log_access_change(action text, role_name text, auditdb_role text, tenants text[],
                                                     tenant_from_context boolean default false)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
begin
    if action not in ('PERMISSION_GRANT', 'PERMISSION_REVOKE') then
        raise exception 'auditdb.log_access_change: % is not PERMISSION_GRANT or PERMISSION_REVOKE', action
            using errcode = 'invalid_parameter_value';
    end if;
    insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_id, actor_email, actor_name, ip,
                             user_agent, metadata)
    select action, 'AuditAccess', left(role_name, 256), left(role_name, 256), coalesce(c.actor_id, session_user),
           c.actor_email, c.actor_name, c.ip, c.user_agent,
           jsonb_build_object('role', auditdb_role, 'tenants', to_jsonb(tenants))
           || case when tenant_from_context then '{"tenant_from_context": true}'::jsonb else '{}'::jsonb end
      from auditdb.context_values() c;
end
$$;

comment on function auditdb.log_access_change(text, text, text, text[], boolean) is 'auditdb: log a grant or revoke of auditdb access';

reset role;
