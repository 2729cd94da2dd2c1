-- What is in or on schema auditdb that auditdb did not make. auditdb/integrity.py runs it with
-- psycopg: percent signs are doubled, parameters are named (known, fresh, grantees, log_defaults).
with known(name) as (select unnest(%(known)s::text[])),
ours as (
    select p.oid from pg_catalog.pg_proc p
     where p.pronamespace = 'auditdb'::regnamespace
       and (p.proname in (select name from known)
            or (p.proname like 'auditdb\_capture\_%%' and p.pronargs = 0
                and p.prorettype = 'trigger'::regtype
                and p.proowner = (select oid from pg_catalog.pg_roles where rolname = 'auditdb_capture')))
),
rels as (select c.oid, c.relkind from pg_catalog.pg_class c where c.relnamespace = 'auditdb'::regnamespace),
-- Objects in the schema that depend on foreign code.
foreign_code(classid, objid, objsubid) as (
    select d.classid, d.objid, d.objsubid from pg_catalog.pg_depend d
     where (d.refclassid = 'pg_catalog.pg_proc'::regclass
            and d.refobjid not in (select oid from ours)
            and (select pronamespace from pg_catalog.pg_proc where oid = d.refobjid) <> 'pg_catalog'::regnamespace)
        or (d.refclassid = 'pg_catalog.pg_operator'::regclass
            and (select oprnamespace from pg_catalog.pg_operator where oid = d.refobjid) <> 'pg_catalog'::regnamespace)
        or (d.refclassid = 'pg_catalog.pg_type'::regclass
            and (select typnamespace from pg_catalog.pg_type where oid = d.refobjid)
                not in ('pg_catalog'::regnamespace, 'auditdb'::regnamespace))
)
-- Functions: auditdb's own (by name; a second one of a name is an overload someone added, which
-- a call could pick), and the generated capture functions.
select 'function', p.oid::regprocedure::text,
       pg_catalog.format('drop %%s %%s', case p.prokind when 'a' then 'aggregate' when 'p' then 'procedure' else 'function' end,
                         p.oid::regprocedure)
  from pg_catalog.pg_proc p
 where p.pronamespace = 'auditdb'::regnamespace
   and (p.oid not in (select oid from ours)
        or (p.proname in (select name from known) and p.oid::text::bigint <> (
                select min(q.oid::text::bigint) from pg_catalog.pg_proc q
                 where q.pronamespace = 'auditdb'::regnamespace and q.proname = p.proname
                   and (%(fresh)s::oid[] is null or q.oid = any(%(fresh)s::oid[])))))
union all
select 'function owner', p.oid::regprocedure::text,
       pg_catalog.format('alter function %%s owner to auditdb_owner', p.oid::regprocedure)
  from pg_catalog.pg_proc p join pg_catalog.pg_roles r on r.oid = p.proowner
 where p.pronamespace = 'auditdb'::regnamespace and p.oid in (select oid from ours)
   and r.rolname not in ('auditdb_owner', 'auditdb_capture') and not r.rolsuper
union all
select 'table owner', c.oid::regclass::text, pg_catalog.format('alter table %%s owner to auditdb_owner', c.oid::regclass)
  from pg_catalog.pg_class c
 where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and c.relowner <> 'auditdb_owner'::regrole
   and not (c.oid = 'auditdb.alembic_version'::regclass
            and (select r.rolsuper from pg_catalog.pg_roles r where r.oid = c.relowner))
union all
select 'policy', pg_catalog.format('%%I on %%s', pol.polname, pol.polrelid::regclass),
       pg_catalog.format('drop policy %%I on %%s', pol.polname, pol.polrelid::regclass)
  from pg_catalog.pg_policy pol join pg_catalog.pg_class c on c.oid = pol.polrelid
 where c.relnamespace = 'auditdb'::regnamespace
   and not (pol.polname in ('log_admin_read', 'log_viewer_read')
            and (c.oid = 'auditdb.log'::regclass or c.relispartition))
   and not (pol.polname = 'log_capture_append' and c.oid = 'auditdb.log'::regclass)
   and not (pol.polname = 'capture_read' and c.relname = 'tracked_tables')
   and not (pol.polname = 'admin_read' and c.relname in ('tracked_tables', 'event_queue', 'event_dead_letter',
            'worker_heartbeat', 'tenant_roles', 'tenant_from_context_roles', 'admin_roles', 'partition_archive'))
