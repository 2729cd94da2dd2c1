"""What the catalog says of a configured table: everything rendering its capture needs, read in one place.

`read_facts` is the only part of planning that queries the database; `auditdb.plan.render_table`
turns a config and these facts into SQL without one (tests/test_render.py renders hand-made facts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from auditdb.columns import Column, column_names, read_columns
from auditdb.config import TableConfig, untrackable
from auditdb.errors import ConfigError, NotAuditableError
from auditdb.names import CAPTURE_TRIGGERS, capture_function_name

__all__ = ["TableFacts", "read_facts"]


@dataclass(frozen=True)
class TableFacts:
    """A tracked table as the catalog has it."""

    oid: int
    partitioned: bool
    # schema.table as the server quotes it (format('%I.%I')): what entries and the registry record
    table_name: str
    # The columns capture reads, with their kinds (masks and ignores are the config's, applied later)
    columns: tuple[Column, ...]
    # Every column's name, those capture cannot read included
    every_column: tuple[str, ...]
    primary_key: tuple[str, ...]
    # (schema, table, oid) of each partition, every level, parents first
    partitions: tuple[tuple[str, str, int], ...] = ()
    # Capture triggers renamed away from their names, by table oid: apply drops them
    stray_triggers: dict[int, tuple[str, ...]] = field(default_factory=dict)


_RELKINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "c": "a composite type",
    "i": "an index",
    "I": "a partitioned index",
    "t": "a TOAST table",
}


def read_facts(conn: psycopg.Connection[Any], cfg: TableConfig) -> TableFacts:
    """The configured table's facts; a table that does not exist or cannot be tracked is refused."""
    refused = untrackable(cfg)
    if refused:
        raise NotAuditableError(f"{cfg.qualified} cannot be tracked: {refused}")
    row = conn.execute(
        """select c.oid, c.relkind, c.relispartition, c.relpersistence, format('%%I.%%I', n.nspname, c.relname)
             from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %s and c.relname = %s""",
        (cfg.schema, cfg.table),
    ).fetchone()
    if row is None:
        raise ConfigError(f"table {cfg.qualified} does not exist")
    oid, relkind, is_partition, persistence, table_name = row
    if relkind not in ("r", "p"):
        kind = _RELKINDS.get(relkind, f"relkind {relkind}")
        raise NotAuditableError(
            f"{cfg.qualified} cannot be audited because it is {kind}, not a table: only tables can be tracked"
        )
    if persistence == "t":
        raise NotAuditableError(f"{cfg.qualified} cannot be tracked: it is a temporary table")
    if is_partition:
        raise NotAuditableError(
            f"{cfg.qualified} is a partition: track its partitioned table instead (its partitions are captured with it)"
        )
    pk = conn.execute(
        """select array_agg(a.attname order by k.ord)
             from pg_catalog.pg_index i
             cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
             join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
            where i.indrelid = %s::oid and i.indisprimary""",
        (oid,),
    ).fetchone()
    partitions = tuple(
        (str(s), str(t), int(relid))
        for s, t, relid in conn.execute(
            """select n.nspname, c.relname, c.oid::int8 from pg_catalog.pg_partition_tree(%s) p
                 join pg_catalog.pg_class c on c.oid = p.relid
                 join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                where p.relid <> %s::regclass order by p.level, c.relname""",
            (oid, oid),
        ).fetchall()
    )
    function = sql.Identifier("auditdb", capture_function_name(cfg.schema, cfg.table)).as_string()
    strays: dict[int, list[str]] = {}
    for relid, name in conn.execute(
        """select t.tgrelid::int8, t.tgname from pg_catalog.pg_trigger t
            where t.tgrelid = any(%s::oid[]) and t.tgfoid = pg_catalog.to_regprocedure(%s)
              and not (t.tgname = any(%s))""",
        ([oid, *(relid for _, _, relid in partitions)], f"{function}()", list(CAPTURE_TRIGGERS.values())),
    ).fetchall():
        strays.setdefault(int(relid), []).append(str(name))
    return TableFacts(
        oid=int(oid),
        partitioned=relkind == "p",
        table_name=str(table_name),
        columns=tuple(read_columns(conn, oid)),
        every_column=tuple(column_names(conn, oid)),
        primary_key=tuple(pk[0]) if pk and pk[0] else (),
        partitions=partitions,
        stray_triggers={relid: tuple(names) for relid, names in strays.items()},
    )
