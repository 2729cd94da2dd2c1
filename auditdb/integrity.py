"""What is in or on schema auditdb that auditdb did not make, and how to remove each.

Before release 0007 an application's casts could run inside capture as auditdb_owner, which owns
the schema: code running that way could have left functions (new ones, or overloads of auditdb's
own that calls would pick), policies, triggers, rules, constraints, indexes or column defaults and
generated columns calling its own functions, objects owned by auditdb's roles elsewhere, default
privileges, and grants to itself. `auditdb install` removes them while upgrading (each removal
logged), before anything runs as a superuser on auditdb's tables; `auditdb doctor` fails while any
is there. The queries read only the catalog, so they work before the current definitions exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from auditdb.errors import AuditDBError

__all__ = [
    "Foreign",
    "expected_structure",
    "foreign_objects",
    "held_privileges",
    "lost_privileges",
    "structure",
    "structure_differences",
]

OUR_ROLES = ("auditdb_owner", "auditdb_capture", "auditdb_admin", "auditdb_viewer", "auditdb_writer")
GRANTEES = ("auditdb_capture", "auditdb_admin", "auditdb_viewer", "auditdb_writer")
# Removal order: whatever uses a function (or a column) goes before it.
ORDER = (
    "relation",
    "inheritance",
    "privilege",
    "default privilege",
    "policy",
    "rule",
    "trigger",
    "index",
    "constraint",
    "statistics",
    "column default",
    "table owner",
    "function owner",
    "object elsewhere",
    "column type",
    "function",
    "domain",
    "type",
)


# The query (sql/queries/foreign_objects.sql) reads only the catalog: auditdb's own functions are
# named (known), everything else in the schema is judged by what it is made of. "Foreign code": a
# function or operator outside pg_catalog and not one of auditdb's own functions, or a type
# outside pg_catalog and auditdb.
def _query() -> str:
    return (resources.files("auditdb.sql") / "queries" / "foreign_objects.sql").read_text(encoding="utf-8")


# Every privilege auditdb's grantee roles hold on the schema, its tables (and their columns), its
# sequences and its functions, by name (a function the definitions recreate keeps its identity).
HELD_SQL = """
select format('schema %I', n.nspname), a.grantee::regrole::text, a.privilege_type
  from pg_catalog.pg_namespace n cross join lateral pg_catalog.aclexplode(n.nspacl) a
 where n.nspname = 'auditdb'
union
select format('%s %s', case c.relkind when 'S' then 'sequence' else 'table' end, c.oid::regclass),
       a.grantee::regrole::text, a.privilege_type
  from pg_catalog.pg_class c cross join lateral pg_catalog.aclexplode(c.relacl) a
 where c.relnamespace = 'auditdb'::regnamespace
union
select format('column %s.%I', c.oid::regclass, att.attname), a.grantee::regrole::text, a.privilege_type
  from pg_catalog.pg_class c join pg_catalog.pg_attribute att on att.attrelid = c.oid
       cross join lateral pg_catalog.aclexplode(att.attacl) a
 where c.relnamespace = 'auditdb'::regnamespace
union
select format('function %s', p.oid::regprocedure), a.grantee::regrole::text, a.privilege_type
  from pg_catalog.pg_proc p cross join lateral pg_catalog.aclexplode(p.proacl) a
 where p.pronamespace = 'auditdb'::regnamespace
"""


OBJECTS_SQL = """
select format('schema %I', n.nspname) from pg_catalog.pg_namespace n where n.nspname = 'auditdb'
union all
select format('%s %s', case c.relkind when 'S' then 'sequence' else 'table' end, c.oid::regclass)
  from pg_catalog.pg_class c where c.relnamespace = 'auditdb'::regnamespace
union all
select format('column %s.%I', c.oid::regclass, att.attname)
  from pg_catalog.pg_class c join pg_catalog.pg_attribute att on att.attrelid = c.oid
 where c.relnamespace = 'auditdb'::regnamespace and att.attnum > 0 and not att.attisdropped
union all
select format('function %s', p.oid::regprocedure)
  from pg_catalog.pg_proc p where p.pronamespace = 'auditdb'::regnamespace
