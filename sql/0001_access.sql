-- Who reads what: row-level security on auditdb.log. auditdb_admin sees every entry; a member of
-- auditdb_viewer listed in auditdb.tenant_roles sees only its tenants, whatever settings it
-- changes; an unlisted viewer sees the tenant in its auditdb.tenant_id setting, and nothing when
-- that is unset. The owner (whose functions write the log) is not subject to the policies.
set local role auditdb_owner;

create table auditdb.tenant_roles (
    -- a database role (usually a login role granted auditdb_viewer)
    role_name text not null,
    -- a tenant whose entries it may read
    tenant_id text not null,
    primary key (role_name, tenant_id)
);

comment on table auditdb.tenant_roles is 'auditdb: viewers bound to tenants (managed by `auditdb grant --viewer --tenant`)';

-- The tenants a role may read as a viewer (the policy passes current_user: inside this security
-- definer function current_user is the owner).
create function auditdb.viewer_tenants(reader name) returns text[]
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select case
        when exists (select from auditdb.tenant_roles t where t.role_name = reader)
            then array(select t.tenant_id from auditdb.tenant_roles t where t.role_name = reader order by 1)
        else array_remove(array[nullif(current_setting('auditdb.tenant_id', true), '')], null)
    end
$$;

comment on function auditdb.viewer_tenants(name) is 'auditdb: tenants visible to the current viewer (row-level security)';

alter table auditdb.log enable row level security;
create policy log_admin_read on auditdb.log for select to auditdb_admin using (true);
create policy log_viewer_read on auditdb.log for select to auditdb_viewer
    using (tenant_id = any ((select auditdb.viewer_tenants(current_user))::text[]));

-- Record an export as DATA_EXPORTED, by the exporting actor, in the exporting transaction.
create function auditdb.log_export(filters jsonb, export_format text, row_count bigint, actor_id text,
                                   actor_email text) returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    insert into auditdb.log (action, entity_type, entity_name, actor_id, actor_email, actor_name, ip, user_agent,
                             tenant_id, metadata)
    values ('DATA_EXPORTED', 'AuditLog', 'auditdb export', coalesce(actor_id, session_user), actor_email,
            nullif(current_setting('auditdb.actor_name', true), ''), auditdb.context_ip(),
            nullif(current_setting('auditdb.user_agent', true), ''),
            case when cardinality(auditdb.viewer_tenants(session_user)) = 1
                       and not pg_has_role(session_user, 'auditdb_admin', 'member')
                 then (auditdb.viewer_tenants(session_user))[1] end,
            jsonb_build_object('filters', filters, 'format', export_format, 'rows', row_count))
$$;

comment on function auditdb.log_export(jsonb, text, bigint, text, text) is 'auditdb: log an export as DATA_EXPORTED';

-- Record a change of who may read or emit (auditdb grant / revoke).
create function auditdb.log_access_change(action text, role_name text, auditdb_role text, tenants text[])
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if action not in ('PERMISSION_GRANT', 'PERMISSION_REVOKE') then
        raise exception 'auditdb.log_access_change: % is not PERMISSION_GRANT or PERMISSION_REVOKE', action
            using errcode = 'invalid_parameter_value';
    end if;
    insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_id, actor_email, actor_name, ip,
                             user_agent, metadata)
    values (action, 'AuditAccess', role_name, role_name,
            coalesce(nullif(current_setting('auditdb.actor_id', true), ''), session_user),
            nullif(current_setting('auditdb.actor_email', true), ''),
            nullif(current_setting('auditdb.actor_name', true), ''), auditdb.context_ip(),
            nullif(current_setting('auditdb.user_agent', true), ''),
            jsonb_build_object('role', auditdb_role, 'tenants', to_jsonb(tenants)));
end
$$;

reset role;
