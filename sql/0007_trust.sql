-- Revision 0007: the trust boundary. Only roles, tables and stored state change here; every
-- function, policy, event trigger and grant is defined once in sql/definitions/ and applied after
-- the last revision (auditdb.install).
--   * auditdb_capture: the role capture runs as. It may append entries to the log (never choose
--     their id, time, transaction or database user) and read the tracked-table registry; nothing
--     else. Capture functions move to it from auditdb_owner.
--   * the registry remembers each tracked table's partitions, so one that leaves or joins is seen;
--   * readers allowed to read the tenant named in their session are listed (never fallen into);
--   * events the worker could not log are set aside, not retried for ever;
--   * a worker's heartbeat names its backend, so doctor tells a running worker from a stale row;
--   * an archive records the digest of what was written.
do $$
declare
    role_name text;
begin
    foreach role_name in array array['auditdb_capture']
    loop
        if not exists (select from pg_catalog.pg_roles where rolname = role_name) then
            execute pg_catalog.format('create role %I nologin noinherit', role_name);
        end if;
    end loop;
end
$$;

grant usage on schema auditdb to auditdb_capture;

set local role auditdb_owner;

alter table auditdb.tracked_tables add column partitions oid[] not null default '{}';
comment on column auditdb.tracked_tables.partitions is 'the partitions of the table when auditdb last looked (leaving or joining ones are logged)';

create table auditdb.tenant_from_context_roles (
    -- a role that, when bound to no tenant, reads the tenant named in its auditdb.tenant_id setting
    role_name text primary key,
    granted_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.tenant_from_context_roles is 'auditdb: readers granted `--viewer --tenant-from-context` by an admin';

create table auditdb.event_dead_letter (
    -- the event's queue id
    id bigint primary key,
    -- the queued event as it was, every column
    event jsonb not null,
    -- why it could not be logged
    error text not null,
    failed_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.event_dead_letter is 'auditdb: emitted events the worker could not log (doctor fails while any is here)';

alter table auditdb.worker_heartbeat add column backend_pid integer, add column backend_start timestamptz;
alter table auditdb.partition_archive add column sha256 text;

-- Definitions that changed their arguments or are gone (sql/definitions/ makes the rest). No
-- CASCADE anywhere: what depends on them is dropped by name first.
drop policy log_admin_read on auditdb.log;
drop policy log_viewer_read on auditdb.log;
drop function auditdb.viewer_tenants(name);
drop function auditdb.log_export(jsonb, text, bigint, text, text);
drop function auditdb.record_archive(text, bigint, text);
drop function auditdb.generic_row(jsonb, jsonb, text);
drop function auditdb.generic_diff(jsonb, jsonb, jsonb);
drop function auditdb.generic_entity_id(jsonb, text[]);
drop function auditdb.log_access_change(text, text, text, text[]);

reset role;

drop function auditdb.check_relation(oid, text);
