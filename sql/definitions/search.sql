-- `log --search`: entries whose entity name, entity id or actor e-mail contain a text, found
-- through an index on each month that has closed, never on the open month (so no write pays).
--
-- The index is a GIN over search keys: every three-character run of the lowercased text of the
-- three columns, prefixed with the entry's tenant ('t7:ent'). An entry that contains the search
-- text contains every run of it, so the keys narrow the month to a few candidates and ILIKE
-- decides. The tenant prefix keeps the keys of one tenant apart: runs that every entry shares
-- ('ent' of 'Entity …', '.co' of an e-mail) make long lists across a month, and short ones
-- within a tenant (pg_trgm's index over the same columns, measured: 11-17 ms per month for
-- tenant + text, these 0.2-0.4 ms). No extension is needed.
--
-- Row-level security cannot use such an index (ILIKE is not leakproof, so the planner applies the
-- policies first), so the search runs as auditdb_owner in auditdb.search_log and applies the
-- reader's scope itself, as auditdb.log_export counts.
set local role auditdb_owner;

-- The search keys of one entry: each three-character run of the first 200 characters of each
-- column, lowercased, prefixed with a digest of the tenant (16 hex digits: an entry's keys stay
-- small whatever the tenant id); an entry with a longer column also gets the tenant's overflow key
-- (prefix '*'), which every search of the tenant looks up too, so ILIKE decides on it. Never change
-- what it returns without changing SEARCH_KEYS_VERSION below: each <month>_search index holds what
-- it returned when the index was built, and is used only while its version is the current one.
create or replace function auditdb.search_keys(tenant_id text, entity_name text, entity_id text, actor_email text)
returns text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select array(select t.prefix || substr(v, i, 3)
                   from unnest(array[lower(left(entity_name, 200)), lower(left(entity_id, 200)),
                                     lower(left(actor_email, 200))]) v,
                        generate_series(1, length(v) - 2) i)
        || case when greatest(length(entity_name), length(entity_id), length(actor_email)) > 200
                then array['*' || t.prefix] else '{}'::text[] end
      from (select left(md5(coalesce(tenant_id, '')), 16) as prefix) t
$$;

comment on function auditdb.search_keys(text, text, text, text) is 'auditdb: the search keys of an entry (its closed month''s search index)';

-- The version of auditdb.search_keys a <month>_search index was built with (its comment).
create or replace function auditdb.search_keys_version() returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$ select 'auditdb search keys 2' $$;

comment on function auditdb.search_keys_version() is 'auditdb: what a current search index''s comment says';

-- What an entry of the tenant containing the text matches: every key of the text, or the
-- tenant's overflow key; null when the text is shorter than three characters (the index cannot
-- narrow it). tenant_id null: entries without a tenant.
create or replace function auditdb.search_text_condition(tenant_id text, search text) returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case when length(lower(search)) >= 3 then
        format('(auditdb.search_keys(l.tenant_id, l.entity_name, l.entity_id, l.actor_email) @> %L::text[] '
               'or auditdb.search_keys(l.tenant_id, l.entity_name, l.entity_id, l.actor_email) @> %L::text[])',
               array(select distinct left(md5(coalesce(tenant_id, '')), 16) || substr(lower(search), i, 3)
                       from generate_series(1, length(lower(search)) - 2) i),
               array['*' || left(md5(coalesce(tenant_id, '')), 16)])
    end
$$;

comment on function auditdb.search_text_condition(text, text) is 'auditdb: the search index condition for a tenant and a text';

-- The closed months (log_YYYY_MM ended before this month began) and whether each has its index.
create or replace function auditdb.closed_months()
returns table (partition_name text, indexed boolean)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select c.relname::text,
           coalesce(obj_description(to_regclass(format('auditdb.%I', c.relname || '_search')), 'pg_class')
                    = auditdb.search_keys_version(), false)
      from pg_inherits i
      join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'auditdb.log'::regclass
       and c.relname ~ '^log_[0-9]{4}_[0-9]{2}$'
       and (to_date(substr(c.relname, 5), 'YYYY_MM')::timestamp + interval '1 month') at time zone 'UTC'
           <= auditdb.month_start(0)
     order by c.relname desc
