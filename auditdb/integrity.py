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

__all__ = ["Foreign", "foreign_objects", "held_privileges"]

OUR_ROLES = ("auditdb_owner", "auditdb_capture", "auditdb_admin", "auditdb_viewer", "auditdb_writer")
GRANTEES = ("auditdb_capture", "auditdb_admin", "auditdb_viewer", "auditdb_writer")
# Removal order: whatever uses a function (or a column) goes before it.
ORDER = (
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
    "function",
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
