-- Session context: who is acting, per transaction. set_context writes transaction-local settings
-- (set_config(…, true)), so nothing outlives the transaction or leaks to the next user of a
-- pooled connection; capture reads them with nullif(current_setting(name, true), '').
set local role auditdb_owner;

create function auditdb.set_context(
    actor_id text default null,
    actor_email text default null,
    actor_name text default null,
    ip text default null,
    user_agent text default null,
    tenant_id text default null,
    project_id text default null,
    request_id text default null
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    field record;
begin
    -- Identifiers: short, printable. Names and user agents are free text (escaped on output).
    for field in
        select * from (values ('actor_id', actor_id), ('tenant_id', tenant_id),
                              ('project_id', project_id), ('request_id', request_id)) v(name, value)
    loop
        if length(field.value) > 256 then
            raise exception 'auditdb.set_context: % is longer than 256 characters', field.name
                using errcode = 'invalid_parameter_value';
        end if;
        if field.value ~ '[[:cntrl:]]' then
            raise exception 'auditdb.set_context: % contains control characters', field.name
                using errcode = 'invalid_parameter_value';
        end if;
    end loop;
    if actor_email <> '' and (actor_email !~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]+$' or length(actor_email) > 320) then
        raise exception 'auditdb.set_context: actor_email % is not an e-mail address', quote_literal(actor_email)
            using errcode = 'invalid_parameter_value';
    end if;
    if ip <> '' then
        begin
            ip := abbrev(ip::inet);
        exception when invalid_text_representation then
            raise exception 'auditdb.set_context: ip % is not an IP address', quote_literal(ip)
                using errcode = 'invalid_parameter_value',
                      hint = 'Pass the client address, e.g. 203.0.113.7 or 2001:db8::1.';
        end;
    end if;
    perform set_config('auditdb.actor_id', coalesce(actor_id, ''), true),
            set_config('auditdb.actor_email', coalesce(actor_email, ''), true),
            set_config('auditdb.actor_name', coalesce(actor_name, ''), true),
            set_config('auditdb.ip', coalesce(ip, ''), true),
            set_config('auditdb.user_agent', coalesce(user_agent, ''), true),
            set_config('auditdb.tenant_id', coalesce(tenant_id, ''), true),
            set_config('auditdb.project_id', coalesce(project_id, ''), true),
            set_config('auditdb.request_id', coalesce(request_id, ''), true);
end
$$;

comment on function auditdb.set_context(text, text, text, text, text, text, text, text)
    is 'auditdb: set who is acting for the rest of the current transaction';

-- The context in force, as a JSON object with every key (null where unset).
create function auditdb.current_context() returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'actor_id', nullif(current_setting('auditdb.actor_id', true), ''),
        'actor_email', nullif(current_setting('auditdb.actor_email', true), ''),
        'actor_name', nullif(current_setting('auditdb.actor_name', true), ''),
        'ip', nullif(current_setting('auditdb.ip', true), ''),
        'user_agent', nullif(current_setting('auditdb.user_agent', true), ''),
        'tenant_id', nullif(current_setting('auditdb.tenant_id', true), ''),
        'project_id', nullif(current_setting('auditdb.project_id', true), ''),
        'request_id', nullif(current_setting('auditdb.request_id', true), ''))
$$;

comment on function auditdb.current_context() is 'auditdb: the session context in force';

reset role;
