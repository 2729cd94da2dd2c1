"""Capture's state in the database against the config: what `status` and `doctor` report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import psycopg

from auditdb.config import Config
from auditdb.db import pinned
from auditdb.errors import AuditDBError
from auditdb.names import CAPTURE_TRIGGERS, qualified
from auditdb.plan import TablePlan, ident, resolve_table

__all__ = [
    "EVENT_TRIGGERS",
    "State",
    "TableStatus",
    "event_trigger_status",
    "installed_captures",
    "relation_name",
    "status",
    "table_state",
]


class State(Enum):
    INSTALLED = "installed"
    OUTDATED = "outdated"
    MISSING = "missing"
    DISABLED = "disabled"
    NOT_IN_CONFIG = "not in config"


@dataclass(frozen=True)
class TableStatus:
    table: str
    state: State
    detail: str = ""


def installed_captures(conn: psycopg.Connection[Any]) -> dict[int, list[tuple[int, str, str, str | None]]]:
    """Capture triggers found in the database (by name, or by a capture function whatever their
    name), grouped by the root table they serve."""
    rows = conn.execute(
        """select coalesce(pg_catalog.pg_partition_root(t.tgrelid), t.tgrelid)::oid, t.tgrelid::oid,
                  t.tgname, t.tgenabled, pg_catalog.obj_description(t.oid, 'pg_trigger')
             from pg_catalog.pg_trigger t
            where not t.tgisinternal
              and (t.tgname = any(%s)
                   or t.tgfoid in (select p.oid from pg_catalog.pg_proc p
                                    where p.pronamespace = 'auditdb'::regnamespace
                                      and p.proname like 'auditdb\\_capture\\_%%'))""",
        (list(CAPTURE_TRIGGERS.values()),),
    ).fetchall()
    found: dict[int, list[tuple[int, str, str, str | None]]] = {}
    for root, relid, name, enabled, comment in rows:
        found.setdefault(int(root), []).append((int(relid), str(name), str(enabled), comment))
    return found


def table_state(
    conn: psycopg.Connection[Any], plan: TablePlan, triggers: list[tuple[int, str, str, str | None]]
) -> TableStatus:
    name = plan.config.qualified
    if not triggers:
        return TableStatus(name, State.MISSING, "no capture triggers")
    disabled = sorted({n for _, n, enabled, _ in triggers if enabled != "A"})
    if disabled:
        return TableStatus(name, State.DISABLED, f"not enabled ALWAYS: {', '.join(disabled)}")
    renamed = sorted({n for _, n, _, _ in triggers if n not in CAPTURE_TRIGGERS.values()})
    if renamed:
        return TableStatus(name, State.OUTDATED, f"capture trigger(s) renamed: {', '.join(renamed)}; run apply")
    function = conn.execute(
        """select pg_catalog.obj_description(p.oid, 'pg_proc'), p.prosecdef and p.proowner = 'auditdb_capture'::regrole,
                  p.proconfig is not distinct from (
                      select g.proconfig from pg_catalog.pg_proc g
                       where g.oid = pg_catalog.to_regprocedure('auditdb.capture_generic()'))
             from pg_catalog.pg_proc p where p.oid = pg_catalog.to_regprocedure(%s)""",
        (f"auditdb.{ident(plan.function)}()",),
    ).fetchone()
    if function is None:
        return TableStatus(name, State.OUTDATED, "capture function missing")
    if function[0] == "auditdb:generic":
        return TableStatus(
            name, State.OUTDATED, "table changed since apply (or auditdb upgraded): generic capture in use, run apply"
        )
    if not function[1]:
        return TableStatus(name, State.OUTDATED, "capture function not as apply made it (owner or security changed)")
    if not function[2]:
        # Its search_path, time zone and styles are what keep it from running code it should not.
        return TableStatus(name, State.OUTDATED, "capture function's settings changed since apply; run apply")
    pending = conn.execute(
        """select string_agg(i.inhrelid::regclass::text, ', ') from pg_catalog.pg_inherits i
            where i.inhdetachpending
              and i.inhparent in (select relid from pg_catalog.pg_partition_tree(%s::oid) union select %s::oid)""",
        (plan.oid, plan.oid),
    ).fetchone()
    if pending and pending[0]:
        return TableStatus(
            name,
            State.OUTDATED,
            f"partition(s) {pending[0]} half-detached (an interrupted DETACH … CONCURRENTLY hides their rows): "
            "ALTER TABLE … DETACH PARTITION … FINALIZE",
        )
    expected = {(oid, t) for oid in _target_oids(conn, plan) for t in CAPTURE_TRIGGERS.values()}
    present = {(relid, n) for relid, n, _, _ in triggers}
    if expected - present:
        return TableStatus(name, State.OUTDATED, f"{len(expected - present)} trigger(s) missing (new partitions?)")
    if any(c != plan.signature for _, _, _, c in triggers):
        return TableStatus(name, State.OUTDATED, "generated from another config or auditdb version")
    if function[0] != plan.signature:
        return TableStatus(name, State.OUTDATED, "capture function missing or changed")
    return TableStatus(name, State.INSTALLED)


def _target_oids(conn: psycopg.Connection[Any], plan: TablePlan) -> list[int]:
    rows = conn.execute("select relid::oid from pg_catalog.pg_partition_tree(%s)", (plan.oid,)).fetchall()
    return [int(r[0]) for r in rows] or [plan.oid]


EVENT_TRIGGERS = (
    "auditdb_ddl_command_end",
    "auditdb_sql_drop",
    "auditdb_table_rewrite",
    "auditdb_guard_ddl",
    "auditdb_guard_drop",
)


def event_trigger_status(conn: psycopg.Connection[Any]) -> list[TableStatus]:
    """auditdb's event triggers must exist and fire ALWAYS (PostgreSQL logs no change to them)."""
    rows = dict(
        conn.execute(
            "select evtname, evtenabled from pg_catalog.pg_event_trigger where evtname = any(%s)",
            (list(EVENT_TRIGGERS),),
        ).fetchall()
    )
    result = []
    for name in EVENT_TRIGGERS:
        state = rows.get(name)
        if state is None:
            result.append(TableStatus(f"event trigger {name}", State.MISSING, "auditdb apply recreates it"))
        elif state != "A":
            result.append(TableStatus(f"event trigger {name}", State.DISABLED, "auditdb apply enables it ALWAYS"))
    return result