"""


def lost_privileges(conn: psycopg.Connection[Any], held: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Of privileges held before, those lost on objects that are still there (not those dropped with theirs)."""
    existing = {str(r[0]) for r in conn.execute(OBJECTS_SQL).fetchall()}
    return sorted(p for p in held - held_privileges(conn) if p[0] in existing)


def held_privileges(conn: psycopg.Connection[Any]) -> set[tuple[str, str, str]]:
    """(object, grantee, privilege) for each privilege one of auditdb's grantee roles holds in the schema."""
    rows = conn.execute(HELD_SQL).fetchall()
    return {(str(o), str(g), str(p)) for o, g, p in rows if g in GRANTEES}


@dataclass(frozen=True)
class Foreign:
    kind: str
    identity: str
    remedy: str


def foreign_objects(
    conn: psycopg.Connection[Any], known: list[str], *, fresh: list[int] | None = None, log_defaults: bool = True
) -> list[Foreign]:
    """The objects auditdb did not make, in the order to remove them.

    known: the names of the functions sql/definitions/ defines. fresh: the oids of the functions
    the definitions just (re)wrote, when known (during an upgrade): of several with one name,
    those are auditdb's; otherwise the oldest is. log_defaults: check the log's own column
    defaults (not before revision 0007 set them).
    """
    rows = conn.execute(
        _query(), {"known": known, "fresh": fresh, "grantees": list(GRANTEES), "log_defaults": log_defaults}
    ).fetchall()
    found = {Foreign(str(k), str(i), str(r)) for k, i, r in rows}
    return sorted(found, key=lambda f: (ORDER.index(f.kind) if f.kind in ORDER else len(ORDER), f.identity))


# The version table alembic reads and writes as the installing superuser: the one install made
# (a plain table a superuser owns, so nothing of auditdb_owner's can hang on it), or none yet.
VERSION_TABLE_SQL = """
select c.relkind::text, r.rolname::text, r.rolsuper
  from pg_catalog.pg_class c join pg_catalog.pg_roles r on r.oid = c.relowner
 where c.oid = pg_catalog.to_regclass('auditdb.alembic_version')
"""
SCHEMA_CONTENT_SQL = """
select (select count(*) from pg_catalog.pg_class where relnamespace = n.oid)
     + (select count(*) from pg_catalog.pg_proc where pronamespace = n.oid)
     + (select count(*) from pg_catalog.pg_type where typnamespace = n.oid and typrelid = 0 and typelem = 0)
  from pg_catalog.pg_namespace n where n.nspname = 'auditdb'
"""


RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "S": "sequence",
}


def check_version_table(conn: psycopg.Connection[Any]) -> None:
    """Refuse to go on when schema auditdb is not one install made (before reading anything in it)."""
    row = conn.execute(VERSION_TABLE_SQL).fetchone()
    if row is None:
        held = conn.execute(SCHEMA_CONTENT_SQL).fetchone()
        if held and held[0]:
            raise AuditDBError(
                "schema auditdb already exists and holds objects auditdb did not make: install into a "
                "database without it (drop or rename it first)"
            )
        return
    relkind, owner, superuser = row
    if relkind != "r" or not superuser:
        raise AuditDBError(
            f"auditdb.alembic_version is not the table install made (a {RELKINDS.get(relkind, 'relation')} "
            f"owned by {owner}, not a superuser): code that once ran as auditdb_owner may have replaced it. "
            "Nothing was changed; inspect it, recreate it as a superuser with the version it should hold "
            "(create table auditdb.alembic_version (version_num varchar(32) primary key)), then install again"
        )


