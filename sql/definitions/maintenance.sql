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

-- Whether the login is an admin of this database's log: a superuser, or a member of auditdb_admin
-- through a role granted here (`auditdb grant ROLE --admin`, auditdb.admin_roles): auditdb_admin is
-- cluster-wide, and an admin of another database's log is not one of this one's.
-- definer: reads auditdb's admin registry for the session user only; takes no argument.
create or replace function auditdb.is_admin_here() returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select r.rolsuper from pg_roles r where r.rolname = session_user), false)
        or ('auditdb_admin'::regrole::oid = any(auditdb.login_roles())
            and exists (select from auditdb.admin_roles a where a.roleid = any(auditdb.login_roles())))
$$;

comment on function auditdb.is_admin_here() is 'auditdb: is the login an admin of this database''s log';

-- Refuse the caller unless it is an admin of this database's log (what: the operation, for the message).
create or replace function auditdb.require_admin_here(what text) returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not auditdb.is_admin_here() then
        raise exception '% is for admins of this database''s log', what
            using errcode = 'insufficient_privilege',
                  hint = 'auditdb_admin is cluster-wide; an admin of this database is granted with `auditdb grant ROLE --admin` here.';
    end if;
end
$$;

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


reset role;