# Recreates auditdb's event triggers where missing or not ALWAYS (sql/definitions/watch.sql).
def _plans_or_states(conn: psycopg.Connection[Any], config: Config) -> tuple[list[TablePlan], list[TableStatus]]:
    """Each configured table resolved; one that cannot be (renamed, dropped) becomes a state, not an abort."""
    plans: list[TablePlan] = []
    broken: list[TableStatus] = []
    for table in config.tables:
        try:
            plans.append(resolve_table(conn, table, config.defaults))
        except AuditDBError as e:
            # The table the registry knew under the configured name, now under another one.
            now = conn.execute(
                """select format('%%I.%%I', n.nspname, c.relname) from auditdb.tracked_tables t
                     join pg_catalog.pg_class c on c.oid = t.relid
                     join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                    where t.table_name = format('%%I.%%I', %s::text, %s::text)
                      and t.table_name <> format('%%I.%%I', n.nspname, c.relname)""",
                (table.schema, table.table),
            ).fetchone()
            if now:
                broken.append(
                    TableStatus(table.qualified, State.MISSING, f"renamed to {now[0]} since apply: update auditdb.toml")
                )
                continue
            # Still there and captured as the last apply left it, but apply would refuse the config now.
            captured = conn.execute(
                """select exists (select from auditdb.tracked_tables t
                                   where t.relid = pg_catalog.to_regclass(format('%%I.%%I', %s::text, %s::text)))""",
                (table.schema, table.table),
            ).fetchone()
            if captured and captured[0]:
                broken.append(TableStatus(table.qualified, State.OUTDATED, f"apply refuses the config: {e}"))
            else:
                broken.append(TableStatus(table.qualified, State.MISSING, str(e)))
    return plans, broken


def status(conn: psycopg.Connection[Any], config: Config | None) -> list[TableStatus]:
    """Each configured table's state, then tables captured but no longer configured.

    Event triggers that are missing or not ALWAYS come first: they keep capture complete. A
    configured table that is gone or renamed is reported as such; the others are still checked.
    """
    with pinned(conn, lock_timeout="5s"):
        return _status(conn, config)


def _status(conn: psycopg.Connection[Any], config: Config | None) -> list[TableStatus]:
    found = installed_captures(conn)
    result = event_trigger_status(conn)
    configured: set[int] = set()
    plans, broken = _plans_or_states(conn, config) if config else ([], [])
    for plan in plans:
        configured.add(plan.oid)
        state = table_state(conn, plan, found.get(plan.oid, []))
        # Said for every state, so a table taking its tenant from the context is never silent.
        result.append(replace(state, detail="; ".join(d for d in (state.detail, *plan.notes) if d)))
    result.extend(broken)
    registered = {int(r[0]) for r in conn.execute("select relid::oid from auditdb.tracked_tables").fetchall()}
    renamed = registered if broken else set()
    pending = {
        int(r[0])
        for r in conn.execute("select inhrelid::oid from pg_catalog.pg_inherits where inhdetachpending").fetchall()
    }
    for root in sorted((set(found) | registered) - configured):
        if root in renamed or root in pending:
            continue  # reported above, under its configured name or its table
        detail = (
            "captured but not configured"
            if root in found
            else "registered but not configured (its capture triggers were dropped)"
        )
        result.append(TableStatus(relation_name(conn, root), State.NOT_IN_CONFIG, detail))
    return result


def relation_name(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute(
        """select n.nspname, c.relname from pg_catalog.pg_class c
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s::oid""",
        (oid,),
    ).fetchone()
    return qualified(str(row[0]), str(row[1])) if row else str(oid)