$$;

comment on function auditdb.closed_months() is 'auditdb: the months that have closed, newest first, and which have their search index';

-- Give the newest closed month that has none (or one of another version of the keys) its search
-- index (<month>_search); returns its name, or null when none is due. A month that is busy
-- (another build, or a transaction writing late entries into it) is passed over until next time.
-- One month per call and per transaction: a build holds off late entries of that month only.
-- definer: indexes one of auditdb's own partitions, chosen from the catalog; no argument.
create or replace function auditdb.index_closed_month() returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set lock_timeout = '2s'
as $$
declare
    month text;
    began boolean := false;
begin
    perform auditdb.require_admin_here('auditdb.index_closed_month');
    for month in select m.partition_name from auditdb.closed_months() m where not m.indexed loop
        begin
            -- Self-conflicting, so two builders never race; no other role may lock the log.
            execute format('lock table auditdb.%I in share row exclusive mode', month);
        exception when lock_not_available then
            continue;  -- busy: the next one, and this one next time
        end;
        if exists (select from auditdb.closed_months() m where m.partition_name = month and m.indexed) then
            continue;  -- built by the builder this one waited for
        end if;
        if not auditdb.in_maintenance() then
            perform auditdb.begin_maintenance();
            began := true;
        end if;
        -- One built with another version of the keys is rebuilt.
        execute format('drop index if exists auditdb.%I', month || '_search');
        execute format('create index %I on auditdb.%I using gin '
                       '(auditdb.search_keys(tenant_id, entity_name, entity_id, actor_email))', month || '_search', month);
        execute format('comment on index auditdb.%I is %L', month || '_search', auditdb.search_keys_version());
        -- Statistics of the new expression, so the planner weighs the index.
        execute format('analyze auditdb.%I', month);
        if began then
            perform auditdb.end_maintenance();
        end if;
        return month || '_search';
    end loop;
    return null;
end
$$;

comment on function auditdb.index_closed_month() is 'auditdb: build one closed month''s search index';

-- The candidates of auditdb.search_log: every match of each month read, newest month first,
-- until the months read gave max_rows (the default partition is always read: its entries may be of
-- any time), so they include the newest max_rows matches; auditdb.search_log keeps those.
-- definer: reads auditdb.log within the session user's read scope (as auditdb.log_export), by quoted filters.
create or replace function auditdb.search_log_months(filters jsonb, before_id bigint, max_rows integer)
returns setof auditdb.log
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
-- Times in the filters are read as auditdb.filter_sql reads them.
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
#variable_conflict use_variable
declare
    sees_all boolean := auditdb.reader_sees_all();
    tenants text[];
    search text := filters->>'search';
    scope text;
    clause text;
    bound text := '';
    older_at timestamptz;
    part record;
    key_tenants text[];
    keys text;
    wanted bigint := max_rows;
    got bigint;
