-- Revision 0004: auditdb.emit sends NOTIFY only when the queue holds no earlier event, so
-- transactions that emit commit together again (group commit) instead of one per WAL flush.
set local role auditdb_owner;

create or replace function auditdb.emit(
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
    -- Wake the worker only when no earlier event is waiting: if one is, the worker is awake (or
    -- its emitter's NOTIFY is on the way) and drains until the queue is empty. NOTIFY serialises
    -- committing transactions (a cluster-wide lock held through the commit's flush), so one per
    -- event capped emitting transactions at one per WAL flush. An event that slips past a worker
    -- going to sleep waits at most its poll interval.
    if not exists (select from auditdb.event_queue q where q.id < queue_id) then
        perform pg_notify('auditdb_events', queue_id::text);
    end if;
    return queue_id;
end
$$;

reset role;
