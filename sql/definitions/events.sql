-- Events that no table change shows (LOGIN, LOGIN_FAILED, DATA_EXPORTED, …). auditdb.emit writes
-- them to a durable queue inside the caller's transaction; `auditdb worker` moves queued events
-- into auditdb.log with auditdb.process_events: claim, log and delete in one transaction, so each
-- event is logged exactly once however often a worker dies. An event that cannot be logged is set
-- aside (auditdb.event_dead_letter, with an AUDIT_CHANGED entry saying so), never retried for ever
-- in front of the others.
--
-- Waking the worker (revision 0005): PostgreSQL serialises the commits of notifying transactions,
-- so emit sends NOTIFY only while a worker sleeps. A worker about to sleep takes the wake-up lock
-- (a session-level advisory lock, exclusive, key (1635083369, 1952735777) = ('audi', 'tdb!')),
-- drains the queue once more, then sleeps holding it; emit takes the same lock shared for the
-- rest of its transaction when it can (then no worker is asleep, and none will sleep before this
-- transaction ends), and sends NOTIFY only when it cannot.
set local role auditdb_owner;

-- A value as the log shows it: masked fully, or all but the last 4 characters.
create or replace function auditdb.mask_value(value jsonb, treatment text) returns jsonb
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when value is null or jsonb_typeof(value) = 'null' or treatment is null or treatment = 'plain' then value
        when treatment = 'last4' and length(value #>> '{}') > 8 then to_jsonb('***' || right(value #>> '{}', 4))
        else '"***"'::jsonb
    end
$$;

comment on function auditdb.mask_value(jsonb, text) is 'auditdb: a value masked fully or to its last 4 characters';

-- Metadata with the values of keys that match the mask globs masked, at any depth.
create or replace function auditdb.mask_metadata(metadata jsonb, full_regex text[], last4_regex text[]) returns jsonb
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

comment on function auditdb.mask_metadata(jsonb, text[], text[]) is 'auditdb: event metadata with masked keys masked, at any depth';

-- Record an event; returns its queue id. Actor, address, user agent, tenant, project and
-- request id come from the session context. Rolled back with the caller's transaction. The
-- fields that share an index row of the log are bounded here, so an event can always be logged.
-- definer: writes auditdb.event_queue from text and jsonb arguments (builtin types: no caller code runs).
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
    masks jsonb;
    ctx record;
begin
    if action is null or action !~ '^[A-Z][A-Z0-9_]*$' or length(action) > 64 then
        raise exception 'auditdb.emit: action % is not a valid action name', quote_nullable(left(action, 64))
            using errcode = 'invalid_parameter_value',
                  hint = 'Use at most 64 upper-case letters, digits and underscores, starting with a letter (e.g. LOGIN_FAILED).';
    end if;
    if action in ('CREATE', 'UPDATE', 'DELETE', 'BULK_CREATE', 'BULK_UPDATE', 'BULK_DELETE', 'AUDIT_CHANGED') then
        raise exception 'auditdb.emit: % is written only by auditdb itself', action
            using errcode = 'invalid_parameter_value',
                  detail = 'Table changes are captured by the audit triggers; AUDIT_CHANGED records changes to auditing.',
                  hint = 'Emit an action of your own (e.g. DATA_IMPORTED) for events no table change shows.';
    end if;
    if entity_type !~ '^[A-Za-z][A-Za-z0-9_.:-]*$' then
        raise exception 'auditdb.emit: entity type % is not a name (ASCII letters, digits, _ . : -, starting with a letter)',
                        quote_literal(left(entity_type, 64))
            using errcode = 'invalid_parameter_value';
    end if;
    if entity_type ~ '^Audit' then
        raise exception 'auditdb.emit: entity type % is auditdb''s own', quote_literal(left(entity_type, 64))
            using errcode = 'invalid_parameter_value',
                  detail = 'Entries about auditing itself (AuditLog, AuditAccess, AuditPartition, …) are written only by auditdb.';
    end if;
    if metadata ? 'previous_id' then
        raise exception 'auditdb.emit: metadata.previous_id is written only by auditdb itself (an entity''s key change)'
            using errcode = 'invalid_parameter_value';
    end if;
    if octet_length(entity_type) > 256 then
        raise exception 'auditdb.emit: entity_type is % bytes long, at most 256 are allowed', octet_length(entity_type)
            using errcode = 'string_data_right_truncation';
    end if;
    if coalesce(octet_length(entity_type), 0) + coalesce(octet_length(entity_id), 0) > 2048 then
        raise exception 'auditdb.emit: entity_type and entity_id are % bytes long together, at most 2048 are allowed',
                        coalesce(octet_length(entity_type), 0) + coalesce(octet_length(entity_id), 0)
            using errcode = 'string_data_right_truncation',
                  detail = 'They share one row of the log''s entity index.';
    end if;
    if octet_length(entity_name) > 4096 then
        raise exception 'auditdb.emit: entity_name is % bytes long, at most 4096 are allowed', octet_length(entity_name)
            using errcode = 'string_data_right_truncation';
    end if;
    metadata := coalesce(metadata, '{}');
    if jsonb_typeof(metadata) <> 'object' then
        raise exception 'auditdb.emit: metadata must be a JSON object, not %', jsonb_typeof(metadata)
            using errcode = 'invalid_parameter_value';
    end if;
    if pg_column_size(metadata) > 1048576 then
        raise exception 'auditdb.emit: metadata is % bytes, at most 1 MB is allowed', pg_column_size(metadata)
            using errcode = 'program_limit_exceeded';
    end if;
    select jsonb_object_agg(s.name, s.value) into masks from auditdb.settings s
     where s.name in ('mask_regex', 'mask_last4_regex');
    if masks->'mask_regex' <> '[]' or masks->'mask_last4_regex' <> '[]' then
        metadata := auditdb.mask_metadata(metadata,
                                          array(select jsonb_array_elements_text(masks->'mask_regex')),
                                          array(select jsonb_array_elements_text(masks->'mask_last4_regex')));
    end if;
    select * into ctx from auditdb.context_values();
    if ctx.request_id is not null and not metadata ? 'request_id' then
        metadata := metadata || jsonb_build_object('request_id', ctx.request_id);
    end if;
    if ctx.invalid_ip is not null then
        metadata := metadata || jsonb_build_object('invalid_ip', ctx.invalid_ip);
    end if;
    insert into auditdb.event_queue (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, metadata)
    values (action, entity_type, entity_id, entity_name, ctx.project_id, ctx.tenant_id, ctx.actor_id,
            ctx.actor_email, ctx.actor_name, ctx.ip, ctx.user_agent, metadata)
    returning id into queue_id;
    -- Shared with every other emitter; refused only while a worker sleeps or is about to.
    if not pg_try_advisory_xact_lock_shared(1635083369, 1952735777) then
        perform pg_notify('auditdb_events', queue_id::text);
    end if;
    return queue_id;
end
$$;

comment on function auditdb.emit(text, text, text, text, jsonb) is 'auditdb: record an event (logged by the worker once the transaction commits)';

-- Move up to batch_size queued events, oldest first, into auditdb.log; several workers may call
-- it at once (SKIP LOCKED). Returns how many moved and the age of the oldest of them. The ids are
-- chosen once (a materialised CTE) and deleted by join (revision 0004: a rescanned IN claimed far
-- more than the batch). Should the batch fail, its events are logged one at a time, and one that
-- still fails is set aside with an AUDIT_CHANGED entry naming it.
-- definer: moves rows of auditdb.event_queue into auditdb.log; takes only a batch size.
create or replace function auditdb.process_events(batch_size integer default 500)
returns table (processed bigint, lag interval)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    ev record;
begin
    perform auditdb.require_admin_here('auditdb.process_events');
    begin
        with ids as materialized (
            select e.id from auditdb.event_queue e order by e.id limit batch_size for update skip locked
        ), claimed as (
            delete from auditdb.event_queue q using ids where q.id = ids.id
            returning q.*
        ), logged as (
            insert into auditdb.log (occurred_at, txid, action, entity_type, entity_id, entity_name, project_id,
                                     tenant_id, actor_id, actor_email, actor_name, ip, user_agent, db_user, metadata)
            select c.emitted_at, c.txid, c.action, c.entity_type, c.entity_id, c.entity_name, c.project_id,
                   c.tenant_id, c.actor_id, c.actor_email, c.actor_name, c.ip, c.user_agent, c.db_user, c.metadata
              from claimed c order by c.id
            returning occurred_at
        )
        select count(*), clock_timestamp() - min(l.occurred_at) into processed, lag from logged l;
        return next;
        return;
    exception when others then
        -- Some event of the batch cannot be logged: take them one by one below.
        null;
    end;
    processed := 0;
    lag := null;
    for ev in select * from auditdb.event_queue e order by e.id limit batch_size for update skip locked loop
        begin
            insert into auditdb.log (occurred_at, txid, action, entity_type, entity_id, entity_name, project_id,
                                     tenant_id, actor_id, actor_email, actor_name, ip, user_agent, db_user, metadata)
            values (ev.emitted_at, ev.txid, ev.action, ev.entity_type, ev.entity_id, ev.entity_name, ev.project_id,
                    ev.tenant_id, ev.actor_id, ev.actor_email, ev.actor_name, ev.ip, ev.user_agent, ev.db_user, ev.metadata);
            processed := processed + 1;
            lag := greatest(lag, clock_timestamp() - ev.emitted_at);
        exception when others then
            insert into auditdb.event_dead_letter (id, event, error) values (ev.id, to_jsonb(ev), sqlerrm)
            on conflict (id) do nothing;
            perform auditdb.log_audit_change('AuditEvent', ev.id::text, left(ev.action, 64), null,
                jsonb_build_object('operation', 'dead_letter', 'queue_id', ev.id, 'action', left(ev.action, 64),
                                   'db_user', ev.db_user, 'emitted_at', ev.emitted_at, 'txid', ev.txid,
                                   'error', left(sqlerrm, 1000)));
        end;
        delete from auditdb.event_queue where id = ev.id;
    end loop;
    return next;
end
$$;

comment on function auditdb.process_events(integer) is 'auditdb: log a batch of queued events exactly once';

-- A worker's heartbeat, with the backend it runs in, so doctor can tell whether it still runs.
-- definer: writes only the caller's own row of auditdb.worker_heartbeat (its backend pid and start).
create or replace function auditdb.worker_beat(worker text, started_at timestamptz, processed bigint) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    perform auditdb.require_admin_here('auditdb.worker_beat');
    insert into auditdb.worker_heartbeat as h (worker, started_at, last_seen, processed, backend_pid, backend_start)
    select left(worker_beat.worker, 256), worker_beat.started_at, clock_timestamp(), worker_beat.processed,
           pg_backend_pid(), a.backend_start
      from pg_stat_activity a where a.pid = pg_backend_pid()
    on conflict on constraint worker_heartbeat_pkey do update
       set started_at = excluded.started_at, last_seen = excluded.last_seen, processed = excluded.processed,
           backend_pid = excluded.backend_pid, backend_start = excluded.backend_start;
    delete from auditdb.worker_heartbeat h where h.last_seen < now() - interval '7 days';
end
$$;

comment on function auditdb.worker_beat(text, timestamptz, bigint) is 'auditdb: a worker is alive (and in which backend)';

-- Workers whose heartbeat is recent and whose backend is still connected to this database.
-- definer: reads auditdb.worker_heartbeat and pg_stat_activity; takes no argument.
create or replace function auditdb.live_workers()
returns table (worker text, last_seen timestamptz, backend_alive boolean)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform auditdb.require_admin_here('auditdb.live_workers');
    return query
    select h.worker, h.last_seen,
           exists (select from pg_stat_activity a
                    where a.pid = h.backend_pid and a.datname = current_database()
                      and (a.backend_start = h.backend_start or a.backend_start is null))
      from auditdb.worker_heartbeat h
     order by h.last_seen desc;
end
$$;

comment on function auditdb.live_workers() is 'auditdb: heartbeats, each with whether its backend still runs';

-- Called by a worker that found the queue empty and wants to sleep: take the wake-up lock,
-- waiting at most wait_ms for emitting transactions that skipped NOTIFY to end. Returns
-- 'held' (drain once more, then sleep: every emitter now NOTIFYs), 'worker' (another worker
-- holds it or is taking it; NOTIFYs wake every listener, so sleep, but not for long: that
-- worker may be gone) or 'busy' (an emitting transaction is still open: its events come only by
-- looking again, soon). A worker calls it only when it does not hold the lock already.
create or replace function auditdb.wakeup_hold(wait_ms integer default 20) returns text
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    previous text := current_setting('lock_timeout');
begin
    perform set_config('lock_timeout', greatest(wait_ms, 1) || 'ms', true);
    begin
        perform pg_advisory_lock(1635083369, 1952735777);
    exception when lock_not_available then
        perform set_config('lock_timeout', previous, true);
        -- Shared, as an emitter takes it: refused only while a worker holds or awaits it (in
        -- this database: advisory locks are per database).
        if pg_try_advisory_lock_shared(1635083369, 1952735777) then
            perform pg_advisory_unlock_shared(1635083369, 1952735777);
            return 'busy';
        end if;
        return 'worker';
    end;
    perform set_config('lock_timeout', previous, true);
    return 'held';
end
$$;

comment on function auditdb.wakeup_hold(integer) is 'auditdb: a worker about to sleep takes the wake-up lock (revision 0005)';

-- A woken worker lets the wake-up lock go: while it is awake, emitters need not NOTIFY. Only
-- a worker that holds it calls this (taking it once per hold: the lock is not re-entered).
create or replace function auditdb.wakeup_release() returns boolean
language sql
security invoker
set search_path = pg_catalog, pg_temp
as $$
    select pg_advisory_unlock(1635083369, 1952735777);
$$;

comment on function auditdb.wakeup_release() is 'auditdb: a woken worker lets the wake-up lock go (revision 0005)';

reset role;
