-- Events that no table change shows (LOGIN, LOGIN_FAILED, DATA_EXPORTED, …). auditdb.emit writes
-- them to a durable queue inside the caller's transaction and wakes the worker with NOTIFY (the
-- queue id only, so a payload never nears NOTIFY's 8000-byte limit). `auditdb worker` moves
-- queued events into auditdb.log with auditdb.process_events: claim, log and delete in one
-- transaction, so each event is logged exactly once however often a worker dies.
set local role auditdb_owner;

create table auditdb.event_queue (
    -- queue order
    id bigint generated always as identity primary key,
    -- when the event was emitted: becomes the entry's occurred_at
    emitted_at timestamptz not null default pg_catalog.clock_timestamp(),
    -- the emitting transaction
    txid bigint not null default pg_catalog.txid_current(),
    action text not null check (action ~ '^[A-Z][A-Z0-9_]*$'),
    entity_type text,
    entity_id text,
    entity_name text,
    project_id text,
    tenant_id text,
    actor_id text,
    actor_email text,
    actor_name text,
    ip inet,
    user_agent text,
    db_user text not null default session_user,
    metadata jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object')
);

comment on table auditdb.event_queue is 'auditdb: emitted events waiting for the worker; durable, drained in id order';

-- Column-name globs (as regular expressions) masked in event metadata too; `auditdb apply`
-- stores the config's defaults here.
create table auditdb.settings (
    name text primary key,
    value jsonb not null
);

comment on table auditdb.settings is 'auditdb: settings apply stores for the database side (event metadata masking)';

insert into auditdb.settings (name, value) values ('mask_regex', '[]'), ('mask_last4_regex', '[]');

-- Metadata with the values of keys that match the mask globs masked, at any depth.
create function auditdb.mask_metadata(metadata jsonb, full_regex text[], last4_regex text[]) returns jsonb
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    result jsonb;
begin
    if jsonb_typeof(metadata) = 'object' then
        select coalesce(jsonb_object_agg(e.key,
                   case when e.key ~ any(full_regex) then auditdb.mask_value(e.value, 'full')
                        when e.key ~ any(last4_regex) then auditdb.mask_value(e.value, 'last4')
                        else auditdb.mask_metadata(e.value, full_regex, last4_regex) end), '{}')
          into result from jsonb_each(metadata) e;
        return result;
    elsif jsonb_typeof(metadata) = 'array' then
        select coalesce(jsonb_agg(auditdb.mask_metadata(e.value, full_regex, last4_regex) order by e.ordinality), '[]')
          into result from jsonb_array_elements(metadata) with ordinality e;
        return result;
    end if;
    return metadata;
end
$$;

-- Record an event; returns its queue id. Actor, address, user agent, tenant, project and
-- request id come from the session context. Rolled back with the caller's transaction.
create function auditdb.emit(
    action text,
    entity_type text default null,
    entity_id text default null,
    entity_name text default null,
    metadata jsonb default '{}'
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    queue_id bigint;
    request_id text := nullif(current_setting('auditdb.request_id', true), '');
    masks jsonb;
begin
    if action is null or action !~ '^[A-Z][A-Z0-9_]*$' then
        raise exception 'auditdb.emit: action % is not a valid action name', quote_nullable(action)
            using errcode = 'invalid_parameter_value',
                  hint = 'Use upper-case letters, digits and underscores, starting with a letter (e.g. LOGIN_FAILED).';
    end if;
    metadata := coalesce(metadata, '{}');
    if jsonb_typeof(metadata) <> 'object' then
        raise exception 'auditdb.emit: metadata must be a JSON object, not %', jsonb_typeof(metadata)
            using errcode = 'invalid_parameter_value';
    end if;
    select jsonb_object_agg(s.name, s.value) into masks from auditdb.settings s
     where s.name in ('mask_regex', 'mask_last4_regex');
    if masks->'mask_regex' <> '[]' or masks->'mask_last4_regex' <> '[]' then
        metadata := auditdb.mask_metadata(metadata,
                                          array(select jsonb_array_elements_text(masks->'mask_regex')),
                                          array(select jsonb_array_elements_text(masks->'mask_last4_regex')));
    end if;
    if request_id is not null and not metadata ? 'request_id' then
        metadata := metadata || jsonb_build_object('request_id', request_id);
    end if;
    insert into auditdb.event_queue (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, metadata)
    values (action, entity_type, entity_id, entity_name,
            nullif(current_setting('auditdb.project_id', true), ''),
            nullif(current_setting('auditdb.tenant_id', true), ''),
            nullif(current_setting('auditdb.actor_id', true), ''),
            nullif(current_setting('auditdb.actor_email', true), ''),
            nullif(current_setting('auditdb.actor_name', true), ''),
            auditdb.context_ip(),
            nullif(current_setting('auditdb.user_agent', true), ''),
            metadata)
    returning id into queue_id;
    perform pg_notify('auditdb_events', queue_id::text);
    return queue_id;
end
$$;

comment on function auditdb.emit(text, text, text, text, jsonb) is 'auditdb: record an event (logged by the worker once the transaction commits)';

-- Move up to batch_size queued events, oldest first, into auditdb.log; several workers may call
-- it at once (SKIP LOCKED). Returns how many moved and the age of the oldest of them.
create function auditdb.process_events(batch_size integer default 500)
returns table (processed bigint, lag interval)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    return query
    with claimed as (
        delete from auditdb.event_queue q
         where q.id in (select e.id from auditdb.event_queue e order by e.id limit batch_size for update skip locked)
        returning q.*
    ), logged as (
        insert into auditdb.log (occurred_at, txid, action, entity_type, entity_id, entity_name, project_id,
                                 tenant_id, actor_id, actor_email, actor_name, ip, user_agent, db_user, metadata)
        select c.emitted_at, c.txid, c.action, c.entity_type, c.entity_id, c.entity_name, c.project_id,
               c.tenant_id, c.actor_id, c.actor_email, c.actor_name, c.ip, c.user_agent, c.db_user, c.metadata
          from claimed c order by c.id
        returning occurred_at
    )
    select count(*), clock_timestamp() - min(l.occurred_at) from logged l;
end
$$;

comment on function auditdb.process_events(integer) is 'auditdb: log a batch of queued events exactly once';

create table auditdb.worker_heartbeat (
    -- a worker's name (host:pid unless given)
    worker text primary key,
    started_at timestamptz not null,
    last_seen timestamptz not null,
    -- events this worker has logged since it started
    processed bigint not null default 0
);

comment on table auditdb.worker_heartbeat is 'auditdb: when each worker was last alive, for `auditdb doctor`';

create function auditdb.worker_beat(worker text, started_at timestamptz, processed bigint) returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    insert into auditdb.worker_heartbeat as h (worker, started_at, last_seen, processed)
    values (worker, started_at, clock_timestamp(), processed)
    on conflict (worker) do update
       set started_at = excluded.started_at, last_seen = excluded.last_seen, processed = excluded.processed;
    delete from auditdb.worker_heartbeat where last_seen < now() - interval '7 days';
$$;

reset role;
