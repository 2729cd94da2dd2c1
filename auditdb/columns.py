"""How capture shows and compares a column without running code its type's owner controls.

A column of a type PostgreSQL itself defines (or a domain over one, or an array of such) is shown
with to_jsonb and compared with PostgreSQL's own operators: no role can add a cast to those types.
Any other type (an enum, range, composite or extension type, which its owner may give casts to
json, jsonb or text, or operators reached through such a cast) is shown and compared as the text of
the type's output function, `format('%s', v)`: output functions are written in C, by a superuser.
Config expressions see such a column as that text. The database decides the kind
(auditdb.type_kind); sql/definitions/capture.sql renders the same SQL for the generic capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["BUILTIN", "Column", "column_names", "read_columns"]

BUILTIN = "builtin"
TEXT = "text"
TEXT_ARRAY = "text_array"
MASKED = "***"


@dataclass(frozen=True)
class Column:
    """One column of a tracked table, as the catalog describes it and the config treats it."""

    name: str
    attnum: int
    type_oid: int
    typmod: int
    type_sql: str  # format_type(), for messages
    kind: str  # BUILTIN, TEXT or TEXT_ARRAY
    comparable: bool  # PostgreSQL's own type whose equality means "the same value" (auditdb.exact_equality)
    mask: str | None = None  # "full", "last4" or None
    ignored: bool = False
    base_type: str = ""  # format_type() of the scalar type under domains and arrays
    collation: int = 0

    def _ref(self, row: str) -> sql.Composable:
        return sql.Identifier(row, self.name)

    def text(self, row: str) -> str:
        """SQL for the value as text (null stays null)."""
        if self.kind == BUILTIN:
            return sql.SQL("{}::text").format(self._ref(row)).as_string()
        return (
            sql.SQL("(case when pg_catalog.num_nulls({r}) = 0 then pg_catalog.format({f}, {r}) end)")
            .format(r=self._ref(row), f=sql.Literal("%s"))
            .as_string()
        )

    def value(self, row: str, *, masked: bool = True) -> str:
        """SQL for the value as an entry shows it: masked when the column is, else jsonb-ready."""
        if masked and self.mask == "full":
            test = self._ref(row).as_string() if self.kind == BUILTIN else self.text(row)
            return f"case when {test} is null then null else {sql.Literal(MASKED).as_string()} end"
        if masked and self.mask == "last4":
            t = self.text(row)
            stars = sql.Literal(MASKED).as_string()
            return (
                f"case when {t} is null then null when length({t}) > 8 then {stars} || right({t}, 4) else {stars} end"
            )
        if self.kind == BUILTIN:
            return self._ref(row).as_string()
        if self.kind == TEXT_ARRAY:
            return f"({self.text(row)})::text[]"
        return self.text(row)

    def seen_by_expressions(self, row: str) -> str:
        """SQL a config expression reads for this column: the column itself, or its text."""
        return self._ref(row).as_string() if self.kind == BUILTIN else self.text(row)

    def changed(self) -> str:
        """SQL testing whether the column differs between rows o and n.

        A type's own equality where equal values are always the same value; else the text, in
        the "C" collation: 1.0 and 1.00, 0 and -0, 'a' and 'A' under a case-insensitive collation,
        two spellings of the same json are all changes.
        """
        if self.kind == BUILTIN and self.comparable:
            return sql.SQL("{} is distinct from {}").format(self._ref("o"), self._ref("n")).as_string()
        return f'({self.text("o")} collate "C") is distinct from ({self.text("n")} collate "C")'

    def same(self) -> str:
        """SQL testing that rows o and n hold the same value (a key pairing)."""
        return f"not ({self.changed()})"


def read_columns(conn: psycopg.Connection[Any], oid: int) -> list[Column]:
    """The table's columns with their kind; masks and ignores are the caller's to set.

    Only PostgreSQL's own types are probed for an equality operator (a cast of NULL to the base
    type, which runs nothing else); any other type is compared as text and never probed.
    """
    rows = conn.execute(
        """select a.attname, a.attnum, a.atttypid::int8, a.atttypmod,
                  pg_catalog.format_type(a.atttypid, a.atttypmod), auditdb.type_kind(a.atttypid),
                  pg_catalog.format_type(auditdb.scalar_base_type(a.atttypid), null),
                  auditdb.exact_equality(a.atttypid, a.attcollation), a.attcollation::int8
             from pg_catalog.pg_attribute a
            -- A virtual generated column (PostgreSQL 18) cannot be read from a transition table; it
            -- is computed from the others, which are captured.
            where a.attrelid = %s::oid and a.attnum > 0 and not a.attisdropped and a.attgenerated <> 'v'
            order by a.attnum""",
        (oid,),
    ).fetchall()
    probed: dict[str, bool] = {}
    columns = []
    for name, attnum, type_oid, typmod, type_sql, kind, base, exact, collation in rows:
        comparable = False
        if kind == BUILTIN and exact:
            if base not in probed:
                probed[base] = _has_equality(conn, str(base))
            comparable = probed[base]
        columns.append(
            Column(
                str(name),
                int(attnum),
                int(type_oid),
                int(typmod),
                str(type_sql),
                str(kind),
                comparable,
                base_type=str(base),
                collation=int(collation),
            )
        )
    return columns


def column_names(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """Every column's name, those capture cannot read included (a mask glob written for one is no slip)."""
    rows = conn.execute(
        """select a.attname from pg_catalog.pg_attribute a
            where a.attrelid = %s::oid and a.attnum > 0 and not a.attisdropped order by a.attnum""",
        (oid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _has_equality(conn: psycopg.Connection[Any], base_type: str) -> bool:
    """Whether IS DISTINCT FROM works on one of PostgreSQL's own scalar types (json, xml, point… lack it)."""
    probe = sql.SQL("select null::{t} is distinct from null::{t}").format(t=sql.SQL(base_type))
    try:
        with conn.transaction():
            conn.execute(probe)
        return True
    except psycopg.errors.UndefinedFunction:
        return False