# Before release 0007, application code could act as auditdb_owner; what it may have replaced or
# added must not run as the superuser who upgrades. Functions of schema auditdb not owned by a
# superuser: dropped when nothing depends on them, else given a body that only raises (the
# definitions then write auditdb's own, and capture functions get the generic body).
FUNCTIONS_SQL = """
select p.oid::int8, p.oid::regprocedure::text, p.proname::text, p.prokind::text,
       pg_catalog.format('%I.%I', n.nspname, p.proname),
       pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
       exists (select from pg_catalog.pg_depend d
                where d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = p.oid
                  and d.deptype = 'n')
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  join pg_catalog.pg_roles r on r.oid = p.proowner
 where n.nspname = 'auditdb' and not r.rolsuper
 order by p.oid
"""
# Columns of auditdb's tables whose type is not a built-in one, and the built-in base of each
# domain (a domain's check or default would run on every write).
COLUMN_TYPES_SQL = """
with recursive base(typ, base) as (
    select t.oid, t.oid from pg_catalog.pg_type t
    union all
    select b.typ, t.typbasetype from base b join pg_catalog.pg_type t on t.oid = b.base where t.typtype = 'd'
)
select pg_catalog.format('%I.%I', n.nspname, c.relname), n.nspname::text, c.relname::text, a.attname::text,
       a.atttypid::regtype::text,
       (select pg_catalog.format_type(b.base, a.atttypmod) from base b join pg_catalog.pg_type t on t.oid = b.base
         where b.typ = a.atttypid and t.typtype <> 'd'
           and t.typnamespace = 'pg_catalog'::regnamespace)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute a on a.attrelid = c.oid
  join pg_catalog.pg_type ty on ty.oid = a.atttypid
 where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
   and a.attnum > 0 and not a.attisdropped and ty.typnamespace <> 'pg_catalog'::regnamespace
"""
# Types in the schema that are not a table's row type (or an array of one): auditdb makes none.
TYPES_SQL = """
select t.oid::regtype::text, case t.typtype when 'd' then 'domain' else 'type' end, t.typname::text
  from pg_catalog.pg_type t
 where t.typnamespace = 'auditdb'::regnamespace and t.typelem = 0
   and (t.typrelid = 0 or (select relkind from pg_catalog.pg_class where oid = t.typrelid) = 'c')
   and t.typtype <> 'm'
"""
# Views, materialized views and foreign tables in the schema (auditdb makes none), and tables made
# to inherit from auditdb's (their rows would show in its lookups), partitions of the log aside.
RELATIONS_SQL = """
select c.oid::regclass::text,
       case c.relkind when 'v' then 'view' when 'm' then 'materialized view' else 'foreign table' end,
       c.relname::text
  from pg_catalog.pg_class c
 where c.relnamespace = 'auditdb'::regnamespace and c.relkind in ('v', 'm', 'f')
"""
CHILDREN_SQL = """
select i.inhrelid::regclass::text, i.inhparent::regclass::text, cn.nspname::text, c.relname::text, p.relname::text,
       c.relispartition
  from pg_catalog.pg_inherits i join pg_catalog.pg_class p on p.oid = i.inhparent
  join pg_catalog.pg_class c on c.oid = i.inhrelid join pg_catalog.pg_namespace cn on cn.oid = c.relnamespace
 where p.relnamespace = 'auditdb'::regnamespace and p.relkind in ('r', 'p')
   and not (p.oid = 'auditdb.log'::regclass and c.relispartition)
"""
STUB_BODY = "begin raise exception 'auditdb: this function is being replaced by auditdb install'; end"


def _drop_statement(kind: str, identity: str) -> sql.Composed:
    word = {"a": "aggregate", "p": "procedure"}.get(kind, "function")
    return sql.SQL("drop {} {}").format(sql.SQL(word), sql.SQL(identity))