union all
select 'rule', pg_catalog.format('%%I on %%s', rw.rulename, rw.ev_class::regclass),
       pg_catalog.format('drop rule %%I on %%s', rw.rulename, rw.ev_class::regclass)
  from pg_catalog.pg_rewrite rw
 where rw.ev_class in (select oid from rels) and rw.rulename <> '_RETURN'
union all
select 'trigger', pg_catalog.format('%%I on %%s', t.tgname, t.tgrelid::regclass),
       pg_catalog.format('drop trigger %%I on %%s', t.tgname, t.tgrelid::regclass)
  from pg_catalog.pg_trigger t
 where t.tgrelid in (select oid from rels) and not t.tgisinternal
   and not (t.tgname in ('log_append_only', 'log_insert_guard')
            and t.tgfoid = (select oid from pg_catalog.pg_proc
                             where pronamespace = 'auditdb'::regnamespace and proname = 'refuse_log_change'))
   and not ((t.tgrelid, t.tgname) in ((pg_catalog.to_regclass('auditdb.seal'), 'seal_append_only'),
                                      (pg_catalog.to_regclass('auditdb.seal'), 'seal_insert_guard'),
                                      (pg_catalog.to_regclass('auditdb.seal_state'), 'seal_state_guard'))
            and t.tgfoid = (select oid from pg_catalog.pg_proc
                             where pronamespace = 'auditdb'::regnamespace and proname = 'refuse_seal_change'))
union all
select 'index', i.indexrelid::regclass::text, pg_catalog.format('drop index %%s', i.indexrelid::regclass)
  from pg_catalog.pg_index i
 where i.indrelid in (select oid from rels)
   and i.indexrelid in (select objid from foreign_code where classid = 'pg_catalog.pg_class'::regclass)
union all
select 'constraint', pg_catalog.format('%%I on %%s', con.conname, con.conrelid::regclass),
       pg_catalog.format('alter table %%s drop constraint %%I', con.conrelid::regclass, con.conname)
  from pg_catalog.pg_constraint con
 where con.conrelid in (select oid from rels)
   and con.oid in (select objid from foreign_code where classid = 'pg_catalog.pg_constraint'::regclass)
union all
select 'statistics', s.oid::regclass::text, pg_catalog.format('drop statistics %%I.%%I', n.nspname, s.stxname)
  from pg_catalog.pg_statistic_ext s join pg_catalog.pg_namespace n on n.oid = s.stxnamespace
 where s.stxrelid in (select oid from rels) and s.stxexprs is not null
union all
-- A default or generated column calling foreign code, and the values an entry's author never
-- chooses, which are the log's own.
select 'column default', pg_catalog.format('%%s.%%I', ad.adrelid::regclass, a.attname),
       case when a.attgenerated <> '' then pg_catalog.format('alter table %%s drop column %%I', ad.adrelid::regclass, a.attname)
            else pg_catalog.format('alter table %%s alter column %%I drop default', ad.adrelid::regclass, a.attname) end
  from pg_catalog.pg_attrdef ad join pg_catalog.pg_attribute a on a.attrelid = ad.adrelid and a.attnum = ad.adnum
 where ad.adrelid in (select oid from rels)
   and ad.oid in (select objid from foreign_code where classid = 'pg_catalog.pg_attrdef'::regclass)
