-- Revision 0005: emit sends NOTIFY only when a worker is asleep.
--
-- PostgreSQL serialises the commits of notifying transactions (it holds a cluster-wide lock
-- from before a notifying commit until after its WAL flush), so one NOTIFY per event kept
-- emitting transactions from sharing WAL flushes: with synchronous_commit on, about 2,200
-- events/s here, whatever the worker did. A worker that is awake needs no wake-up call, so:
--
--  * a worker about to sleep takes the wake-up lock (a session-level advisory lock, exclusive),
--    drains the queue once more, then sleeps holding it; woken, it lets the lock go;
--  * emit takes the same lock shared for the rest of its transaction when it can: then no
--    worker is asleep, and none will sleep before this transaction ends (taking the lock waits
--    for it, and the drain after that sees its events), so NOTIFY is not needed. When the lock
--    is held or wanted by a worker, emit sends NOTIFY as before.
--
-- Nothing here decides what is logged or how often: process_events is unchanged; only who is
-- woken, and when, changes. The lock's key is the pair (1635083369, 1952735777) ('audi', 'tdb!').
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
    -- Shared with every other emitter; refused only while a worker sleeps or is about to.
    if not pg_try_advisory_xact_lock_shared(1635083369, 1952735777) then
        perform pg_notify('auditdb_events', queue_id::text);
    end if;
    return queue_id;
end
$$;

-- Called by a worker that found the queue empty and wants to sleep: take the wake-up lock,
-- waiting at most wait_ms for emitting transactions that skipped NOTIFY to end. Returns
-- 'held' (drain once more, then sleep: every emitter now NOTIFYs), 'worker' (another worker
-- holds it or is taking it; NOTIFYs wake every listener, so sleep, but not for long: that
-- worker may be gone) or 'busy' (an emitting transaction is still open: its events come only by
-- looking again, soon). A worker calls it only when it does not hold the lock already.
create function auditdb.wakeup_hold(wait_ms integer default 20) returns text
language plpgsql
security definer
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
create function auditdb.wakeup_release() returns boolean
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    select pg_advisory_unlock(1635083369, 1952735777);
$$;

comment on function auditdb.wakeup_release() is 'auditdb: a woken worker lets the wake-up lock go (revision 0005)';

revoke all on function auditdb.wakeup_hold(integer), auditdb.wakeup_release() from public;
grant execute on function auditdb.wakeup_hold(integer), auditdb.wakeup_release() to auditdb_admin;

reset role;
