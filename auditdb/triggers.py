"""Capture triggers in the database: apply (add, update, remove); their state is auditdb.status's."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg

from auditdb.config import Config, defaults_near_misses, defaults_slips, glob_regex
from auditdb.db import pinned
from auditdb.errors import ConfigError, PermissionDenied
from auditdb.names import CAPTURE_TRIGGERS
from auditdb.plan import TablePlan, check_sql, ident, plan_tables, render_sql, template
from auditdb.status import EVENT_TRIGGERS, State, event_trigger_status, installed_captures, relation_name, table_state

__all__ = ["ApplyResult", "TablePlan", "apply", "plan_tables", "render_sql", "require_superuser"]


@dataclass(frozen=True)
class ApplyResult:
    sql: str
    added: list[str]
    replaced: list[str]
    removed: list[str]
    unchanged: list[str]
    # Captured but no longer configured, left captured (removing needs remove=True / --remove)
    kept: list[str] = field(default_factory=list)
    # Slips apply proceeds past (a [defaults] glob matching no column…), and per-table facts a
    # user should know (a tenant taken from the session context)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Columns the installed capture masked that this apply logs in clear (or only last-4 masked),
    # by table: only with allow_unmask (--unmask), and recorded in the apply's AUDIT_CHANGED entry
    unmasked: dict[str, list[str]] = field(default_factory=dict)
    weakened: dict[str, list[str]] = field(default_factory=dict)


def _unknown_system_roles(conn: psycopg.Connection[Any], config: Config) -> list[str]:
    """A system_roles entry naming no role exempts nobody: a typo would make require_actor refuse a migrator."""
    names = list(config.defaults.system_roles)
    if not names:
        return []
    found = {
        str(r[0])
        for r in conn.execute("select rolname from pg_catalog.pg_roles where rolname = any(%s)", (names,)).fetchall()
    }
    return [
        f"[defaults] system_roles names role {name!r}, which does not exist: it exempts nobody"
        for name in names
        if name not in found
    ]


REPAIR_EVENT_TRIGGERS = "select auditdb.ensure_event_triggers();"


def require_superuser(conn: psycopg.Connection[Any]) -> None:
    """Refuse, before anything is read or changed, unless the session's role is a superuser."""
    row = conn.execute("select pg_catalog.current_setting('is_superuser'), current_user").fetchone()
    if row is None or row[0] != "on":
        raise PermissionDenied(
            "permission denied: `auditdb apply` needs a superuser (it creates triggers on your tables and "
            f"capture functions owned by auditdb_capture); role {row[1] if row else '?'} is not one"
        )


def _installed_mask(stored: dict[str, Any], attnum: int, name: str) -> str | None:
    """How the capture apply installed (from its registry config) masks a column: as the generic
    capture reads it, by number as resolved at apply, or by the globs on its name now."""

    def by_glob(key: str) -> bool:
        return any(re.fullmatch(str(rx), name, re.DOTALL) for rx in stored.get(key) or [])

    if attnum in (stored.get("masked_full_attnums") or []) or by_glob("mask_regex"):
        return "full"
    if attnum in (stored.get("masked_last4_attnums") or []) or by_glob("mask_last4_regex"):
        return "last4"
    return None


