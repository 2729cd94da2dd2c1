-- The shape of auditdb's tables, sequences and types, as lines to compare with what a fresh
-- install of this release has (sql/queries/structure.txt). Functions are left out (the
-- definitions rewrite them; foreign_objects.sql judges the rest); the log's monthly partitions
-- are shown as one, log_<month>, so their number does not matter; owners that are superusers
-- show as <superuser>. auditdb/integrity.py runs it with psycopg: percent signs are doubled.
with rels as (
    select c.oid, c.relname::text as relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.reloptions, c.relacl, c.relowner, c.relispartition, c.relpartbound, c.relreplident,
           case when c.relispartition and c.relname::text ~ '^log_[0-9]{4}_[0-9]{2}$'
                     and exists (select from pg_catalog.pg_inherits i
                                  where i.inhrelid = c.oid and i.inhparent = 'auditdb.log'::regclass)
                then 'log_<month>' else c.relname::text end as shown
      from pg_catalog.pg_class c
     where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S', 'c')
),
owner_name(oid, name) as (
    select r.oid, case when r.rolsuper then '<superuser>' else r.rolname::text end from pg_catalog.pg_roles r
)
select 'relation' as kind, r.shown as name,
       pg_catalog.concat_ws(' ', 'kind=' || r.relkind::text, 'persistence=' || r.relpersistence::text,
                            case when r.relrowsecurity then 'rls' end, case when r.relforcerowsecurity then 'force_rls' end,
                            'replica_identity=' || r.relreplident::text,
                            'options=' || r.reloptions::text, 'owner=' || (select name from owner_name where oid = r.relowner),
                            case when r.relispartition
                                 then 'bound=' || case when r.shown = 'log_<month>' then '<month>'
                                                       else pg_catalog.pg_get_expr(r.relpartbound, r.oid) end end) as detail
  from rels r
union
select 'acl', r.shown,
       pg_catalog.concat_ws(' ', case when a.grantee = 0 then 'public' else (select name from owner_name where oid = a.grantee) end,
                            a.privilege_type, case when a.is_grantable then 'grantable' end)
  from rels r cross join lateral pg_catalog.aclexplode(r.relacl) a
 where a.grantee <> r.relowner  -- an owner's own rights vary by version (MAINTAIN, PostgreSQL 17)
union
select 'column', r.shown || '.' || att.attname,
       pg_catalog.concat_ws(' ', pg_catalog.format_type(att.atttypid, att.atttypmod),
                            case when att.attnotnull then 'not null' end,
                            'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                            case when att.attgenerated <> '' then 'generated ' || att.attgenerated::text end,
                            case when att.attidentity <> '' then 'identity ' || att.attidentity::text end,
                            case when att.attcollation <> 0 and att.attcollation <> 'pg_catalog.default'::regcollation
                                 then 'collate ' || att.attcollation::regcollation::text end,
                            case when att.attstorage <> (select typstorage from pg_catalog.pg_type where oid = att.atttypid)
                                 then 'storage ' || att.attstorage::text end)
  from rels r join pg_catalog.pg_attribute att on att.attrelid = r.oid
  left join pg_catalog.pg_attrdef d on d.adrelid = att.attrelid and d.adnum = att.attnum
 where att.attnum > 0 and not att.attisdropped
union
select 'column acl', r.shown || '.' || att.attname,
       pg_catalog.concat_ws(' ', case when a.grantee = 0 then 'public' else (select name from owner_name where oid = a.grantee) end,
                            a.privilege_type)
  from rels r join pg_catalog.pg_attribute att on att.attrelid = r.oid
       cross join lateral pg_catalog.aclexplode(att.attacl) a
 where att.attnum > 0 and not att.attisdropped
union
-- Constraints, not-null ones aside (PostgreSQL 18 lists them; the columns say not null).
select 'constraint', r.shown || '.' || pg_catalog.replace(con.conname::text, r.relname, r.shown),
       pg_catalog.concat_ws(' ', pg_catalog.pg_get_constraintdef(con.oid),
                            case when not con.convalidated then 'not valid' end)
  from rels r join pg_catalog.pg_constraint con on con.conrelid = r.oid
 where con.contype <> 'n'
