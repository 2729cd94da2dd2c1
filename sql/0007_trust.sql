-- Revision 0007: the trust boundary. Only roles, tables and stored state change here; every
-- function, policy, event trigger and grant is defined once in sql/definitions/ and applied after
-- the last revision (auditdb.install).
--   * auditdb_capture: the role capture runs as. It may append entries to the log (never choose
--     their id, time, transaction or database user) and read the tracked-table registry; nothing
--     else. Capture functions move to it from auditdb_owner.
--   * the registry remembers each tracked table's partitions and inheritance children, so one
--     that leaves or joins is seen;
--   * readers are bound by role (oid, so a renamed role keeps its binding and a new role with an
--     old name inherits none); readers allowed to read the tenant named in their session are
--     listed (never fallen into); admins are listed per database: auditdb's roles are
--     cluster-wide, and being granted auditdb_admin for one database must not read another's log;
--   * entries are stamped with the time they are written (clock_timestamp()): a statement's start
--     stays fixed across a procedure's COMMITs and a DO block's sleeps, and would backdate them;
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

alter table auditdb.tracked_tables add column partitions oid[] not null default '{}',
                                   add column children oid[] not null default '{}';
comment on column auditdb.tracked_tables.partitions is 'the partitions of the table when auditdb last looked (leaving or joining ones are logged)';
comment on column auditdb.tracked_tables.children is 'tables inheriting from it when auditdb last looked (their writes are not captured)';

alter table auditdb.tenant_roles add column roleid oid;
update auditdb.tenant_roles t set roleid = r.oid from pg_catalog.pg_roles r where r.rolname = t.role_name;
comment on column auditdb.tenant_roles.roleid is 'the role, by oid (role_name is its name when bound)';

create table auditdb.tenant_from_context_roles (
    -- a role that, when bound to no tenant, reads the tenant named in its auditdb.tenant_id setting
    roleid oid primary key,
    -- its name when granted
    role_name text not null,
    granted_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.tenant_from_context_roles is 'auditdb: readers granted `--viewer --tenant-from-context` by an admin';

create table auditdb.admin_roles (
    -- a role granted auditdb_admin for this database (`auditdb grant ROLE --admin`)
    roleid oid primary key,
    -- its name when granted
    role_name text not null,
    granted_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.admin_roles is 'auditdb: who is an admin of this database''s log (auditdb_admin alone is cluster-wide)';

-- Those who were admins here before keep it.
insert into auditdb.admin_roles (roleid, role_name)
select m.member, r.rolname from pg_catalog.pg_auth_members m join pg_catalog.pg_roles r on r.oid = m.member
 where m.roleid = 'auditdb_admin'::regrole and r.rolname not like 'auditdb\_%'
on conflict do nothing;

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
alter table auditdb.log alter column occurred_at set default pg_catalog.clock_timestamp();
alter table auditdb.partition_archive add column sha256 text;

-- Definitions that changed their arguments or are gone (sql/definitions/ makes the rest). No
-- CASCADE anywhere: what depends on them is dropped by name first.
drop policy if exists log_admin_read on auditdb.log;
drop policy if exists log_viewer_read on auditdb.log;
drop function if exists auditdb.viewer_tenants(name);
drop function if exists auditdb.log_export(jsonb, text, bigint, text, text);
drop function if exists auditdb.record_archive(text, bigint, text);
drop function if exists auditdb.generic_row(jsonb, jsonb, text);
drop function if exists auditdb.generic_diff(jsonb, jsonb, jsonb);
drop function if exists auditdb.generic_entity_id(jsonb, text[]);
drop function if exists auditdb.log_access_change(text, text, text, text[]);

reset role;

drop function if exists auditdb.check_relation(oid, text);