def _unmasking(
    conn: psycopg.Connection[Any], plans: list[TablePlan]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Columns the installed capture masks that the config would not, by table: (logged in clear
    from now on, fully masked until now but only last-4 masked from now on)."""
    stored = {
        int(relid): config
        for relid, config in conn.execute(
            "select relid::oid, config from auditdb.tracked_tables where relid::oid = any(%s::oid[])",
            ([p.oid for p in plans],),
        ).fetchall()
        if isinstance(config, dict)
    }
    clear: dict[str, list[str]] = {}
    weaker: dict[str, list[str]] = {}
    for plan in plans:
        before = stored.get(plan.oid)
        if before is None:
            continue
        for column in plan.columns:
            was = _installed_mask(before, column.attnum, column.name)
            if was is not None and column.mask is None:
                clear.setdefault(plan.config.qualified, []).append(column.name)
            elif was == "full" and column.mask == "last4":
                weaker.setdefault(plan.config.qualified, []).append(column.name)
    return clear, weaker


def _unmask_refusal(clear: dict[str, list[str]], weaker: dict[str, list[str]]) -> str:
    """One line: which columns the config stops masking, and how to go on."""
    parts = []
    for table in sorted(set(clear) | set(weaker)):
        said = []
        if table in clear:
            said.append(f"{', '.join(map(repr, clear[table]))} would be logged in clear")
        if table in weaker:
            said.append(f"{', '.join(map(repr, weaker[table]))} only last-4 masked")
        parts.append(f"{table}: column(s) {' and '.join(said)}")
    return (
        f"{'; '.join(parts)}, though the installed capture masks them (a mask glob was removed or changed): "
        "restore the glob, or run apply --unmask to log them in clear from now on"
    )


def apply(
    conn: psycopg.Connection[Any],
    config: Config,
    *,
    dry_run: bool = False,
    remove: bool = False,
    allow_unmask: bool = False,
) -> ApplyResult:
    """Make the database's capture match the config, in one transaction.

    A table captured (or registered) but no longer configured keeps its capture unless remove:
    an empty or mistyped config never turns auditing off by itself. Its name is in `kept`.
    A column the installed capture masks that the config would log in clear (or only last-4
    masked) is refused unless allow_unmask (`apply --unmask`): a mask glob lost by mistake would
    otherwise put secrets in the log for good. When allowed, the columns are in `unmasked` and
    `weakened`, warned of, and recorded in the apply's AUDIT_CHANGED entry.
    """
    require_superuser(conn)
    # Names in what follows resolve to PostgreSQL's own objects, never to ones planted elsewhere.
    with pinned(conn):
        conn.execute("select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('auditdb.apply'))")
        plans = plan_tables(conn, config)
        refused = defaults_near_misses(
            config, (c for p in plans for c in p.every_column), (c.name for p in plans for c in p.columns if not c.mask)
        )
        if refused:
            raise ConfigError("; ".join(refused))
        unmasked, weakened = _unmasking(conn, plans)
        if (unmasked or weakened) and not allow_unmask:
            raise ConfigError(_unmask_refusal(unmasked, weakened))
        warnings = [w for p in plans for w in p.warnings]
        warnings += defaults_slips(config, (c for p in plans for c in p.every_column))
        warnings += _unknown_system_roles(conn, config)
        warnings += [
            f"{table}: column(s) {', '.join(map(repr, columns))} no longer masked: logged in clear from now on"
            for table, columns in sorted(unmasked.items())
        ]
        warnings += [
            f"{table}: column(s) {', '.join(map(repr, columns))} only last-4 masked from now on "
            "(fully masked until now)"
            for table, columns in sorted(weakened.items())
        ]
        notes = [f"{p.config.qualified}: {n}" for p in plans for n in p.notes]
        found = installed_captures(conn)
        statements: list[str] = []
        added: list[str] = []
        replaced: list[str] = []
        unchanged: list[str] = []
        removed: list[str] = []
        kept: list[str] = []
        for plan in plans:
            state = table_state(conn, plan, found.get(plan.oid, [])).state
            if state is State.INSTALLED:
                unchanged.append(plan.config.qualified)
                continue
            (added if state is State.MISSING else replaced).append(plan.config.qualified)
            statements.append(plan.install_sql)
        if event_trigger_status(conn):
            statements.insert(0, REPAIR_EVENT_TRIGGERS)
            replaced.extend(name for name in EVENT_TRIGGERS)
        configured = {p.oid for p in plans}
        # A registered table whose triggers were dropped outside apply still counts: the watchers
        # put them back at its next DDL, so forgetting it would end its capture too.
        registered = {int(r[0]) for r in conn.execute("select relid::oid from auditdb.tracked_tables").fetchall()}
        for root in sorted((set(found) | registered) - configured):
            if remove:
                statements.append(_uninstall_orphan(conn, root))
                removed.append(relation_name(conn, root))
            else:
                kept.append(relation_name(conn, root))
        text = "\n".join(statements)
        result = ApplyResult(text, added, replaced, removed, unchanged, kept, warnings, notes, unmasked, weakened)
        if dry_run:
            return result
        # Mark the transaction as auditdb's own while it runs, so the event triggers do not log
        # each trigger it replaces; the whole apply is logged once below instead.
        conn.execute("select auditdb.begin_maintenance()")
        if text:
            conn.execute(text.encode())
            change: dict[str, Any] = {"operation": "apply", "added": added, "updated": replaced, "removed": removed}
            # Who turned a mask off, and when, stays in the log with the first entries it let through.
            if unmasked:
                change["unmasked"] = unmasked
            if weakened:
                change["masked_last4"] = weakened
            conn.execute(
                "select auditdb.log_audit_change('AuditConfig', 'apply', 'auditdb apply', null, %s)",
                (json.dumps(change),),
            )
        if remove:
            conn.execute("delete from auditdb.tracked_tables where not (relid::oid = any(%s))", (list(configured),))
        defaults = config.defaults
        settings = {
            # Event metadata is masked with the same globs (auditdb.emit reads them from here).
            "mask_regex": [glob_regex(g) for g in defaults.mask],
            "mask_last4_regex": [glob_regex(g) for g in defaults.mask_last4],
            # The DDL watchers read these.
            "refuse_data_ddl": defaults.refuse_data_ddl,
            "system_roles": list(defaults.system_roles),
        }
        for name, value in settings.items():
            conn.execute(
                """insert into auditdb.settings (name, value) values (%s, %s)
                   on conflict (name) do update set value = excluded.value""",
                (name, json.dumps(value)),
            )
        for plan in plans:
            conn.execute(
                """insert into auditdb.tracked_tables (relid, table_name, function_name, config, signature, partitions,
                                                      children)
                   values (%s, %s, %s, %s, %s, %s,
                           array(select i.inhrelid from pg_catalog.pg_inherits i
                                   join pg_catalog.pg_class c on c.oid = i.inhrelid
                                  where i.inhparent = %s::oid and not c.relispartition order by 1))
                   on conflict (relid) do update
                   set table_name = excluded.table_name, function_name = excluded.function_name,
                       config = excluded.config, signature = excluded.signature, partitions = excluded.partitions,
                       children = excluded.children,
                       applied_at = case when auditdb.tracked_tables.signature is distinct from excluded.signature
                                         then now() else auditdb.tracked_tables.applied_at end""",
                (
                    plan.oid,
                    plan.table_name,
                    plan.function,
                    json.dumps(plan.resolved),
                    plan.signature,
                    list(plan.partition_oids),
                    plan.oid,
                ),
            )
        conn.execute("select auditdb.end_maintenance()")
    return result


def _uninstall_orphan(conn: psycopg.Connection[Any], root: int) -> str:
    targets = conn.execute(
        # pg_partition_tree() has no rows for a table that is not partitioned: add the root.
        """select format('%%I.%%I', n.nspname, c.relname)
             from (select %s::oid as relid union select relid from pg_catalog.pg_partition_tree(%s)) p
             join pg_catalog.pg_class c on c.oid = p.relid
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace""",
        (root, root),
    ).fetchall()
    functions = conn.execute(
        """select p.proname from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid
            where t.tgname = any(%s) and coalesce(pg_catalog.pg_partition_root(t.tgrelid), t.tgrelid) = %s::oid
              and p.pronamespace = 'auditdb'::regnamespace
           union  -- the registered one, whose triggers may have been dropped outside apply
           select r.function_name from auditdb.tracked_tables r
            where r.relid::oid = %s::oid and r.function_name like 'auditdb\\_capture\\_%%'""",
        (list(CAPTURE_TRIGGERS.values()), root, root),
    ).fetchall()
    text = template("uncapture.sql.j2").render(
        targets=[str(t[0]) for t in targets],
        triggers=CAPTURE_TRIGGERS,
        functions=[ident("auditdb", str(f[0])) for f in functions],
    )
    check_sql(text)
    return text
