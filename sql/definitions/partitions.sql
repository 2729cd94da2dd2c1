-- Monthly partitions of auditdb.log (auditdb.log_YYYY_MM, UTC months) and the default partition
-- that keeps an insert from ever failing for want of one. ensure creates months ahead; prune
-- drops whole past months, never the current or a future one, and only archived ones unless
-- forced. They run as auditdb_owner (security definer) and are granted to auditdb_admin; each
-- marks its own DDL as maintenance only while it runs.
set local role auditdb_owner;

-- The first instant of the UTC month that is `months` months from the current one.
create or replace function auditdb.month_start(months integer default 0) returns timestamptz
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select (date_trunc('month', now() at time zone 'UTC') + make_interval(months => months))
           at time zone 'UTC'
$$;

comment on function auditdb.month_start(integer) is 'auditdb: the first instant of a UTC month, counted from this one';

-- Create the partitions of the current month and the next months_ahead months where missing;
-- returns the names created.
-- definer: creates tables in schema auditdb from an integer argument; no caller-supplied name or code.
create or replace function auditdb.ensure_partitions(months_ahead integer default 3) returns setof text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
-- Creating a partition waits for every transaction holding the log; while it waits, every audited
-- write queues behind it. Give up soon instead: months are made well ahead, the next try succeeds.
set lock_timeout = '2s'
as $$
declare
    month_offset integer;
    lower_bound timestamptz;
    partition_name text;
    began boolean := false;
