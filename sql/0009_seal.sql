-- Revision 0009: seals, a hash chain over the log (issue 17).
--
-- auditdb.seal holds one row per seal: the range of entry ids it covers (after the previous
-- seal's upto_id, up to its own), how many entries and the SHA-256 over their digests in id
-- order, the bound no later entry may be dated before (floor_at), and its own SHA-256 over all of
-- that and the previous seal's hash. auditdb.seal_state holds the range the next seal will cover
-- once every transaction that could still commit an entry in it has ended. Both are auditdb's
-- own (auditdb_owner writes them; seals are append-only, definitions/guard.sql).
--
-- auditdb_owner is given pg_read_all_stats: to bound the time of entries still to come, the
-- sealer reads when each transaction holding a transaction id began, whoever runs it.
set local role auditdb_owner;

create table auditdb.seal (
    -- 1, 2, 3, … without gaps
    seal_id bigint primary key,
    -- when the seal was made
    sealed_at timestamptz not null,
    -- the canonical form of entries and seals it hashes (1: auditdb.entry_digest)
    format smallint not null,
    -- it covers the entries with prev_upto_id < id <= upto_id
    prev_upto_id bigint not null,
    upto_id bigint not null,
    entry_count bigint not null,
    -- SHA-256 over the covered entries' digests (32 bytes each), in id order
    entries_sha256 bytea not null,
    -- no entry with an id above upto_id may be dated before this (-infinity: no bound known)
    floor_at timestamptz not null,
    -- the previous seal's seal_sha256 (null for the first)
    prev_sha256 bytea,
    -- SHA-256 over this seal's canonical form (auditdb.seal_digest)
    seal_sha256 bytea not null
);

comment on table auditdb.seal is 'auditdb: seals, a hash chain over the log''s entries (auditdb verify)';

create table auditdb.seal_state (
    singleton boolean primary key default true check (singleton),
    -- the next seal's upto_id once the transactions below have ended
    pending_upto bigint,
    -- the transactions running when pending_upto was read (virtual ids), the xmax of that moment
    pending_vxids text[],
    pending_xmax xid8,
    pending_at timestamptz,
    -- the bound for entries above pending_upto
    pending_floor timestamptz
);

insert into auditdb.seal_state default values;

comment on table auditdb.seal_state is 'auditdb: what the next seal will cover (auditdb.seal)';

reset role;

grant pg_read_all_stats to auditdb_owner;