union
-- A partition's indexes are named by PostgreSQL (with a number when a name was taken): they are
-- known by their definitions.
select 'index', case when r.relispartition then r.shown || '.(index)' else r.shown || '.' || ic.relname::text end,
       pg_catalog.concat_ws(' ', x.def, case when not i.indisvalid then 'invalid' end)
  from rels r join pg_catalog.pg_index i on i.indrelid = r.oid join pg_catalog.pg_class ic on ic.oid = i.indexrelid
       cross join lateral (select pg_catalog.regexp_replace(
                                      pg_catalog.replace(pg_catalog.pg_get_indexdef(i.indexrelid), r.relname, r.shown),
                                      '^CREATE (UNIQUE )?INDEX \S+ ON ', 'CREATE \1INDEX ON ') as def) x
 -- A closed month's search index (auditdb.index_closed_month): a fresh install has no closed month.
-- (One of another version of the keys is rebuilt by the upkeep, and unused until then.)
 where not (r.shown = 'log_<month>' and ic.relname::text = r.relname || '_search' and i.indisvalid
            and x.def = 'CREATE INDEX ON auditdb.log_<month> USING gin (auditdb.search_keys(tenant_id, entity_name, entity_id, actor_email))')
union
select 'trigger', r.shown || '.' || t.tgname,
       pg_catalog.concat_ws(' ', pg_catalog.replace(pg_catalog.pg_get_triggerdef(t.oid), r.relname, r.shown),
                            'enabled=' || t.tgenabled::text)
  from rels r join pg_catalog.pg_trigger t on t.tgrelid = r.oid
 where not t.tgisinternal
union
select 'rule', r.shown || '.' || rw.rulename, rw.ev_type::text
  from rels r join pg_catalog.pg_rewrite rw on rw.ev_class = r.oid
union
select 'policy', r.shown || '.' || pol.polname,
       pg_catalog.concat_ws(' ', pol.polcmd::text, case when pol.polpermissive then 'permissive' else 'restrictive' end,
                            'to ' || (select pg_catalog.string_agg(case when g = 0 then 'public' else (select name from owner_name where oid = g) end, ',' order by 1)
                                        from pg_catalog.unnest(pol.polroles) g),
                            'using ' || pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
                            'check ' || pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid))
  from rels r join pg_catalog.pg_policy pol on pol.polrelid = r.oid
union
select 'sequence', r.shown,
       pg_catalog.concat_ws(' ', s.seqtypid::regtype::text, 'start=' || s.seqstart, 'increment=' || s.seqincrement,
                            'max=' || s.seqmax, 'min=' || s.seqmin, 'cache=' || s.seqcache,
                            case when s.seqcycle then 'cycle' end)
  from rels r join pg_catalog.pg_sequence s on s.seqrelid = r.oid
union
select 'inherits', r.shown, (select p.relname::text from pg_catalog.pg_class p where p.oid = i.inhparent)
  from rels r join pg_catalog.pg_inherits i on i.inhrelid = r.oid
 where r.relkind in ('r', 'p', 'f')
union
select 'type', t.typname::text, t.typtype::text
  from pg_catalog.pg_type t
 where t.typnamespace = 'auditdb'::regnamespace and t.typelem = 0 and t.typtype <> 'm'
   and (t.typrelid = 0 or (select relkind from pg_catalog.pg_class where oid = t.typrelid) = 'c')
union
select 'schema', 'auditdb',
       pg_catalog.concat_ws(' ', 'owner=' || (select name from owner_name where oid = n.nspowner))
  from pg_catalog.pg_namespace n where n.nspname = 'auditdb'
union
select 'schema acl', 'auditdb',
       pg_catalog.concat_ws(' ', case when a.grantee = 0 then 'public' else (select name from owner_name where oid = a.grantee) end,
                            a.privilege_type)
  from pg_catalog.pg_namespace n cross join lateral pg_catalog.aclexplode(n.nspacl) a
 where n.nspname = 'auditdb'
order by 1, 2, 3
