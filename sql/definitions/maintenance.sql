-- What the DDL watchers and the writers of AUDIT_CHANGED share: auditdb's own maintenance
-- (apply, partition upkeep), the one way to write an AUDIT_CHANGED entry, and two catalog
-- helpers. Maintenance is marked by a row no other role can write, keyed by the transaction, and
-- lasts only as long as the operation that began it: the DDL that auditdb itself runs is logged
-- once by that operation instead of entry by entry, and nothing after it goes unwatched.
set local role auditdb_owner;

-- definer: writes only auditdb.maintenance, from no argument.
create or replace function auditdb.begin_maintenance() returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    delete from auditdb.maintenance where started_at < now() - interval '1 day';
    insert into auditdb.maintenance (txid) values (txid_current()) on conflict do nothing;
$$;

comment on function auditdb.begin_maintenance() is 'auditdb: mark this transaction as auditdb''s own maintenance (until end_maintenance)';

-- definer: deletes only this transaction's row of auditdb.maintenance.
create or replace function auditdb.end_maintenance() returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    delete from auditdb.maintenance where txid = txid_current_if_assigned();
$$;

comment on function auditdb.end_maintenance() is 'auditdb: end the maintenance begun in this transaction';

-- definer: reads only auditdb.maintenance, from no argument.
create or replace function auditdb.in_maintenance() returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select exists (select from auditdb.maintenance where txid = txid_current_if_assigned())
$$;

comment on function auditdb.in_maintenance() is 'auditdb: is auditdb itself changing triggers or partitions in this transaction';

-- Write one AUDIT_CHANGED entry (the only way the watchers, apply and prune write one). The
-- context is read bounded, so an oversized setting can never keep the entry from being written.
-- definer: inserts its text and jsonb arguments into auditdb.log; runs no caller code (builtin types only).
create or replace function auditdb.log_audit_change(entity_type text, entity_id text, entity_name text,
                                                    table_name text, metadata jsonb) returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    insert into auditdb.log (action, entity_type, entity_id, entity_name, table_name, actor_id, actor_email,
                             actor_name, ip, user_agent, tenant_id, project_id, metadata)
    select 'AUDIT_CHANGED', left(entity_type, 256), left(entity_id, 1024), left(entity_name, 1024),
           left(table_name, 1024), c.actor_id, c.actor_email, c.actor_name, c.ip, c.user_agent, c.tenant_id,
           c.project_id,
           metadata || jsonb_strip_nulls(jsonb_build_object('request_id', c.request_id, 'invalid_ip', c.invalid_ip))
      from auditdb.context_values() c
$$;

comment on function auditdb.log_audit_change(text, text, text, text, jsonb) is 'auditdb: write one AUDIT_CHANGED entry';

-- The statement being run, as the watchers record it: every literal, dollar-quoted string, comment
-- and number replaced (a migration that inserts a secret and alters a table in one query string
-- must not put the secret in the log), cut to 4,096 characters.
create or replace function auditdb.redacted_query() returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    result text := '';
    rest text := coalesce(current_query(), '');
    found text[];
    tag text;
    opened integer;
    closed integer;
