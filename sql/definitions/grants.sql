-- Privileges, all of them explicit. Nothing of schema auditdb is executable by PUBLIC, including
-- the functions apply generates later (they revoke it themselves; the default privileges below
-- cover functions the auditdb roles create). Nobody but auditdb_owner and auditdb_capture may
-- write the log, and auditdb_capture only the columns an entry's author chooses: the log sets id,
-- occurred_at, txid and db_user itself. auditdb_admin reads the log (viewers under row-level
-- security, sql/definitions/access.sql); auditdb_writer sets the context and emits.
-- Everything auditdb's roles hold here is what follows, and nothing else (whatever a role that
-- once ran as auditdb_owner granted; other grantees are removed by auditdb/integrity.py, and what these lose is logged).
revoke all on all functions in schema auditdb from public;
do $$
declare
    held record;
begin
    for held in
        select p.oid::regprocedure as fn, r.rolname
          from pg_proc p cross join lateral aclexplode(p.proacl) a join pg_roles r on r.oid = a.grantee
         where p.pronamespace = 'auditdb'::regnamespace and a.grantee <> p.proowner
           and r.rolname in ('auditdb_capture', 'auditdb_admin', 'auditdb_viewer', 'auditdb_writer')
    loop
        execute format('revoke all on function %s from %I', held.fn, held.rolname);
    end loop;
end
$$;
revoke all on all tables in schema auditdb from auditdb_capture, auditdb_admin, auditdb_viewer, auditdb_writer;
revoke all on all sequences in schema auditdb from public, auditdb_capture, auditdb_admin, auditdb_viewer, auditdb_writer;
alter default privileges for role auditdb_owner revoke execute on functions from public;
alter default privileges for role auditdb_capture revoke execute on functions from public;

revoke all on all tables in schema auditdb from public;
grant usage on schema auditdb to auditdb_admin, auditdb_viewer, auditdb_writer;
grant select on auditdb.log, auditdb.partition_archive, auditdb.tracked_tables, auditdb.event_queue, auditdb.seal,
                auditdb.worker_heartbeat, auditdb.tenant_roles, auditdb.tenant_from_context_roles,
                auditdb.event_dead_letter, auditdb.admin_roles to auditdb_admin;
grant select on auditdb.log to auditdb_viewer;
grant select on auditdb.alembic_version to auditdb_admin, auditdb_viewer, auditdb_writer;

-- Capture: append entries (not their id, time, transaction or database user), read the registry.
grant usage on schema auditdb to auditdb_capture;
grant insert (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id, actor_email, actor_name,
              ip, user_agent, table_name, changes, metadata) on auditdb.log to auditdb_capture;
grant usage on sequence auditdb.log_id_seq to auditdb_capture;
grant select on auditdb.tracked_tables to auditdb_capture;
grant execute on function auditdb.context_ip(), auditdb.context_values(), auditdb.is_system_role(text[]), auditdb.login_roles(),
                          auditdb.type_kind(oid), auditdb.capture_text_sql(text, text, text),
                          auditdb.capture_value_sql(text, text, text, text), auditdb.capture_changed_sql(text, text),
                          auditdb.capture_object_sql(text[]), auditdb.capture_columns_unchanged(jsonb, jsonb, boolean)
    to auditdb_capture;

grant execute on function auditdb.set_context(text, text, text, text, text, text, text, text),
                          auditdb.current_context(),
                          auditdb.emit(text, text, text, text, jsonb)
    to auditdb_writer, auditdb_admin;
grant execute on function auditdb.reader_tenants(), auditdb.reader_sees_all(),
                          auditdb.log_export(jsonb, text, text, text, boolean, bigint),
                          auditdb.filter_sql(jsonb),
                          auditdb.search_log(jsonb, bigint, integer), auditdb.search_log_months(jsonb, bigint, integer)
    to auditdb_admin, auditdb_viewer;
-- Index expressions run as whoever inserts: capture writes late entries into a closed month.
grant execute on function auditdb.search_keys(text, text, text, text) to auditdb_capture;
grant execute on function auditdb.type_kind(oid), auditdb.scalar_base_type(oid), auditdb.exact_equality(oid, oid)
    to auditdb_admin;
grant execute on function auditdb.ensure_partitions(integer), auditdb.partitions(), auditdb.month_start(integer),
                          auditdb.index_closed_month(), auditdb.closed_months(), auditdb.search_keys_version(), auditdb.seal(integer), auditdb.seal_status(),
                          auditdb.record_archive(text, bigint, text, text),
                          auditdb.prune_partitions(integer, boolean),
                          auditdb.process_events(integer),
                          auditdb.worker_beat(text, timestamptz, bigint),
                          auditdb.live_workers(),
                          auditdb.wakeup_hold(integer), auditdb.wakeup_release()
    to auditdb_admin;
