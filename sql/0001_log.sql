-- auditdb.log: one row per audited action. Partitioned by UTC month on occurred_at; append-only
-- (see 0001_guard.sql); only auditdb_owner's security-definer functions insert into it.
set local role auditdb_owner;

create sequence auditdb.log_id_seq as bigint;

create table auditdb.log (
    -- unique, increasing in insert order
    id bigint not null default pg_catalog.nextval('auditdb.log_id_seq'),
    -- when the action happened; the partition key
    occurred_at timestamptz not null default pg_catalog.statement_timestamp(),
    -- the transaction that made the change or emitted the event
    txid bigint not null default pg_catalog.txid_current(),
    -- CREATE, UPDATE, DELETE, BULK_*, LOGIN, … or an application's own upper-case name
    action text not null,
    -- e.g. TestCase, Project, User, ApiToken
    entity_type text,
    -- the affected row's key: text for a one-column key, a JSON object for a composite one
    entity_id text,
    -- human-readable name of the entity
    entity_name text,
    -- project context: from the row when configured, else from the session context
    project_id text,
    -- tenant: from the row when the table has the tenant column, else from the session context
    tenant_id text,
    -- who acted, from the session context; null for a system process
    actor_id text,
    actor_email text,
    actor_name text,
    -- client address and user agent, from the session context
    ip inet,
    user_agent text,
    -- session_user of the session that made the change: the application cannot spoof it
    db_user text not null default session_user,
    -- schema-qualified source table; null for emitted events
    table_name text,
    -- {"column": {"old": …, "new": …}}, masked; null for emitted events
    changes jsonb,
    -- everything else: rows, request_id, previous_id, event details
    metadata jsonb not null default '{}',
    constraint log_action_ck check (action ~ '^[A-Z][A-Z0-9_]*$'),
    constraint log_changes_ck check (changes is null or jsonb_typeof(changes) = 'object'),
    constraint log_metadata_ck check (jsonb_typeof(metadata) = 'object')
) partition by range (occurred_at);

alter sequence auditdb.log_id_seq owned by auditdb.log.id;

comment on table auditdb.log is 'auditdb: one row per audited action; append-only, partitioned by UTC month';

-- Indexes for the filters of `auditdb log` / `export`. Each one costs every audited write, so
-- the optional columns are indexed only where they are set.
create index log_id_idx on auditdb.log (id);
create index log_occurred_at_idx on auditdb.log (occurred_at);
create index log_entity_idx on auditdb.log (entity_type, entity_id, occurred_at);
create index log_actor_idx on auditdb.log (actor_id, occurred_at) where actor_id is not null;
create index log_tenant_idx on auditdb.log (tenant_id, occurred_at) where tenant_id is not null;
create index log_project_idx on auditdb.log (project_id, occurred_at) where project_id is not null;
create index log_action_idx on auditdb.log (action, occurred_at);

-- What `partitions prune --export-dir` archived, so prune can refuse months never exported.
create table auditdb.partition_archive (
    -- the partition, e.g. log_2026_01
    partition_name text primary key,
    -- rows written to the archive, checked against the partition before it was recorded
    row_count bigint not null check (row_count >= 0),
    -- where the archive was written
    location text not null,
    archived_at timestamptz not null default pg_catalog.now()
);

comment on table auditdb.partition_archive is 'auditdb: partitions archived before retention drops them';

reset role;
