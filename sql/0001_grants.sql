-- Privileges. Nothing of schema auditdb is executable by PUBLIC; functions generated later
-- (owned by auditdb_owner) start the same way through default privileges. Nobody but
-- auditdb_owner may write the log; auditdb_admin reads it (viewers get row-level security).
revoke all on all functions in schema auditdb from public;
alter default privileges for role auditdb_owner in schema auditdb revoke execute on functions from public;

revoke all on all tables in schema auditdb from public;
grant select on auditdb.log, auditdb.partition_archive, auditdb.tracked_tables, auditdb.event_queue,
                auditdb.worker_heartbeat, auditdb.tenant_roles to auditdb_admin;
grant select on auditdb.log to auditdb_viewer;
grant select on auditdb.alembic_version to auditdb_admin, auditdb_viewer, auditdb_writer;  -- rows filtered by row-level security (0001_access.sql)
grant execute on function auditdb.viewer_tenants(name), auditdb.log_export(jsonb, text, bigint, text, text)
    to auditdb_admin, auditdb_viewer;

grant execute on function auditdb.set_context(text, text, text, text, text, text, text, text),
                          auditdb.current_context(),
                          auditdb.emit(text, text, text, text, jsonb)
    to auditdb_writer;
grant execute on function auditdb.ensure_partitions(integer), auditdb.partitions(),
                          auditdb.record_archive(text, bigint, text),
                          auditdb.prune_partitions(integer, boolean),
                          auditdb.set_context(text, text, text, text, text, text, text, text),
                          auditdb.current_context(),
                          auditdb.emit(text, text, text, text, jsonb),
                          auditdb.process_events(integer),
                          auditdb.worker_beat(text, timestamptz, bigint)
    to auditdb_admin;
