"""The trust boundary: capture runs as auditdb_capture; readers bound by login; watchers fail closed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Besides its SQL (roles and tables), this revision moves each tracked table's stored config to
format 3, which names columns by number and records the columns (by number, name and type) each
expression reads, so the generic capture can tell a renamed or retyped column from the one the
expression was written for. Stored expressions are re-rendered the way `apply` now renders them:
a column of a type PostgreSQL does not define is read as its output text. An expression that
names a column no longer there is dropped (the generic capture then logs without it and says so,
until `auditdb apply`).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from alembic import context, op

from auditdb.install import run_revision_sql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql("0007", ["trust"])
    if context.is_offline_mode():
        return
    driver = op.get_bind().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    rows = driver.execute("select relid::oid, config from auditdb.tracked_tables").fetchall()
    for relid, config in rows:
        if config.get("format") == 3:
            continue
        driver.execute(
            "update auditdb.tracked_tables set config = %s where relid = %s",
            (json.dumps(_format_3(driver, int(relid), config)), relid),
        )


def _format_3(conn: psycopg.Connection[Any], relid: int, old: dict[str, Any]) -> dict[str, Any]:
    from auditdb.columns import BUILTIN, read_columns
    from auditdb.expressions import rerender

    columns = {c.name: c for c in read_columns(conn, relid)}

    def seen(alias: str, column: str) -> str | None:
        col = columns[column]
        return None if col.kind == BUILTIN else col.seen_by_expressions(alias)

    def uses(names: set[str]) -> list[list[Any]]:
        return [[columns[c].attnum, c, columns[c].type_oid] for c in sorted(names)]

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
    new.update(
        format=3,
        entity_type=old.get("entity_type"),
        columns=[[c.name, c.type_oid, c.typmod] for c in columns.values()],
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
    soft = old.get("soft_delete")
    if isinstance(soft, dict):
        s = redo(soft.get("sql"))
        if s and s[0]:
            new["soft_delete"] = {"sql": s[0], "uses": uses(s[1])}
    for rule in old.get("rules", []):
        w = redo(rule.get("when"))
        if w is not None:
            new["rules"].append({"on": rule["on"], "action": rule["action"], "when": w[0], "uses": uses(w[1])})
    return new


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")