begin
    perform auditdb.require_admin_here('auditdb.ensure_partitions');
    if months_ahead is null or months_ahead < 0 or months_ahead > 120 then
        raise exception 'auditdb.ensure_partitions: months_ahead must be between 0 and 120, not %', months_ahead
            using errcode = 'invalid_parameter_value';
    end if;
    -- Two callers (a worker and an admin) must not race to create the same month.
    perform pg_advisory_xact_lock(hashtext('auditdb.ensure_partitions'));
    for month_offset in 0 .. months_ahead loop
        lower_bound := auditdb.month_start(month_offset);
        partition_name := 'log_' || to_char(lower_bound at time zone 'UTC', 'YYYY_MM');
        continue when to_regclass(format('auditdb.%I', partition_name)) is not null;
        -- Creating partitions is auditdb's own upkeep, not a change to log as AUDIT_CHANGED; the
        -- mark ends with this function, so later DDL in the transaction is watched again.
        if not began and not auditdb.in_maintenance() then
            perform auditdb.begin_maintenance();
            began := true;
        end if;
        begin
            execute format(
                'create table auditdb.%I partition of auditdb.log for values from (%L) to (%L)',
                partition_name,
                to_char(lower_bound at time zone 'UTC', 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char((lower_bound + interval '1 month') at time zone 'UTC', 'YYYY-MM-DD') || ' 00:00:00+00');
        exception when check_violation then
            raise exception 'cannot create partition auditdb.%: auditdb.log_default holds entries of that month', partition_name
                using errcode = 'check_violation',
                      detail = 'Entries landed in the default partition because their month had no partition.',
                      hint = 'See `auditdb doctor`; the default partition must be emptied by an administrator first.';
        when lock_not_available then
            raise exception 'could not create partition auditdb.% within 2 s: a transaction is holding auditdb.log', partition_name
                using errcode = 'lock_not_available',
                      detail = 'Waiting longer would hold up every audited write behind it.',
                      hint = 'It is retried later (the worker tries hourly); long-open transactions that wrote audited tables delay it.';
        end;
        perform auditdb.guard_log_table(format('auditdb.%I', partition_name)::regclass);
        perform auditdb.protect_log_table(format('auditdb.%I', partition_name)::regclass);
        execute format('comment on table auditdb.%I is %L', partition_name,
                       'auditdb: entries of ' || to_char(lower_bound at time zone 'UTC', 'YYYY-MM') || ' (UTC)');
        return next partition_name;
    end loop;
    if began then
        perform auditdb.end_maintenance();
    end if;
end
$$;

comment on function auditdb.ensure_partitions(integer) is 'auditdb: create the monthly partitions of auditdb.log ahead';

-- The monthly partitions with their month and row estimate, oldest first.
-- definer: reads the catalog and the partitions' sizes; takes no argument.
create or replace function auditdb.partitions()
returns table (partition_name text, month_start timestamptz, month_end timestamptz, estimated_rows bigint, total_bytes bigint)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform auditdb.require_admin_here('auditdb.partitions');
    return query
    select c.relname::text,
           to_date(substr(c.relname, 5, 7), 'YYYY_MM')::timestamp at time zone 'UTC',
           (to_date(substr(c.relname, 5, 7), 'YYYY_MM') + interval '1 month') at time zone 'UTC',
           greatest(c.reltuples, 0)::bigint,
           pg_total_relation_size(c.oid)
      from pg_inherits i
      join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'auditdb.log'::regclass
       and c.relname ~ '^log_[0-9]{4}_[0-9]{2}$'
     order by c.relname;
end
$$;

comment on function auditdb.partitions() is 'auditdb: the monthly partitions of auditdb.log';

-- The digest of a partition's archive as `partitions prune --export-dir` writes it: one line per
-- entry (to_jsonb of the row with occurred_at as timestamptz prints it in UTC, then a newline,
-- UTF-8; auditdb/archive.py), in id order; the SHA-256 of each run of
-- 10,000 lines, then the SHA-256 of those digests one after another (hex). A reader who has every
-- byte of the archive can compute it; nobody else can (this function is executable by no role).
-- definer: reads one partition of auditdb.log named by a checked argument (log_YYYY_MM).
create or replace function auditdb.archive_digest(partition_name text) returns table (row_count bigint, sha256 text)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
begin
    if partition_name !~ '^log_[0-9]{4}_[0-9]{2}$' or to_regclass(format('auditdb.%I', partition_name)) is null then
        raise exception 'auditdb.archive_digest: % is not a partition of auditdb.log', partition_name
            using errcode = 'undefined_table';
    end if;
    return query execute format($q$
        select coalesce(sum(c.n), 0)::bigint, encode(sha256(coalesce(string_agg(c.h, ''::bytea order by c.g), ''::bytea)), 'hex')
          from (select s.g, count(*) as n, sha256(string_agg(convert_to(s.line || E'\n', 'UTF8'), ''::bytea order by s.id)) as h
                  from (select l.id, (to_jsonb(l) || jsonb_build_object('occurred_at', pg_catalog.format('%%s', l.occurred_at)))::text as line, (row_number() over (order by l.id) - 1) / 10000 as g
                          from auditdb.%I l) s
                 group by s.g) c$q$, partition_name);
end
$$;

comment on function auditdb.archive_digest(text) is 'auditdb: row count and digest of a partition as its archive holds it';

-- Record that a partition was archived: the rows and digest must be the partition's own (so only
-- a caller who wrote out every entry can record one), and the record is itself logged.
-- definer: reads one checked partition and writes auditdb.partition_archive and one AUDIT_CHANGED entry.
create or replace function auditdb.record_archive(partition_name text, row_count bigint, location text, sha256 text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    actual record;
begin
    perform auditdb.require_admin_here('auditdb.record_archive');
    select * into actual from auditdb.archive_digest(partition_name);
    if actual.row_count <> row_count then
        raise exception 'archive of auditdb.% holds % rows but the partition has %', partition_name, row_count, actual.row_count
            using errcode = 'data_exception',
                  hint = 'The archive is incomplete; nothing was recorded. Export again.';
    end if;
    if sha256 is distinct from actual.sha256 then
        raise exception 'archive of auditdb.% does not match the partition (digest %, expected %)',
                        partition_name, left(coalesce(sha256, 'none'), 64), actual.sha256
            using errcode = 'data_exception',
                  hint = 'The archive is not this partition''s entries as they are; nothing was recorded. Export again.';
    end if;
    if location is null or location = '' or length(location) > 4096 then
        raise exception 'auditdb.record_archive: the archive''s location must be given (at most 4096 characters)'
            using errcode = 'invalid_parameter_value';
    end if;
    insert into auditdb.partition_archive as a (partition_name, row_count, location, sha256)
    values (partition_name, row_count, location, actual.sha256)
    on conflict on constraint partition_archive_pkey
    do update set row_count = excluded.row_count, location = excluded.location, sha256 = excluded.sha256,
                  archived_at = now();
    perform auditdb.log_audit_change('AuditPartition', partition_name, 'auditdb.' || partition_name, null,
                                     jsonb_build_object('operation', 'archive', 'partition', 'auditdb.' || partition_name,
                                                        'rows', row_count, 'location', location, 'sha256', actual.sha256));
end
$$;

comment on function auditdb.record_archive(text, bigint, text, text) is 'auditdb: record a verified archive of a partition';

-- Drop the monthly partitions that ended more than older_than_months months before the current
-- month began. A partition with entries must have been archived unless force. Each drop is
-- itself logged as AUDIT_CHANGED. Returns what was dropped.
-- definer: drops only partitions of auditdb.log that auditdb.partitions() lists, chosen by an integer.
create or replace function auditdb.prune_partitions(older_than_months integer, force boolean default false)
returns table (partition_name text, row_count bigint, archived_to text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    cutoff timestamptz;
    part record;
    rows_in bigint;
    archive record;
    began boolean := false;
begin
    perform auditdb.require_admin_here('auditdb.prune_partitions');
    if older_than_months is null or older_than_months < 0 then
        raise exception 'auditdb.prune_partitions: older_than_months must be 0 or more, not %', older_than_months
            using errcode = 'invalid_parameter_value';
    end if;
    perform pg_advisory_xact_lock(hashtext('auditdb.ensure_partitions'));
    cutoff := auditdb.month_start(-older_than_months);
    for part in
        select p.partition_name, p.month_start, p.month_end
          from auditdb.partitions() p
         where p.month_end <= cutoff and p.month_end <= auditdb.month_start(0)
         order by p.partition_name
    loop
        execute format('select count(*) from auditdb.%I', part.partition_name) into rows_in;
        select * into archive from auditdb.partition_archive a where a.partition_name = part.partition_name;
        if rows_in > 0 and not force and (archive is null or archive.row_count <> rows_in) then
            raise exception 'refusing to drop auditdb.%: its % entries were never exported', part.partition_name, rows_in
                using errcode = 'object_not_in_prerequisite_state',
                      hint = 'Run `auditdb partitions prune --export-dir DIR` to archive it first, or add --force.';
        end if;
        if not began and not auditdb.in_maintenance() then
            perform auditdb.begin_maintenance();
            began := true;
        end if;
        execute format('drop table auditdb.%I', part.partition_name);
        perform auditdb.log_audit_change('AuditPartition', part.partition_name, 'auditdb.' || part.partition_name,
                                         null, jsonb_build_object('operation', 'prune',
                                                                  'partition', 'auditdb.' || part.partition_name,
                                                                  'rows', rows_in, 'archived_to', archive.location,
                                                                  'sha256', archive.sha256, 'forced', force));
        partition_name := part.partition_name;
        row_count := rows_in;
        archived_to := archive.location;
        return next;
    end loop;
    if began then
        perform auditdb.end_maintenance();
    end if;
end
$$;

comment on function auditdb.prune_partitions(integer, boolean) is 'auditdb: drop archived monthly partitions past retention';

reset role;
