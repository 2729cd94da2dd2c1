-- Revision 0003: the log's indexes, each earning its write cost.
--  * id: entries are appended in id order, so a BRIN index finds one by id (`show`, paging with
--    --before-id) in a few block ranges, at almost no cost per write, instead of a B-tree entry
--    (about 22 bytes and one more index insertion for every entry).
--  * metadata.previous_id: only entries that changed a row's key carry it, so a partial index
--    costs nothing on other writes and lets `auditdb history` follow a key change without
--    reading every entry of the entity type.
-- Building them reads the whole log once and holds off new entries until done.
set local role auditdb_owner;

create index log_id_brin on auditdb.log using brin (id) with (pages_per_range = 32);
drop index auditdb.log_id_idx;
create index log_previous_id_idx on auditdb.log (entity_type, (metadata ->> 'previous_id'))
    where metadata ? 'previous_id';

reset role;
