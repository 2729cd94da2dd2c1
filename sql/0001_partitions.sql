-- Monthly partitions of auditdb.log (auditdb.log_YYYY_MM, UTC months) and the default partition
-- that keeps an insert from ever failing for want of one. ensure creates months ahead; prune
-- drops whole past months, never the current or a future one, and only archived ones unless
-- forced. Both run as auditdb_owner (security definer) and are granted to auditdb_admin.
set local role auditdb_owner;

create table auditdb.log_default partition of auditdb.log default;
select auditdb.guard_log_table('auditdb.log_default');

-- The first instant of the UTC month that is `months` months from the current one.
create function auditdb.month_start(months integer default 0) returns timestamptz
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select (date_trunc('month', now() at time zone 'UTC') + make_interval(months => months))
           at time zone 'UTC'
$$;

-- Create the partitions of the current month and the next months_ahead months where missing;
-- returns the names created.
create function auditdb.ensure_partitions(months_ahead integer default 3) returns setof text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    month_offset integer;
    lower_bound timestamptz;
    partition_name text;
begin
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
        -- Creating partitions is auditdb's own upkeep, not a change to log as AUDIT_CHANGED.
        perform auditdb.begin_maintenance();
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
        end;
        perform auditdb.guard_log_table(format('auditdb.%I', partition_name)::regclass);
        execute format('comment on table auditdb.%I is %L', partition_name,
                       'auditdb: entries of ' || to_char(lower_bound at time zone 'UTC', 'YYYY-MM') || ' (UTC)');
        return next partition_name;
    end loop;
end
$$;

comment on function auditdb.ensure_partitions(integer) is 'auditdb: create the monthly partitions of auditdb.log ahead';

-- The monthly partitions with their month and row estimate, oldest first.
create function auditdb.partitions()
returns table (partition_name text, month_start timestamptz, month_end timestamptz, estimated_rows bigint, total_bytes bigint)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select c.relname::text,
           to_date(substr(c.relname, 5, 7), 'YYYY_MM')::timestamp at time zone 'UTC',
           (to_date(substr(c.relname, 5, 7), 'YYYY_MM') + interval '1 month') at time zone 'UTC',
           greatest(c.reltuples, 0)::bigint,
           pg_total_relation_size(c.oid)
      from pg_inherits i
      join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'auditdb.log'::regclass
       and c.relname ~ '^log_[0-9]{4}_[0-9]{2}$'
     order by c.relname
$$;

comment on function auditdb.partitions() is 'auditdb: the monthly partitions of auditdb.log';

-- Record that a partition was archived with row_count rows (checked here against the partition).
create function auditdb.record_archive(partition_name text, row_count bigint, location text) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    actual bigint;
begin
    if partition_name !~ '^log_[0-9]{4}_[0-9]{2}$' or to_regclass(format('auditdb.%I', partition_name)) is null then
        raise exception 'auditdb.record_archive: % is not a partition of auditdb.log', partition_name
            using errcode = 'undefined_table';
    end if;
    execute format('select count(*) from auditdb.%I', partition_name) into actual;
    if actual <> row_count then
        raise exception 'archive of auditdb.% holds % rows but the partition has %', partition_name, row_count, actual
            using errcode = 'data_exception',
                  hint = 'The archive is incomplete; nothing was recorded. Export again.';
    end if;
    insert into auditdb.partition_archive as a (partition_name, row_count, location)
    values (partition_name, row_count, location)
    on conflict on constraint partition_archive_pkey
    do update set row_count = excluded.row_count, location = excluded.location, archived_at = now();
end
$$;

comment on function auditdb.record_archive(text, bigint, text) is 'auditdb: record a verified archive of a partition';

-- Drop the monthly partitions that ended more than older_than_months months before the current
-- month began. A partition with entries must have been archived unless force. Each drop is
-- itself logged as AUDIT_CHANGED. Returns what was dropped.
create function auditdb.prune_partitions(older_than_months integer, force boolean default false)
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
begin
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
        perform auditdb.begin_maintenance();
        execute format('drop table auditdb.%I', part.partition_name);
        perform auditdb.log_audit_change('AuditPartition', part.partition_name, 'auditdb.' || part.partition_name,
                                         null, jsonb_build_object('operation', 'prune',
                                                                  'partition', 'auditdb.' || part.partition_name,
                                                                  'rows', rows_in, 'archived_to', archive.location,
                                                                  'forced', force));
        partition_name := part.partition_name;
        row_count := rows_in;
        archived_to := archive.location;
        return next;
    end loop;
end
$$;

comment on function auditdb.prune_partitions(integer, boolean) is 'auditdb: drop archived monthly partitions past retention';

select auditdb.ensure_partitions(3);

reset role;