begin
    -- Dollar-quoted strings first: they may hold anything, quotes and comments included.
    loop
        found := regexp_match(rest, '\$([A-Za-z_][A-Za-z0-9_]*)?\$');
        exit when found is null;
        tag := '$' || coalesce(found[1], '') || '$';
        opened := strpos(rest, tag);
        closed := strpos(substr(rest, opened + length(tag)), tag);
        if closed = 0 then
            result := result || left(rest, opened - 1) || tag || '…';
            rest := '';
            exit;
        end if;
        result := result || left(rest, opened - 1) || tag || '…' || tag;
        rest := substr(rest, opened + length(tag) + closed - 1 + length(tag));
    end loop;
    result := result || rest;
    result := regexp_replace(result, '[EeUu]&?''(?:[^''\\]|\\.|'''')*(''|$)', '''…''', 'g');
    result := regexp_replace(result, '''(?:[^'']|'''')*(''|$)', '''…''', 'g');
    result := regexp_replace(result, '--[^\n]*', '--…', 'g');
    result := regexp_replace(result, '/\*([^*]|\*+[^*/])*(\*+/|$)', '/*…*/', 'g');
    result := regexp_replace(result, '(^|[^A-Za-z0-9_$.])[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?', '\1?', 'g');
    return left(result, 4096);
end
$$;

comment on function auditdb.redacted_query() is 'auditdb: the current statement with its literals, comments and numbers redacted';

-- The roles the login is or belongs to, directly or through others, whatever their INHERIT and
-- SET options: every role whose rights or bindings it could act with. Read from the catalog, not
-- pg_has_role, because being a superuser alone must not count.
create or replace function auditdb.login_roles() returns oid[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with recursive member_of(roleid) as (
        select r.oid from pg_roles r where r.rolname = session_user
        union
        select m.roleid from pg_auth_members m join member_of on m.member = member_of.roleid
    )
    select array_agg(roleid) from member_of
$$;

comment on function auditdb.login_roles() is 'auditdb: the login role and every role it belongs to';

-- Whether session_user is one of roles or a member of one of them.
create or replace function auditdb.is_system_role(roles text[]) returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (select from pg_roles r where r.oid = any(auditdb.login_roles()) and r.rolname = any(roles))
$$;

comment on function auditdb.is_system_role(text[]) is 'auditdb: is the session user one of the system roles (require_actor exemption)';

-- How capture may show a value of type typ without running code that the type's owner controls:
--   'builtin'    a type of PostgreSQL itself (or a domain over one, or an array of such): to_jsonb
--                and its comparison operators are PostgreSQL's own and no role can add casts to them;
--   'text'       any other type (enums, ranges, composites, extension types, and domains over
--                them): shown as the text of the type's output function (format('%s', v)), which
--                neither a cast nor an operator can replace, and compared as that text;
--   'text_array' an array of such a type: the same text, read back as text[].
create or replace function auditdb.type_kind(typ oid) returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
begin
    select p.oid, p.typtype, p.typbasetype, p.typelem, p.typsubscript into t from pg_type p where p.oid = typ;
    while t.typtype = 'd' loop
        select p.oid, p.typtype, p.typbasetype, p.typelem, p.typsubscript into t from pg_type p where p.oid = t.typbasetype;
    end loop;
    if t.typelem <> 0 and t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc then
        return case auditdb.type_kind(t.typelem) when 'builtin' then 'builtin' else 'text_array' end;
    end if;
    -- FirstNormalObjectId: everything below it was made by initdb.
    return case when t.oid < 16384 then 'builtin' else 'text' end;
end
$$;

comment on function auditdb.type_kind(oid) is 'auditdb: how capture shows a value of this type without running its owner''s code';

-- The scalar type a value of type typ is made of: through domains to their base, through arrays to
-- their element (apply probes it for an equality operator when it is one of PostgreSQL's own).
create or replace function auditdb.scalar_base_type(typ oid) returns oid
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
begin
    loop
        select p.typtype, p.typbasetype, p.typelem, p.typsubscript into t from pg_type p where p.oid = typ;
        if t.typtype = 'd' then
            typ := t.typbasetype;
        elsif t.typelem <> 0 and t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc then
            typ := t.typelem;
        else
            return typ;
        end if;
    end loop;
end
$$;

comment on function auditdb.scalar_base_type(oid) is 'auditdb: the scalar type under domains and arrays';

-- Whether equal values of this type (under this collation) are always the same value: not for
-- numeric (1.0 = 1.00), float (0 = -0), interval (1 day = 24 hours), timetz, jsonb (numbers
-- inside), bpchar (trailing spaces), numeric ranges, geometric types, arrays, or text under a
-- non-deterministic collation ('alice' = 'ÀLICE'). Capture compares those as text, so such a
-- change is never taken for none.
create or replace function auditdb.exact_equality(typ oid, coll oid) returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
begin
    select p.oid, p.typtype, p.typbasetype, p.typelem, p.typsubscript into t from pg_type p where p.oid = typ;
    while t.typtype = 'd' loop
        select p.oid, p.typtype, p.typbasetype, p.typelem, p.typsubscript into t from pg_type p where p.oid = t.typbasetype;
    end loop;
    -- Arrays: their equality needs the element's btree or hash equality, which some lack.
    if t.typelem <> 0 and t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc then
        return false;
    end if;
    -- numeric, float4, float8, interval, timetz, jsonb, bpchar, numrange, nummultirange, and the
    -- geometric types whose = compares areas or lengths (lseg, path, box, polygon, line, circle).
    return t.oid not in (1700, 700, 701, 1186, 1266, 3802, 1042, 3906, 4532, 601, 602, 603, 604, 628, 718)
       and coalesce((select c.collisdeterministic from pg_collation c where c.oid = coll), true);
end
$$;

comment on function auditdb.exact_equality(oid, oid) is 'auditdb: are equal values of this type and collation identical';

-- What is in or on schema auditdb that auditdb did not make: a role that ran as auditdb_owner
-- (the hole release 0007 closed: application casts ran inside capture) could have left functions,
-- policies, triggers, rules, changed column defaults or owners, or granted itself privileges.
-- known: the names of the functions sql/definitions/ defines. Each row says how to remove it;
-- `auditdb install` does so (and logs each), `auditdb doctor` fails while any is there.
create or replace function auditdb.foreign_objects(known text[])
returns table (kind text, identity text, remedy text)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    -- Functions: only auditdb's own, each once, and the generated capture functions.
    select 'function', p.oid::regprocedure::text, format('drop function %s', p.oid::regprocedure)
      from pg_proc p
     where p.pronamespace = 'auditdb'::regnamespace
       and not (p.proname = any(known))
       and not (p.proname like 'auditdb\_capture\_%' and p.pronargs = 0 and p.prorettype = 'trigger'::regtype
                and p.proowner = 'auditdb_capture'::regrole)
    union all
    select 'function owner', p.oid::regprocedure::text,
           format('alter function %s owner to auditdb_owner', p.oid::regprocedure)
      from pg_proc p join pg_roles r on r.oid = p.proowner
     where p.pronamespace = 'auditdb'::regnamespace and p.proname = any(known)
       and r.rolname not in ('auditdb_owner', 'auditdb_capture') and not r.rolsuper
    union all
    -- Relations: owned by auditdb_owner; only auditdb's policies; no rules; triggers only the guards.
    select 'table owner', c.oid::regclass::text, format('alter table %s owner to auditdb_owner', c.oid::regclass)
      from pg_class c
     where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
       and c.relowner <> 'auditdb_owner'::regrole
       and not (c.oid = 'auditdb.alembic_version'::regclass
                and (select r.rolsuper from pg_roles r where r.oid = c.relowner))
    union all
    select 'policy', format('%s on %s', quote_ident(pol.polname), pol.polrelid::regclass),
           format('drop policy %I on %s', pol.polname, pol.polrelid::regclass)
      from pg_policy pol join pg_class c on c.oid = pol.polrelid
     where c.relnamespace = 'auditdb'::regnamespace
       and not (pol.polname in ('log_admin_read', 'log_viewer_read')
                and (c.oid = 'auditdb.log'::regclass or c.relispartition))
       and not (pol.polname = 'log_capture_append' and c.oid = 'auditdb.log'::regclass)
       and not (pol.polname = 'capture_read' and c.oid = 'auditdb.tracked_tables'::regclass)
       and not (pol.polname = 'admin_read' and c.relname in ('tracked_tables', 'event_queue', 'event_dead_letter',
                'worker_heartbeat', 'tenant_roles', 'tenant_from_context_roles', 'admin_roles', 'partition_archive'))
    union all
    select 'rule', format('%s on %s', quote_ident(rw.rulename), rw.ev_class::regclass),
           format('drop rule %I on %s', rw.rulename, rw.ev_class::regclass)
      from pg_rewrite rw join pg_class c on c.oid = rw.ev_class
     where c.relnamespace = 'auditdb'::regnamespace and rw.rulename <> '_RETURN'
    union all
    select 'trigger', format('%s on %s', quote_ident(t.tgname), t.tgrelid::regclass),
           format('drop trigger %I on %s', t.tgname, t.tgrelid::regclass)
      from pg_trigger t join pg_class c on c.oid = t.tgrelid
     where c.relnamespace = 'auditdb'::regnamespace and not t.tgisinternal
       and not (t.tgname = 'log_append_only' and t.tgfoid = 'auditdb.refuse_log_change()'::regprocedure)
    union all
    -- The values an entry's author never chooses are the log's own.
    select 'column default', format('auditdb.log.%I', d.col),
           format('alter table auditdb.log alter column %I set default %s', d.col, d.expected)
      from (values ('id', 'nextval(''auditdb.log_id_seq''::regclass)'), ('occurred_at', 'clock_timestamp()'),
                   ('txid', 'txid_current()'), ('db_user', 'SESSION_USER'), ('metadata', '''{}''::jsonb')) d(col, expected)
      left join pg_attribute a on a.attrelid = 'auditdb.log'::regclass and a.attname = d.col
      left join pg_attrdef ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
     where pg_get_expr(ad.adbin, ad.adrelid) is distinct from d.expected
    union all
    -- Privileges: only auditdb's roles hold any (grants.sql says which).
    select 'privilege', format('%s on %s', coalesce(a.grantee::regrole::text, 'public'), c.oid::regclass),
           format('revoke all on %s %s from %s cascade', case c.relkind when 'S' then 'sequence' else 'table' end,
                  c.oid::regclass, case when a.grantee = 0 then 'public' else a.grantee::regrole::text end)
      from pg_class c cross join lateral aclexplode(c.relacl) a
     where c.relnamespace = 'auditdb'::regnamespace and a.grantee <> c.relowner
       and (a.grantee = 0 or a.grantee::regrole::text not in ('auditdb_capture', 'auditdb_admin', 'auditdb_viewer', 'auditdb_writer'))
    union all
    select 'privilege', format('%s on function %s', coalesce(a.grantee::regrole::text, 'public'), p.oid::regprocedure),
           format('revoke all on function %s from %s cascade', p.oid::regprocedure,
                  case when a.grantee = 0 then 'public' else a.grantee::regrole::text end)
      from pg_proc p cross join lateral aclexplode(p.proacl) a
     where p.pronamespace = 'auditdb'::regnamespace and a.grantee <> p.proowner
       and (a.grantee = 0 or a.grantee::regrole::text not in ('auditdb_capture', 'auditdb_admin', 'auditdb_viewer', 'auditdb_writer'))
    union all
    select 'privilege', format('%s on schema auditdb', coalesce(a.grantee::regrole::text, 'public')),
           format('revoke all on schema auditdb from %s cascade',
                  case when a.grantee = 0 then 'public' else a.grantee::regrole::text end)
      from pg_namespace n cross join lateral aclexplode(n.nspacl) a
     where n.nspname = 'auditdb' and a.grantee <> n.nspowner
       and (a.grantee = 0 or a.grantee::regrole::text not in ('auditdb_capture', 'auditdb_admin', 'auditdb_viewer', 'auditdb_writer')
            or a.privilege_type <> 'USAGE')
$$;

comment on function auditdb.foreign_objects(text[]) is 'auditdb: objects in or on schema auditdb that auditdb did not make, and how to remove each';

reset role;
