-- auditdb roles. Cluster-wide, so they are created when missing and never dropped by uninstall:
-- other databases of the cluster may use them. None can log in; grant them to login roles.
--   auditdb_owner   owns the schema, the log and every function (trigger functions run as it)
--   auditdb_admin   reads every tenant's entries, exports, manages partitions and retention
--   auditdb_viewer  reads entries under row-level security
--   auditdb_writer  may set the session context and emit events
do $$
declare
    role_name text;
begin
    foreach role_name in array array['auditdb_owner', 'auditdb_admin', 'auditdb_viewer', 'auditdb_writer']
    loop
        if not exists (select from pg_catalog.pg_roles where rolname = role_name) then
            execute pg_catalog.format('create role %I nologin', role_name);
        end if;
    end loop;
end
$$;

alter schema auditdb owner to auditdb_owner;
revoke all on schema auditdb from public;
grant usage on schema auditdb to auditdb_admin, auditdb_viewer, auditdb_writer;
