-- Session context: who is acting, per transaction. set_context writes transaction-local settings
-- (set_config(…, true)), so nothing outlives the transaction or leaks to the next user of a
-- pooled connection. Everything that writes an entry reads them through context_values() (the
-- generated capture inlines the same reads, with the same bounds): a value set with set_config
-- behind set_context's back is cut to its bound, an address that is not one becomes null, and
-- neither can make a write or a DDL watcher fail.
set local role auditdb_owner;

create or replace function auditdb.set_context(
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
    -- Identifiers: short, printable. Names and user agents are free text (escaped on output),
    -- kept to their bounds: a browser's overlong user agent must not fail the request.
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
        raise exception 'auditdb.set_context: actor_email % is not an e-mail address', quote_literal(left(actor_email, 320))
            using errcode = 'invalid_parameter_value';
    end if;
    if ip <> '' then
        begin
            ip := abbrev(ip::inet);
        exception when invalid_text_representation then
            raise exception 'auditdb.set_context: ip % is not an IP address', quote_literal(left(ip, 64))
                using errcode = 'invalid_parameter_value',
                      hint = 'Pass the client address, e.g. 203.0.113.7 or 2001:db8::1.';
        end;
    end if;
    perform set_config('auditdb.actor_id', coalesce(actor_id, ''), true),
            set_config('auditdb.actor_email', coalesce(actor_email, ''), true),
            set_config('auditdb.actor_name', coalesce(left(actor_name, 256), ''), true),
            set_config('auditdb.ip', coalesce(ip, ''), true),
            set_config('auditdb.user_agent', coalesce(left(user_agent, 1024), ''), true),
            set_config('auditdb.tenant_id', coalesce(tenant_id, ''), true),
            set_config('auditdb.project_id', coalesce(project_id, ''), true),
            set_config('auditdb.request_id', coalesce(request_id, ''), true);
end
$$;

comment on function auditdb.set_context(text, text, text, text, text, text, text, text)
    is 'auditdb: set who is acting for the rest of the current transaction';

-- The session's client address, or null when the setting is not an address: a malformed value
-- set behind set_context's back must never make the audited change fail.
create or replace function auditdb.context_ip() returns inet
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    raw text := nullif(current_setting('auditdb.ip', true), '');
begin
    if raw is null or length(raw) > 64 then
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

-- The context as entries record it: each value cut to its bound (the bounds of set_context;
-- the generated capture renders the same ones from auditdb/context.py's CONTEXT_BOUNDS), the
-- address parsed, and invalid_ip holding (the start of) a setting that is not an address.
create or replace function auditdb.context_values(
    out actor_id text, out actor_email text, out actor_name text, out ip inet, out invalid_ip text,
    out user_agent text, out tenant_id text, out project_id text, out request_id text)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select left(nullif(current_setting('auditdb.actor_id', true), ''), 256),
           left(nullif(current_setting('auditdb.actor_email', true), ''), 320),
           left(nullif(current_setting('auditdb.actor_name', true), ''), 256),
           auditdb.context_ip(),
           case when auditdb.context_ip() is null
                then left(nullif(current_setting('auditdb.ip', true), ''), 64) end,
           left(nullif(current_setting('auditdb.user_agent', true), ''), 1024),
           left(nullif(current_setting('auditdb.tenant_id', true), ''), 256),
           left(nullif(current_setting('auditdb.project_id', true), ''), 256),
           left(nullif(current_setting('auditdb.request_id', true), ''), 256)
$$;

comment on function auditdb.context_values() is 'auditdb: the session context, bounded, as entries record it';

-- The context in force, as a JSON object with every key (null where unset), bounded as entries
-- record it.
-- definer: reads only the session's own settings (so writers need no grant on context_values).
create or replace function auditdb.current_context() returns jsonb
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'actor_id', c.actor_id, 'actor_email', c.actor_email, 'actor_name', c.actor_name,
        'ip', coalesce(abbrev(c.ip), c.invalid_ip), 'user_agent', c.user_agent, 'tenant_id', c.tenant_id,
        'project_id', c.project_id, 'request_id', c.request_id)
      from auditdb.context_values() c
$$;

comment on function auditdb.current_context() is 'auditdb: the session context in force';

reset role;