begin
    if max_rows is null or max_rows < 1 or max_rows > 100000 then
        raise exception 'auditdb.search_log: max_rows must be between 1 and 100000' using errcode = 'invalid_parameter_value';
    end if;
    if octet_length(filters::text) > 16384 then
        raise exception 'auditdb.search_log: filters are % bytes, at most 16 kB are allowed', octet_length(filters::text)
            using errcode = 'program_limit_exceeded';
    end if;
    clause := auditdb.filter_sql(filters);
    if not sees_all then
        tenants := auditdb.reader_tenants();
        if cardinality(tenants) = 0 then
            return;
        end if;
        scope := format('l.tenant_id = any(%L::text[])', tenants);
    else
        scope := 'true';
    end if;
    if before_id is not null then
        select b.occurred_at into older_at from auditdb.log b
         where b.id = before_id and (sees_all or b.tenant_id = any(tenants));
        if not found then
            return;
        end if;
        bound := format(' and l.occurred_at <= %L::timestamptz and (l.occurred_at, l.id) < (%L::timestamptz, %s)',
                        older_at, older_at, before_id);
    end if;
    -- Whose keys to look up: the tenant asked for, else the reader's, else (an admin who sees all)
    -- each tenant the month holds (found by its tenant index) and entries without one.
    if filters->>'tenant' is not null then
        if not sees_all and not (filters->>'tenant' = any(tenants)) then
            return;  -- a tenant outside the reader's: nothing to look up, not even its keys
        end if;
        key_tenants := array[filters->>'tenant'];
    elsif not sees_all then
        key_tenants := tenants;
    end if;
    for part in
        select c.relname::text as name, m.indexed
          from pg_inherits i
          join pg_class c on c.oid = i.inhrelid
          left join auditdb.closed_months() m on m.partition_name = c.relname
         where i.inhparent = 'auditdb.log'::regclass
           and (c.relname !~ '^log_[0-9]{4}_[0-9]{2}$'
                or ((filters->>'since' is null
                     or (to_date(substr(c.relname, 5), 'YYYY_MM')::timestamp + interval '1 month') at time zone 'UTC'
                        > (filters->>'since')::timestamptz)
                    and (filters->>'until' is null
                         or to_date(substr(c.relname, 5), 'YYYY_MM')::timestamp at time zone 'UTC'
                            < (filters->>'until')::timestamptz)
                    and (older_at is null or to_date(substr(c.relname, 5), 'YYYY_MM')::timestamp at time zone 'UTC'
                                           <= older_at)))
         order by c.relname ~ '^log_[0-9]{4}_[0-9]{2}$', c.relname desc
    loop
        keys := 'true';
        if coalesce(part.indexed, false) and length(lower(coalesce(search, ''))) >= 3 then
            if key_tenants is null then
                execute format($q$
                    with recursive t(v) as (
                        select min(tenant_id) from auditdb.%1$I where tenant_id is not null
                        union all
                        select (select min(tenant_id) from auditdb.%1$I where tenant_id > t.v) from t where t.v is not null)
                    select array(select v from t where v is not null limit 257) || array[null::text]$q$, part.name)
                   into key_tenants;
                if cardinality(key_tenants) > 257 then
                    key_tenants := null;  -- too many tenants to look up one by one: read the month
                end if;
            end if;
            if key_tenants is not null then
                select '(' || string_agg(auditdb.search_text_condition(k, search), ' or ') || ')'
                  into keys
                  from unnest(key_tenants) k;
            end if;
            if filters->>'tenant' is null and sees_all then
                key_tenants := null;  -- each month has its own tenants
            end if;
        end if;
        return query execute format('select * from auditdb.%I l where %s and %s and (%s)%s '
                                    'order by l.occurred_at desc, l.id desc limit %s',
                                    part.name, keys, scope, clause, bound, wanted);
        get diagnostics got = row_count;
        -- Months are disjoint and read newest first: once they gave max_rows, older ones cannot
        -- hold any of the newest max_rows.
        if part.name ~ '^log_[0-9]{4}_[0-9]{2}$' then
            wanted := wanted - got;
            exit when wanted <= 0;
        end if;
    end loop;
end
$$;

comment on function auditdb.search_log_months(jsonb, bigint, integer) is 'auditdb: candidates of auditdb.search_log';

-- Up to max_rows entries matching the filters (as auditdb.filter_sql reads them, with 'search'),
-- older than entry before_id when given, newest first: what row-level security would show the
-- login, found through the closed months' search indexes.
create or replace function auditdb.search_log(filters jsonb, before_id bigint default null, max_rows integer default 50)
returns setof auditdb.log
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if max_rows is null or max_rows < 1 or max_rows > 100000 then
        raise exception 'auditdb.search_log: max_rows must be between 1 and 100000' using errcode = 'invalid_parameter_value';
    end if;
    return query select * from auditdb.search_log_months(filters, before_id, max_rows) l
                  order by l.occurred_at desc, l.id desc limit max_rows;
end
$$;

comment on function auditdb.search_log(jsonb, bigint, integer) is 'auditdb: entries matching filters with search text, within the reader''s scope';

reset role;