union all
select 'column default', pg_catalog.format('auditdb.log.%%I', d.col),
       pg_catalog.format('alter table auditdb.log alter column %%I set default %%s', d.col, d.expected)
  from (values ('id', 'nextval(''auditdb.log_id_seq''::regclass)'), ('occurred_at', 'clock_timestamp()'),
               ('txid', 'txid_current()'), ('db_user', 'SESSION_USER'), ('metadata', '''{}''::jsonb')) d(col, expected)
  join pg_catalog.pg_attribute a on a.attrelid = 'auditdb.log'::regclass and a.attname = d.col
  left join pg_catalog.pg_attrdef ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
 where pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) is distinct from d.expected
   and %(log_defaults)s
union all
-- Objects of auditdb's roles outside the schema (a definer function they own runs with their rights).
select 'object elsewhere', pg_catalog.pg_describe_object(sd.classid, sd.objid, sd.objsubid),
       case when sd.classid = 'pg_catalog.pg_proc'::regclass
            then pg_catalog.format('drop function %%s', sd.objid::regprocedure)
            else pg_catalog.format('-- remove by hand: %%s', pg_catalog.pg_describe_object(sd.classid, sd.objid, sd.objsubid))
       end
  from pg_catalog.pg_shdepend sd
  join pg_catalog.pg_roles r on r.oid = sd.refobjid
 where sd.dbid = (select oid from pg_catalog.pg_database where datname = pg_catalog.current_database())
   and sd.deptype = 'o' and r.rolname in ('auditdb_owner', 'auditdb_capture')
   and not (sd.classid = 'pg_catalog.pg_proc'::regclass
            and (select pronamespace from pg_catalog.pg_proc where oid = sd.objid) = 'auditdb'::regnamespace)
   and not (sd.classid in ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_type'::regclass)
            and coalesce((select relnamespace from pg_catalog.pg_class where oid = sd.objid),
                         (select typnamespace from pg_catalog.pg_type where oid = sd.objid)) = 'auditdb'::regnamespace)
   and not (sd.classid = 'pg_catalog.pg_namespace'::regclass and sd.objid = 'auditdb'::regnamespace)
   and not (sd.classid = 'pg_catalog.pg_default_acl'::regclass)
   and not (sd.classid in ('pg_catalog.pg_policy'::regclass, 'pg_catalog.pg_statistic_ext'::regclass))
union all
select 'default privilege', pg_catalog.format('of %%s on %%s to %%s', da.defaclrole::regrole,
                                              case da.defaclobjtype when 'r' then 'tables' when 'f' then 'functions'
                                                   when 'S' then 'sequences' when 'T' then 'types' else 'schemas' end,
                                              coalesce(nullif(a.grantee, 0)::regrole::text, 'public')),
       pg_catalog.format('alter default privileges for role %%s%%s revoke all on %%s from %%s', da.defaclrole::regrole,
                         case when da.defaclnamespace = 0 then '' else ' in schema ' || da.defaclnamespace::regnamespace::text end,
                         case da.defaclobjtype when 'r' then 'tables' when 'f' then 'functions'
                              when 'S' then 'sequences' when 'T' then 'types' else 'schemas' end,
                         coalesce(nullif(a.grantee, 0)::regrole::text, 'public'))
  from pg_catalog.pg_default_acl da cross join lateral pg_catalog.aclexplode(da.defaclacl) a
 where da.defaclrole::regrole::text in ('auditdb_owner', 'auditdb_capture') and a.grantee <> da.defaclrole
union all
-- Privileges: only auditdb's roles hold any on its objects (sql/definitions/grants.sql says which).
select distinct 'privilege', pg_catalog.format('%%s on %%s', coalesce(nullif(a.grantee, 0)::regrole::text, 'public'), c.oid::regclass),
       pg_catalog.format('revoke all on %%s %%s from %%s', case c.relkind when 'S' then 'sequence' else 'table' end,
                         c.oid::regclass, coalesce(nullif(a.grantee, 0)::regrole::text, 'public'))
  from pg_catalog.pg_class c cross join lateral pg_catalog.aclexplode(c.relacl) a
 where c.relnamespace = 'auditdb'::regnamespace and a.grantee <> c.relowner
   and coalesce(nullif(a.grantee, 0)::regrole::text, 'public') not in (select unnest(%(grantees)s::text[]))
union all
select distinct 'privilege',
       pg_catalog.format('%%s on function %%s', coalesce(nullif(a.grantee, 0)::regrole::text, 'public'), p.oid::regprocedure),
       pg_catalog.format('revoke all on function %%s from %%s', p.oid::regprocedure,
                         coalesce(nullif(a.grantee, 0)::regrole::text, 'public'))
  from pg_catalog.pg_proc p cross join lateral pg_catalog.aclexplode(p.proacl) a
 where p.pronamespace = 'auditdb'::regnamespace and a.grantee <> p.proowner
   and coalesce(nullif(a.grantee, 0)::regrole::text, 'public') not in (select unnest(%(grantees)s::text[]))
union all
-- On the schema, auditdb's roles hold USAGE and nothing else; others nothing.
select distinct 'privilege', pg_catalog.format('%%s %%s on schema auditdb', coalesce(nullif(a.grantee, 0)::regrole::text, 'public'),
                                      a.privilege_type),
       pg_catalog.format('revoke %%s on schema auditdb from %%s', a.privilege_type,
                         coalesce(nullif(a.grantee, 0)::regrole::text, 'public'))
  from pg_catalog.pg_namespace n cross join lateral pg_catalog.aclexplode(n.nspacl) a
 where n.nspname = 'auditdb' and a.grantee <> n.nspowner
   and (coalesce(nullif(a.grantee, 0)::regrole::text, 'public') not in (select unnest(%(grantees)s::text[]))
        or a.privilege_type <> 'USAGE')
union all
-- Column privileges: none, to anyone (auditdb grants whole tables, and one column set to capture).
select distinct 'privilege', pg_catalog.format('%%s on column %%s.%%I', coalesce(nullif(a.grantee, 0)::regrole::text, 'public'),
                                               c.oid::regclass, att.attname),
       pg_catalog.format('revoke all (%%I) on table %%s from %%s', att.attname, c.oid::regclass,
                         coalesce(nullif(a.grantee, 0)::regrole::text, 'public'))
  from pg_catalog.pg_class c join pg_catalog.pg_attribute att on att.attrelid = c.oid
       cross join lateral pg_catalog.aclexplode(att.attacl) a
 where c.relnamespace = 'auditdb'::regnamespace and a.grantee <> c.relowner
   and not ((c.oid = 'auditdb.log'::regclass or c.relispartition)
            and a.grantee = (select oid from pg_catalog.pg_roles where rolname = 'auditdb_capture')
            and a.privilege_type = 'INSERT')
union all
-- Types (auditdb makes none but its tables' row types), columns of other types than built-in
-- ones, views and the like, and tables inheriting from auditdb's (partitions of the log aside).
select case t.typtype when 'd' then 'domain' else 'type' end, t.oid::regtype::text,
       pg_catalog.format('drop %%s %%s', case t.typtype when 'd' then 'domain' else 'type' end, t.oid::regtype)
  from pg_catalog.pg_type t
 where t.typnamespace = 'auditdb'::regnamespace and t.typelem = 0 and t.typtype <> 'm'
   and (t.typrelid = 0 or (select relkind from pg_catalog.pg_class where oid = t.typrelid) = 'c')
union all
select 'column type', pg_catalog.format('%%s.%%I', c.oid::regclass, a.attname),
       pg_catalog.format('-- give %%s.%%I a built-in type (it is %%s)', c.oid::regclass, a.attname, a.atttypid::regtype)
  from pg_catalog.pg_class c join pg_catalog.pg_attribute a on a.attrelid = c.oid
  join pg_catalog.pg_type ty on ty.oid = a.atttypid
 where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
   and a.attnum > 0 and not a.attisdropped and ty.typnamespace <> 'pg_catalog'::regnamespace
union all
select 'relation', c.oid::regclass::text,
       pg_catalog.format('drop %%s %%s', case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                                     else 'foreign table' end, c.oid::regclass)
  from pg_catalog.pg_class c
 where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('v', 'm', 'f')
union all
select 'inheritance', pg_catalog.format('%%s inherits %%s', i.inhrelid::regclass, i.inhparent::regclass),
       case when c.relispartition
            then pg_catalog.format('alter table %%s detach partition %%s', i.inhparent::regclass, i.inhrelid::regclass)
            else pg_catalog.format('alter table %%s no inherit %%s', i.inhrelid::regclass, i.inhparent::regclass) end
  from pg_catalog.pg_inherits i join pg_catalog.pg_class p on p.oid = i.inhparent
  join pg_catalog.pg_class c on c.oid = i.inhrelid
 where p.relnamespace = 'auditdb'::regnamespace and p.relkind in ('r', 'p')
   and not (p.oid = 'auditdb.log'::regclass and c.relispartition)
