-- Capture support: the registry of tracked tables that `auditdb apply` maintains, and the small
-- helpers every generated capture function calls. The capture functions themselves are
-- generated per table from sql/templates/capture.sql.j2 and owned by auditdb_owner.
set local role auditdb_owner;

create table auditdb.tracked_tables (
    -- the tracked table (a partitioned table's partitions are tracked with it)
    relid regclass primary key,
    -- schema-qualified name as the config wrote it, for messages after a rename
    table_name text not null,
    -- the generated capture function
    function_name text not null,
    -- the resolved config the function was generated from
    config jsonb not null check (jsonb_typeof(config) = 'object'),
    -- auditdb:<template version>:<digest> of the generated SQL, also in the triggers' comments
    signature text not null,
    applied_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.tracked_tables is 'auditdb: tables whose changes are captured, as `auditdb apply` left them';

-- The session's client address, or null when the setting is not an address: a malformed value
-- set behind set_context's back must never make the audited change fail.
create function auditdb.context_ip() returns inet
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    raw text := nullif(current_setting('auditdb.ip', true), '');
begin
    if raw is null then
        return null;
    end if;
    -- Only this inner block pays for a subtransaction, and only when an address is set.
    begin
        return raw::inet;
    exception when invalid_text_representation then
        return null;
    end;
end
$$;

comment on function auditdb.context_ip() is 'auditdb: the context ip as inet, null when unset or malformed';

-- Whether session_user is one of roles or a member of one of them. Membership is read from the
-- catalog, not pg_has_role, because being a superuser alone must not count.
create function auditdb.is_system_role(roles text[]) returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    with recursive member_of(roleid) as (
        select r.oid from pg_roles r where r.rolname = session_user
        union
        select m.roleid from pg_auth_members m join member_of on m.member = member_of.roleid
    )
    select exists (select from member_of join pg_roles r on r.oid = member_of.roleid where r.rolname = any(roles))
$$;

comment on function auditdb.is_system_role(text[]) is 'auditdb: is the session user one of the system roles (require_actor exemption)';

reset role;

revoke all on function auditdb.context_ip(), auditdb.is_system_role(text[]) from public;