def secure_old_release(
    conn: psycopg.Connection[Any], known: list[str], historical: list[str]
) -> tuple[list[Foreign], dict[str, int]]:
    """Make a release older than 0007 safe to upgrade as a superuser, before any revision runs.

    Returns the foreign objects removed (for the log, once auditdb's own functions are back) and
    counts of what else was done. known: function names the current definitions make;
    historical: those the older revisions made.
    """
    removed: list[Foreign] = []
    counts = {"event triggers disabled": 0, "functions dropped": 0, "functions neutralised": 0}
    # No watcher runs during the upgrade (they call functions auditdb_owner could replace); the
    # definitions enable them again. Other sessions keep seeing them enabled until the commit.
    for (name,) in conn.execute(
        "select evtname::text from pg_catalog.pg_event_trigger where evtname like 'auditdb\\_%' and evtenabled <> 'D'"
    ).fetchall():
        conn.execute(sql.SQL("alter event trigger {} disable").format(sql.Identifier(name)))
        counts["event triggers disabled"] += 1
    for identity, kind, name in conn.execute(RELATIONS_SQL).fetchall():
        # kind: one of three words the query spells out, never catalog text.
        drop = sql.SQL("drop {} {}").format(sql.SQL(kind), sql.Identifier("auditdb", name))
        conn.execute(drop)
        removed.append(Foreign("relation", str(identity), drop.as_string(conn)))
    for child, parent, child_schema, child_name, parent_name, partition in conn.execute(CHILDREN_SQL).fetchall():
        # A partition cannot leave by NO INHERIT.
        unlink = (
            sql.SQL("alter table {} detach partition {}") if partition else sql.SQL("alter table {1} no inherit {0}")
        ).format(sql.Identifier("auditdb", parent_name), sql.Identifier(child_schema, child_name))
        conn.execute(unlink)
        removed.append(Foreign("inheritance", f"{child} inherits {parent}", unlink.as_string(conn)))
    for table, schema, name, column, typ, base in conn.execute(COLUMN_TYPES_SQL).fetchall():
        if base is None:
            raise AuditDBError(
                f"column {column} of {table} has type {typ}, which auditdb did not give it and cannot safely "
                "convert: nothing was changed; as a superuser, give it its built-in type, then install again"
            )
        # base: format_type() of a type in pg_catalog, the server's own spelling of a built-in type.
        convert = sql.SQL("alter table {} alter column {} type {}").format(
            sql.Identifier(schema, name), sql.Identifier(column), sql.SQL(base)
        )
        conn.execute(convert)
        removed.append(Foreign("column type", f"{table}.{column}", convert.as_string(conn)))
    functions = conn.execute(FUNCTIONS_SQL).fetchall()
    ours = set(known) | set(historical)
    seen: set[str] = set()
    for _oid, identity, name, kind, qualified, arguments, result, depended in functions:
        foreign = (name not in ours and not name.startswith("auditdb_capture_")) or name in seen
        seen.add(name)
        if depended and kind in ("f", "p"):
            stub = sql.SQL("create or replace {} {}({}) {} language plpgsql as {}").format(
                sql.SQL("procedure" if kind == "p" else "function"),
                sql.SQL(qualified),
                sql.SQL(arguments),
                sql.SQL("" if kind == "p" else f"returns {result}"),
                sql.Literal(STUB_BODY),
            )
            conn.execute(stub)
            # Without its comment: refresh.sql then gives a capture function the generic body.
            conn.execute(
                sql.SQL("comment on {} {} is null").format(
                    sql.SQL("procedure" if kind == "p" else "function"), sql.SQL(identity)
                )
            )
            counts["functions neutralised"] += 1
            continue
        if depended:
            continue  # an aggregate something uses: removed with its users after the revisions
        conn.execute(_drop_statement(kind, identity))
        counts["functions dropped"] += 1
        if foreign:
            removed.append(Foreign("function", str(identity), _drop_statement(kind, identity).as_string(conn)))
    for identity, word, name in conn.execute(TYPES_SQL).fetchall():
        drop = sql.SQL("drop {} {}").format(sql.SQL(word), sql.Identifier("auditdb", name))
        conn.execute(drop)
        removed.append(Foreign(str(word), str(identity), drop.as_string(conn)))
    return removed, counts


# The shape of auditdb's tables, compared with what a fresh install of this release has.
def _structure_query() -> str:
    return (resources.files("auditdb.sql") / "queries" / "structure.sql").read_text(encoding="utf-8")


def structure(conn: psycopg.Connection[Any]) -> list[str]:
    """The lines describing schema auditdb's tables, sequences and types (sql/queries/structure.sql)."""
    return [f"{k} | {n} | {d}" for k, n, d in conn.execute(_structure_query()).fetchall()]


def expected_structure() -> list[str]:
    """What a fresh install of this release has (sql/queries/structure.txt, made by tests/test_integrity.py)."""
    text = (resources.files("auditdb.sql") / "queries" / "structure.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def structure_differences(conn: psycopg.Connection[Any]) -> list[str]:
    """Lines the database lacks ("missing: …") or has beyond a fresh install ("extra: …")."""
    have, want = set(structure(conn)), set(expected_structure())
    return [f"missing: {line}" for line in sorted(want - have)] + [f"extra: {line}" for line in sorted(have - want)]
