-- Seals: a hash chain over the log, made off the write path (the worker, `auditdb seal`) and
-- checked from outside by `auditdb verify`, which recomputes every hash in Python from the
-- entries' values (never trusting the server's hash functions).
--
-- Canonical form 1. An entry's digest is SHA-256 of the UTF-8 bytes of
--     'auditdb-entry-v1' LF field(id) field(occurred_at) field(txid) field(action) …
-- over the columns in ENTRY_COLUMNS order (auditdb/seal.py names the same list), each field
-- 'N' for null or 'S' <byte length> ':' <text>, the text being what the column's type prints
-- (its output function, never a cast a superuser could redefine), with TimeZone UTC and DateStyle
-- ISO: occurred_at '2026-11-30 05:40:12.123456+00' (' BC' and 'infinity' included), ip as inet
-- prints it, changes and metadata as jsonb prints them. It depends on values only, never on where
-- rows lie: dump and restore, pg_upgrade and VACUUM FULL keep it. A seal's digest is SHA-256 of
-- 'auditdb-seal-v1' LF and the fields seal_id, sealed_at, format, prev_upto_id, upto_id,
-- entry_count, entries_sha256 (hex), floor_at, prev_sha256 (hex) in the same encoding.
--
-- An entry is sealed only once no transaction that could still commit an entry at or below the
-- seal's upto_id is running: ids are taken before commit, so id order is not commit order. Every
-- transaction that took an id holds a lock on auditdb.log_id_seq until it ends (nextval takes it
-- for the whole transaction, before it reads the sequence). So the sealer reads the sequence,
-- then notes the transactions holding that lock (their virtual transaction ids); the range is
-- sealed at a later call once none of them holds it any more, and no prepared transaction holds
-- it (a transaction that prepares moves its locks to another virtual id). Transactions that
-- never took an id -- an idle session, another database's work -- hold nothing back.
--
-- It also notes the earliest time an entry above that id may carry (floor_at): the earliest of
-- now less a second (clocks of two backends), the bound for the events of transactions holding
-- the event queue's id sequence (revision 0010: from pg_locks; see the note below) and the
-- queued events' emit times, read in that order before the sequence. Captured entries are dated
-- when written, after their id is taken. Dead-lettered events do not count: one logged later is
-- logged late, which is what a backdated entry is.
set local role auditdb_owner;

-- One field of the canonical form.
create or replace function auditdb.canonical_field(value text) returns text
language sql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when value is null then 'N'
                else 'S' || pg_catalog.octet_length(pg_catalog.convert_to(value, 'UTF8')) || ':' || value end
$$;

comment on function auditdb.canonical_field(text) is 'auditdb: one field of the canonical form seals hash';

-- A value as its type's output function prints it (format's %s calls it; a cast to text could be
-- one a superuser defined); null stays null.
create or replace function auditdb.printed(value anyelement) returns text
language sql
stable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when value is null then null else pg_catalog.format('%s', value) end
$$;

comment on function auditdb.printed(anyelement) is 'auditdb: a value as its type prints it';

-- The SQL expression of an entry's digest (canonical form 1) over a row aliased l, written out
-- column by column: auditdb.seal runs it over each range as one query. (Functions called per row
-- with SET clauses, as every auditdb function has, cost a settings change per call: sealing ran
-- at 4,300 entries a second that way.) It is evaluated under TimeZone UTC and DateStyle ISO.
create or replace function auditdb.entry_digest_sql() returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select 'pg_catalog.sha256(pg_catalog.convert_to(''auditdb-entry-v1'' || pg_catalog.chr(10) || '
           || string_agg(format('(case when l.%1$I is null then ''N'' else ''S'' '
                                || '|| pg_catalog.octet_length(pg_catalog.convert_to(pg_catalog.format(''%%s'', l.%1$I), ''UTF8'')) '
                                || '|| '':'' || pg_catalog.format(''%%s'', l.%1$I) end)', c), ' || ' order by o)
           || ', ''UTF8''))'
      from unnest(array['id', 'occurred_at', 'txid', 'action', 'entity_type', 'entity_id', 'entity_name', 'project_id',
                        'tenant_id', 'actor_id', 'actor_email', 'actor_name', 'ip', 'user_agent', 'db_user',
                        'table_name', 'changes', 'metadata']) with ordinality as t(c, o)
$$;

comment on function auditdb.entry_digest_sql() is 'auditdb: the SQL of an entry''s digest in canonical form 1';

-- One entry's digest (canonical form 1). auditdb/seal.py computes the same from the same texts.
create or replace function auditdb.entry_digest(l auditdb.log) returns bytea
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
declare
    digest bytea;
