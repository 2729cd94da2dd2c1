"""Stored state that an upgrade brings to the current format, after the current definitions run.

Tracked-table configs (auditdb.tracked_tables.config) of format 3 name columns by number and record
the columns (number, name, type) each expression reads, so the generic capture can tell a renamed
or retyped column from the one an expression was written for. Older configs are converted from
the catalog as it is now; their stored expressions are rendered again the way `apply` renders
them (a column of a type PostgreSQL does not define is read as its output text). An expression
that names a column no longer there is dropped: the generic capture logs without it and says so
until `auditdb apply`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg

from auditdb.columns import BUILTIN, read_columns
from auditdb.expressions import rerender

__all__ = ["upgrade_configs"]

CONFIG_FORMAT = 3


def upgrade_configs(conn: psycopg.Connection[Any]) -> int:
    """Convert every stored config older than format 3; returns how many were converted."""
    rows = conn.execute("select relid::oid, config from auditdb.tracked_tables").fetchall()
    converted = 0
    for relid, config in rows:
        if config.get("format") == CONFIG_FORMAT:
            continue
        conn.execute(
            "update auditdb.tracked_tables set config = %s where relid = %s::oid",
            (json.dumps(_format_3(conn, int(relid), config)), relid),
        )
        converted += 1
    return converted


def _format_3(conn: psycopg.Connection[Any], relid: int, old: dict[str, Any]) -> dict[str, Any]:
    columns = {c.name: c for c in read_columns(conn, relid)}

    def seen(alias: str, column: str) -> str | None:
        col = columns[column]
        return None if col.kind == BUILTIN else col.seen_by_expressions(alias)

    def uses(names: set[str]) -> list[list[Any]]:
        return [[columns[c].attnum, c, columns[c].type_oid, columns[c].collation] for c in sorted(names)]

    def redo(text: str | None) -> tuple[str | None, set[str]] | None:
        """The stored expression rendered anew, or None when a column it reads is gone."""
        if text is None:
            return None, set()
        try:
            return rerender(text, seen, set(columns))
        except KeyError:
            return None

    def column_ref(name: str | None) -> list[Any] | None:
        return [columns[name].attnum, name] if name in columns else None

    new: dict[str, Any] = {
        key: old.get(key, [])
        for key in ("masked_full_attnums", "masked_last4_attnums", "mask_regex", "mask_last4_regex", "ignore_regex")
    }
    ignore = [re.compile(r) for r in old.get("ignore_regex", [])]
    skipped: list[str] = []
    new.update(
        known_attnums=[c.attnum for c in columns.values()],
        ignored_attnums=[c.attnum for c in columns.values() if any(r.search(c.name) for r in ignore)],
        upgrade_skipped=skipped,
        format=CONFIG_FORMAT,
        entity_type=old.get("entity_type"),
        columns=[[c.name, c.type_oid, c.typmod, c.collation] for c in columns.values()],
        key=[[columns[k].attnum, k] for k in old.get("id", []) if k in columns],
        project=column_ref(old.get("project")),
        tenant=column_ref(old.get("tenant")),
        require_actor=bool(old.get("require_actor")),
        system_roles=old.get("system_roles", []),
        name=None,
        soft_delete=None,
        rules=[],
    )
    name = old.get("name")
    if isinstance(name, dict):
        n, o = redo(name.get("n")), redo(name.get("o"))
        if n and o and n[0] and o[0]:
            new["name"] = {"n": n[0], "o": o[0], "uses": uses(n[1] | o[1])}
        else:
            skipped.append("name (its columns are gone)")
    soft = old.get("soft_delete")
    if isinstance(soft, dict):
        s = redo(soft.get("sql"))
        if s and s[0]:
            new["soft_delete"] = {"sql": s[0], "uses": uses(s[1])}
        else:
            skipped.append("soft_delete (its column is gone)")
    for rule in old.get("rules", []):
        w = redo(rule.get("when"))
        if w is not None:
            new["rules"].append({"on": rule["on"], "action": rule["action"], "when": w[0], "uses": uses(w[1])})
        else:
            skipped.append(f"rule {rule.get('action')} (its columns are gone)")
    return new
