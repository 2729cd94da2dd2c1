-- Revision 0004: a batch of auditdb.process_events never exceeds batch_size. The ids are chosen
-- once (a materialised CTE) and deleted by join; before, `where id in (select … limit n for
-- update skip locked)` could be rescanned by a nested loop (a plan PL/pgSQL cached while the
-- queue was nearly empty), each rescan claiming the next n: thousands of events in one
-- transaction, with time quadratic in the queue's length.
set local role auditdb_owner;

create or replace function auditdb.process_events(batch_size integer default 500)
returns table (processed bigint, lag interval)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    return query
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
    select count(*), clock_timestamp() - min(l.occurred_at) from logged l;
end
$$;

reset role;