begin
    execute format('select %s from (select ($1).*) l', auditdb.entry_digest_sql()) into digest using l;
    return digest;
end
$$;

comment on function auditdb.entry_digest(auditdb.log) is 'auditdb: an entry''s SHA-256 in canonical form 1';

-- A seal's digest (canonical form 1).
create or replace function auditdb.seal_digest(seal_id bigint, sealed_at timestamptz, format smallint,
                                               prev_upto_id bigint, upto_id bigint, entry_count bigint,
                                               entries_sha256 bytea, floor_at timestamptz, prev_sha256 bytea)
returns bytea
language sql
stable
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
    select sha256(convert_to('auditdb-seal-v1' || chr(10)
        || auditdb.canonical_field(auditdb.printed(seal_id))
        || auditdb.canonical_field(auditdb.printed(sealed_at))
        || auditdb.canonical_field(auditdb.printed(format))
        || auditdb.canonical_field(auditdb.printed(prev_upto_id))
        || auditdb.canonical_field(auditdb.printed(upto_id))
        || auditdb.canonical_field(auditdb.printed(entry_count))
        || auditdb.canonical_field(encode(entries_sha256, 'hex'))
        || auditdb.canonical_field(auditdb.printed(floor_at))
        || auditdb.canonical_field(encode(prev_sha256, 'hex')), 'UTF8'))
$$;

comment on function auditdb.seal_digest(bigint, timestamptz, smallint, bigint, bigint, bigint, bytea, timestamptz, bytea)
    is 'auditdb: a seal''s SHA-256 in canonical form 1';

-- Seal what can be sealed: at most one seal of at most max_entries entries per call; then note
-- the next range when none is waiting. Returns the entries sealed (0 when the range still waits
-- for a transaction, or nothing new was written).
-- definer: reads the log, the queue and pg_locks, writes auditdb.seal and seal_state; an integer argument.
create or replace function auditdb.seal(max_entries integer default 100000) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
as $$
declare
    st auditdb.seal_state;
    last_seal auditdb.seal;
    prev_upto bigint := 0;
    prev_floor timestamptz := '-infinity';
    next_id bigint := 1;
    upto bigint;
    n bigint := 0;
    digest bytea;
    bound timestamptz;
    sealed_at timestamptz;
    ready boolean := false;
    read_at timestamptz;
    seq_last bigint;
    seq_called boolean;
    floor_value timestamptz;
    seq_oid oid := 'auditdb.log_id_seq'::regclass;
    queue_seq oid := pg_get_serial_sequence('auditdb.event_queue', 'id')::regclass;
    emitters text[];
    seq_db oid := (select d.oid from pg_database d where d.datname = current_database());
begin
    perform auditdb.require_admin_here('auditdb.seal');
    -- Each statement below must see what has committed by the time it runs.
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'auditdb.seal runs in a READ COMMITTED transaction, not %', current_setting('transaction_isolation')
            using errcode = 'invalid_transaction_state';
    end if;
    if max_entries is null or max_entries < 1 or max_entries > 1000000 then
        raise exception 'auditdb.seal: max_entries must be between 1 and 1000000' using errcode = 'invalid_parameter_value';
    end if;
    select * into st from auditdb.seal_state where singleton for update;
    if not found then
        raise exception 'auditdb.seal: auditdb.seal_state has no row; run `auditdb install`' using errcode = 'object_not_in_prerequisite_state';
    end if;
    sealed_at := clock_timestamp();  -- after the lock: seals are made one at a time, in time order
    select * into last_seal from auditdb.seal order by seal_id desc limit 1;
    if found then
        prev_upto := last_seal.upto_id;
        prev_floor := last_seal.floor_at;
        next_id := last_seal.seal_id + 1;
    end if;

    if st.pending_xmax is not null and st.pending_xmax > pg_snapshot_xmax(pg_current_snapshot()) then
        st.pending_upto := null;  -- noted in another cluster (a restored dump): note again
    end if;
    if st.pending_upto is not null and st.pending_upto > prev_upto then
        ready := not exists (select from pg_locks k
                              where k.locktype = 'relation' and k.database = seq_db and k.relation = seq_oid
                                and (k.virtualtransaction = any(st.pending_vxids) or k.pid is null));
    end if;
    if ready then
        execute format('select count(*), max(e.id), sha256(coalesce(string_agg(e.digest, %1$L::bytea order by e.id), %1$L::bytea))
                          from (select l.id, %2$s as digest from auditdb.log l
                                 where l.id > $1 and l.id <= $2 order by l.id limit $3) e', '', auditdb.entry_digest_sql())
           into n, upto, digest
          using prev_upto, st.pending_upto, max_entries;
        if n < max_entries or upto = st.pending_upto then
            upto := st.pending_upto;  -- the whole range, ids no entry kept included
            bound := greatest(prev_floor, st.pending_floor);
        else
            bound := prev_floor;  -- part of the range: its bound holds above pending_upto only
        end if;
        insert into auditdb.seal (seal_id, sealed_at, format, prev_upto_id, upto_id, entry_count, entries_sha256,
                                  floor_at, prev_sha256, seal_sha256)
        values (next_id, sealed_at, 1, prev_upto, upto, n, digest, bound, last_seal.seal_sha256,
                auditdb.seal_digest(next_id, sealed_at, 1::smallint, prev_upto, upto, n, digest, bound, last_seal.seal_sha256));
        if upto < st.pending_upto then
            return n;  -- the rest of the range next time
        end if;
        prev_upto := upto;
        prev_floor := bound;
    elsif st.pending_upto is not null and st.pending_upto > prev_upto then
        return 0;  -- still waiting for a transaction
    end if;

    -- Note the next range: the time and the bound first, then the sequence, then who is running
    -- (any of them may hold an id at or below what the sequence says; none that starts later can).
    -- The bound: an event is dated when emit queued it, after its transaction took the queue's id
    -- sequence, which it holds to its end. So the events still to be logged are: those queued and
    -- committed (read from the queue after the holders, so none slips between the two reads), and
    -- those of the transactions holding the sequence now. Of these, one not holding it at the last
    -- note began emitting after that note was taken; one holding it then is bounded by the bound
    -- noted then. A prepared transaction (its locks under another virtual id) keeps the last seal's.
    read_at := clock_timestamp();
    emitters := array(select distinct k.virtualtransaction from pg_locks k
                       where k.locktype = 'relation' and k.database = seq_db and k.relation = queue_seq);
    if exists (select from pg_locks k
                where k.locktype = 'relation' and k.database = seq_db and k.relation = queue_seq and k.pid is null)
       or (st.pending_emitters is null and cardinality(emitters) > 0) then
        -- a prepared emitter, or emitters and no note of who emitted before (a first note)
        floor_value := prev_floor;
    else
        floor_value := read_at - interval '1 second';  -- clocks of two backends
        if emitters && st.pending_emitters then
            floor_value := least(floor_value, coalesce(st.pending_floor, '-infinity'));
        end if;
        if exists (select from unnest(emitters) e(v) where not (e.v = any(st.pending_emitters))) then
            floor_value := least(floor_value, st.pending_at - interval '1 second');  -- new since the last note
        end if;
        -- A new statement, a new snapshot: an event a holder above committed is seen now.
        floor_value := least(floor_value, (select min(q.emitted_at) from auditdb.event_queue q));
        floor_value := greatest(prev_floor, floor_value);
    end if;
    select s.last_value, s.is_called into seq_last, seq_called from auditdb.log_id_seq s;
    update auditdb.seal_state
       set pending_upto = case when seq_called then seq_last else 0 end,
           pending_vxids = array(select distinct k.virtualtransaction from pg_locks k
                                  where k.locktype = 'relation' and k.database = seq_db and k.relation = seq_oid
                                    and k.pid is distinct from pg_backend_pid()),
           pending_xmax = pg_snapshot_xmax(pg_current_snapshot()),
           pending_at = read_at,
           pending_floor = floor_value,
           pending_emitters = emitters
     where singleton;
    return n;
end
$$;

comment on function auditdb.seal(integer) is 'auditdb: seal the entries no running transaction can add to';

-- How far sealing has come, for `doctor`: the newest seal, how long ago it was made, the newest
-- id handed out, and the transactions the next seal waits for.
-- definer: reads auditdb's sealing state and the id sequence; no argument.
create or replace function auditdb.seal_status(out seal_id bigint, out upto_id bigint, out age_seconds bigint,
                                               out newest_id bigint, out waiting_for text[])
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.seal_id, s.upto_id, extract(epoch from clock_timestamp() - s.sealed_at)::bigint,
           (select case when q.is_called then q.last_value else 0 end from auditdb.log_id_seq q),
           (select st.pending_vxids from auditdb.seal_state st)
      from (select auditdb.is_admin_here() as admin) one
      left join auditdb.seal s on s.seal_id = (select max(m.seal_id) from auditdb.seal m)
     where one.admin
$$;

comment on function auditdb.seal_status() is 'auditdb: how far sealing has come (doctor)';

reset role;
