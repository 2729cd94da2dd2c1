"""Capture triggers: resolve the config against the catalog, render, check, plan, apply, status."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import resources
from typing import Any

import jinja2
import pglast
import psycopg
from psycopg import sql

from auditdb.columns import BUILTIN, Column, read_columns
from auditdb.config import Config, Defaults, TableConfig, glob_regex, matches
from auditdb.context import CONTEXT_BOUNDS
from auditdb.errors import AuditDBError, ConfigError, NotAuditableError
from auditdb.expressions import Expression
from auditdb.names import CAPTURE_TRIGGERS, capture_function_name, qualified
from auditdb.upgrade import CONFIG_FORMAT

__all__ = ["ApplyResult", "State", "TablePlan", "TableStatus", "apply", "plan_tables", "render_sql", "status"]

# Bump when the template's output changes, so `status` calls existing installs outdated.
TEMPLATE_VERSION = "3"
BOOL_OID = 16
SIGNATURE_PREFIX = "auditdb:"


class State(Enum):
    INSTALLED = "installed"
    OUTDATED = "outdated"
    MISSING = "missing"
    DISABLED = "disabled"
    NOT_IN_CONFIG = "not in config"


@dataclass(frozen=True)
class TablePlan:
    """A tracked table resolved against the database, with the SQL that captures it."""

    config: TableConfig
    oid: int
    partitioned: bool
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    partitions: tuple[tuple[str, str], ...]
    function: str
    install_sql: str
    uninstall_sql: str
    signature: str
    resolved: dict[str, Any] = field(default_factory=dict)
    partition_oids: tuple[int, ...] = ()

    @property
    def targets(self) -> list[tuple[str, str]]:
        return [(self.config.schema, self.config.table), *self.partitions]


@dataclass(frozen=True)
class TableStatus:
    table: str
    state: State
    detail: str = ""


@dataclass(frozen=True)
class ApplyResult:
    sql: str
    added: list[str]
    replaced: list[str]
    removed: list[str]
    unchanged: list[str]


_env = jinja2.Environment(
    loader=jinja2.FunctionLoader(
        lambda name: (resources.files("auditdb.sql") / "templates" / name).read_text(encoding="utf-8")
    ),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def _ident(*names: str) -> str:
    return sql.Identifier(*names).as_string()


def _lit(value: Any) -> str:
    return sql.Literal(value).as_string()


def _resolve_table(conn: psycopg.Connection[Any], cfg: TableConfig, defaults: Defaults) -> TablePlan:
    row = conn.execute(
        """select c.oid, c.relkind, c.relispartition from pg_catalog.pg_class c
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %s and c.relname = %s""",
        (cfg.schema, cfg.table),
    ).fetchone()
    if row is None:
        raise ConfigError(f"table {cfg.qualified} does not exist")
    oid, relkind, is_partition = row
    if relkind not in ("r", "p"):
        raise NotAuditableError(f"{cfg.qualified} cannot be audited because it is not a table (relkind {relkind})")
    if is_partition:
        raise NotAuditableError(
            f"{cfg.qualified} is a partition: track its partitioned table instead (its partitions are captured with it)"
        )
    columns = [
        replace(
            c,
            mask="full" if matches(c.name, cfg.mask) else "last4" if matches(c.name, cfg.mask_last4) else None,
            ignored=matches(c.name, cfg.ignore),
        )
        for c in read_columns(conn, oid)
    ]
    by_name = {c.name: c for c in columns}
    names = list(by_name)

    def known(column: str, what: str) -> str:
        if column not in by_name:
            raise ConfigError(f"{cfg.qualified}: {what} names unknown column {column!r} (columns: {', '.join(names)})")
        return column

    pk = conn.execute(
        """select array_agg(a.attname order by k.ord)
             from pg_catalog.pg_index i
             cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
             join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
            where i.indrelid = %s and i.indisprimary""",
        (oid,),
    ).fetchone()
    key = tuple(known(c, "id") for c in cfg.id) if cfg.id else tuple(pk[0]) if pk and pk[0] else ()
    if not key:
        raise NotAuditableError(
            f'table {cfg.qualified} cannot be audited because it has no primary key: set id = ["column", …] for it'
        )
    masked = {c.name for c in columns if c.mask}
    name_expr = cfg.name
    if name_expr is not None:
        for _, column in name_expr.columns:
            known(column, "name")
    else:
        default = next((c for c in ("name", "title", "label") if c in by_name and c not in masked), None)
        if default:
            from auditdb.expressions import parse_expression

            name_expr = parse_expression(_ident(default), what=f"{cfg.qualified}.name")
    for rule in cfg.rules:
        if rule.when is not None:
            for _, column in rule.when.columns:
                known(column, f"rule for {rule.action}")
    project = known(cfg.project, "project") if cfg.project else None
    tenant = cfg.tenant if cfg.tenant and cfg.tenant in by_name else None
    soft_delete = known(cfg.soft_delete, "soft_delete") if cfg.soft_delete else None
    for what, used in (
        ("id", set(key)),
        ("name", {c for _, c in name_expr.columns} if name_expr else set()),
        ("project", {project} if project else set()),
        ("tenant", {tenant} if tenant else set()),
    ):
        leaked = sorted(used & masked)
        if leaked:
            raise ConfigError(
                f"{cfg.qualified}: {what} uses masked column(s) {', '.join(leaked)}: it would reveal them"
            )
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

    def seen(alias: str, column: str) -> str | None:
        col = by_name[column]
        return None if col.kind == BUILTIN else col.seen_by_expressions(alias)

    def uses(expression: Expression | None, extra: tuple[str, ...] = ()) -> list[list[Any]]:
        used = sorted({c for _, c in expression.columns} if expression else set()) + list(extra)
        return [[by_name[c].attnum, c, by_name[c].type_oid] for c in used]

    soft_sql = None
    if soft_delete:
        col = by_name[soft_delete]
        # Set means true for a boolean column, not null for any other (a deletion timestamp).
        if col.type_oid == BOOL_OID:
            soft_sql = (
                sql.SQL("(o.{c} is not true and n.{c} is true)").format(c=sql.Identifier(soft_delete)).as_string()
            )
        else:
            soft_sql = f"({col.seen_by_expressions('o')} is null and {col.seen_by_expressions('n')} is not null)"
    function = capture_function_name(cfg.schema, cfg.table)
    targets = [(cfg.schema, cfg.table, oid), *partitions]
    name_sql = {"n": name_expr.render({"": "n"}, seen), "o": name_expr.render({"": "o"}, seen)} if name_expr else None
    rules = [
        {
            "on": r.on,
            "action": r.action,
            "when": r.when.render({"old": "o", "new": "n"}, seen) if r.when else None,
            "uses": uses(r.when),
        }
        for event in ("INSERT", "UPDATE", "DELETE")
        for r in cfg.rules
        if r.on == event
    ]

    strays = _stray_triggers(conn, function, [relid for _, _, relid in targets])

    def row_column(column: str | None) -> dict[str, str] | None:
        return {"n": by_name[column].text("n"), "o": by_name[column].text("o")} if column else None

    context = {
        "function": _ident("auditdb", function),
        "table_lit": _lit(_ident(cfg.schema, cfg.table)),
        "table_name": _lit(cfg.qualified),
        "entity_type": _lit(cfg.entity_type),
        "partitioned": relkind == "p",
        "columns": [
            {
                "lit": _lit(c.name),
                "value_n": c.value("n"),
                "value_o": c.value("o"),
                "changed": c.changed(),
                "ignored": c.ignored,
            }
            for c in columns
        ],
        "key": [
            {
                "lit": _lit(k),
                "text_n": by_name[k].text("n"),
                "text_o": by_name[k].text("o"),
                "value_n": by_name[k].value("n", masked=False),
                "value_o": by_name[k].value("o", masked=False),
                "same": by_name[k].same(),
            }
            for k in key
        ],
        "name": name_sql,
        "project": row_column(project),
        "tenant": row_column(tenant),
        "soft_delete": soft_sql,
        "rules": {
            event: [{"action": _lit(r["action"]), "when": r["when"]} for r in rules if r["on"] == event]
            for event in ("INSERT", "UPDATE", "DELETE")
        },
        "require_actor": defaults.require_actor,
        "system_roles": "array[" + ", ".join(_lit(r) for r in defaults.system_roles) + "]::text[]",
        "context": [(f"ctx_{field}", field, bound) for field, bound in CONTEXT_BOUNDS.items() if field != "ip"],
        "ip_bound": CONTEXT_BOUNDS["ip"],
        "targets": [_ident(s, t) for s, t, _ in targets],
        "stray_triggers": {_ident(s, t): strays[relid] for s, t, relid in targets if relid in strays},
        "triggers": CAPTURE_TRIGGERS,
    }
    resolved = {
        # What the generic capture function (used after a schema change) and the DDL watchers need:
        # settings, rendered expressions with the columns (by number) they were written for, and
        # how to treat columns added later.
        "format": CONFIG_FORMAT,
        "entity_type": cfg.entity_type,
        "columns": [[c.name, c.type_oid, c.typmod] for c in columns],
        "key": [[by_name[k].attnum, k] for k in key],
        "masked_full_attnums": [c.attnum for c in columns if c.mask == "full"],
        "masked_last4_attnums": [c.attnum for c in columns if c.mask == "last4"],
        "mask_regex": [glob_regex(g) for g in cfg.mask],
        "mask_last4_regex": [glob_regex(g) for g in cfg.mask_last4],
        "ignore_regex": [glob_regex(g) for g in cfg.ignore],
        "project": [by_name[project].attnum, project] if project else None,
        "tenant": [by_name[tenant].attnum, tenant] if tenant else None,
        "soft_delete": {"sql": soft_sql, "uses": uses(None, (soft_delete,))} if soft_sql and soft_delete else None,
        "name": {**name_sql, "uses": uses(name_expr)} if name_sql else None,
        "rules": rules,
        "require_actor": defaults.require_actor,
        "system_roles": list(defaults.system_roles),
    }
    return _finish(
        cfg,
        oid,
        relkind == "p",
        tuple(columns),
        key,
        tuple((s, t) for s, t, _ in partitions),
        function,
        context,
        resolved,
        [relid for _, _, relid in partitions],
    )


def _stray_triggers(conn: psycopg.Connection[Any], function: str, relids: list[int]) -> dict[int, list[str]]:
    """Capture triggers renamed away from their names, by table: apply drops them (else they capture twice)."""
    rows = conn.execute(
        """select t.tgrelid::int8, t.tgname from pg_catalog.pg_trigger t
            where t.tgrelid = any(%s::oid[]) and t.tgfoid = pg_catalog.to_regprocedure(%s)
              and not (t.tgname = any(%s))""",
        (relids, f"auditdb.{_ident(function)}()", list(CAPTURE_TRIGGERS.values())),
    ).fetchall()
    stray: dict[int, list[str]] = {}
    for relid, name in rows:
        stray.setdefault(int(relid), []).append(_ident(str(name)))
    return stray


def _finish(
    cfg: TableConfig,
    oid: int,
    partitioned: bool,
    columns: tuple[Column, ...],
    key: tuple[str, ...],
    partitions: tuple[tuple[str, str], ...],
    function: str,
    context: dict[str, Any],
    resolved: dict[str, Any],
    partition_oids: list[int],
) -> TablePlan:
    draft = _env.get_template("capture.sql.j2").render(**context, signature="'auditdb:pending'")
    digest = hashlib.sha256(draft.encode()).hexdigest()[:16]
    signature = f"{SIGNATURE_PREFIX}{TEMPLATE_VERSION}:{digest}"
    install_sql = _env.get_template("capture.sql.j2").render(**context, signature=_lit(signature))
    uninstall_sql = _env.get_template("uncapture.sql.j2").render(
        targets=context["targets"], triggers=CAPTURE_TRIGGERS, functions=[context["function"]]
    )
    check_sql(install_sql)
    check_sql(uninstall_sql)
    return TablePlan(
        cfg,
        oid,
        partitioned,
        columns,
        key,
        partitions,
        function,
        install_sql,
        uninstall_sql,
        signature,
        resolved,
        tuple(partition_oids),
    )


def check_sql(text: str) -> None:
    """Parse rendered SQL (and PL/pgSQL bodies) with pglast before it is shown or run."""
    try:
        pglast.parse_sql(text)
        if "create or replace function" in text:
            pglast.parse_plpgsql(text)
    except pglast.parser.ParseError as e:
        raise AuditDBError(f"internal error: generated SQL does not parse ({e}); please report it") from e


def plan_tables(conn: psycopg.Connection[Any], config: Config) -> list[TablePlan]:
    """Resolve every configured table; errors name the table and the problem."""
    return [_resolve_table(conn, table, config.defaults) for table in config.tables]


def render_sql(plans: list[TablePlan]) -> str:
    return "\n".join(p.install_sql for p in plans)


def _installed(conn: psycopg.Connection[Any]) -> dict[int, list[tuple[int, str, str, str | None]]]:
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


def _table_state(
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
        """select pg_catalog.obj_description(p.oid, 'pg_proc'), p.prosecdef and p.proowner = 'auditdb_capture'::regrole
             from pg_catalog.pg_proc p where p.oid = pg_catalog.to_regprocedure(%s)""",
        (f"auditdb.{_ident(plan.function)}()",),
    ).fetchone()
    if function is None:
        return TableStatus(name, State.OUTDATED, "capture function missing")
    if function[0] == "auditdb:generic":
        return TableStatus(
            name, State.OUTDATED, "table changed since apply (or auditdb upgraded): generic capture in use, run apply"
        )
    if not function[1]:
        return TableStatus(name, State.OUTDATED, "capture function not as apply made it (owner or security changed)")
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
REPAIR_EVENT_TRIGGERS = "select auditdb.ensure_event_triggers();"


def _plans_or_states(conn: psycopg.Connection[Any], config: Config) -> tuple[list[TablePlan], list[TableStatus]]:
    """Each configured table resolved; one that cannot be (renamed, dropped) becomes a state, not an abort."""
    plans: list[TablePlan] = []
    broken: list[TableStatus] = []
    for table in config.tables:
        try:
            plans.append(_resolve_table(conn, table, config.defaults))
        except AuditDBError as e:
            now = conn.execute(
                """select format('%%I.%%I', n.nspname, c.relname) from auditdb.tracked_tables t
                     join pg_catalog.pg_class c on c.oid = t.relid
                     join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                    where t.table_name = %s""",
                (table.qualified,),
            ).fetchone()
            detail = (
                f"renamed to {now[0]} since apply: update auditdb.toml" if now and now[0] != table.qualified else str(e)
            )
            broken.append(TableStatus(table.qualified, State.MISSING, detail))
    return plans, broken


def status(conn: psycopg.Connection[Any], config: Config | None) -> list[TableStatus]:
    """Each configured table's state, then tables captured but no longer configured.

    Event triggers that are missing or not ALWAYS come first: they keep capture complete. A
    configured table that is gone or renamed is reported as such; the others are still checked.
    """
    found = _installed(conn)
    result = event_trigger_status(conn)
    configured: set[int] = set()
    plans, broken = _plans_or_states(conn, config) if config else ([], [])
    for plan in plans:
        configured.add(plan.oid)
        result.append(_table_state(conn, plan, found.get(plan.oid, [])))
    result.extend(broken)
    renamed = (
        {int(r[0]) for r in conn.execute("select relid::oid from auditdb.tracked_tables").fetchall()}
        if broken
        else set()
    )
    for root in sorted(set(found) - configured):
        if root in renamed:
            continue  # reported above under its configured name
        result.append(TableStatus(_regclass(conn, root), State.NOT_IN_CONFIG, "captured but not configured"))
    return result


def apply(conn: psycopg.Connection[Any], config: Config, *, dry_run: bool = False) -> ApplyResult:
    """Make the database's capture match the config, in one transaction."""
    with conn.transaction():
        conn.execute("select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('auditdb.apply'))")
        # Names in what follows resolve to PostgreSQL's own objects, never to ones planted elsewhere.
        conn.execute("set local search_path = pg_catalog, pg_temp")
        plans = plan_tables(conn, config)
        found = _installed(conn)
        statements: list[str] = []
        added: list[str] = []
        replaced: list[str] = []
        unchanged: list[str] = []
        removed: list[str] = []
        for plan in plans:
            state = _table_state(conn, plan, found.get(plan.oid, [])).state
            if state is State.INSTALLED:
                unchanged.append(plan.config.qualified)
                continue
            (added if state is State.MISSING else replaced).append(plan.config.qualified)
            statements.append(plan.install_sql)
        if event_trigger_status(conn):
            statements.insert(0, REPAIR_EVENT_TRIGGERS)
            replaced.extend(name for name in EVENT_TRIGGERS)
        configured = {p.oid for p in plans}
        for root in sorted(set(found) - configured):
            statements.append(_uninstall_orphan(conn, root))
            removed.append(_regclass(conn, root))
        text = "\n".join(statements)
        if dry_run:
            return ApplyResult(text, added, replaced, removed, unchanged)
        # Mark the transaction as auditdb's own while it runs, so the event triggers do not log
        # each trigger it replaces; the whole apply is logged once below instead.
        conn.execute("select auditdb.begin_maintenance()")
        if text:
            conn.execute(text.encode())
            conn.execute(
                "select auditdb.log_audit_change('AuditConfig', 'apply', 'auditdb apply', null, %s)",
                (json.dumps({"operation": "apply", "added": added, "updated": replaced, "removed": removed}),),
            )
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
                """insert into auditdb.tracked_tables (relid, table_name, function_name, config, signature, partitions)
                   values (%s, %s, %s, %s, %s, %s)
                   on conflict (relid) do update
                   set table_name = excluded.table_name, function_name = excluded.function_name,
                       config = excluded.config, signature = excluded.signature, partitions = excluded.partitions,
                       applied_at = case when auditdb.tracked_tables.signature is distinct from excluded.signature
                                         then now() else auditdb.tracked_tables.applied_at end""",
                (
                    plan.oid,
                    plan.config.qualified,
                    plan.function,
                    json.dumps(plan.resolved),
                    plan.signature,
                    list(plan.partition_oids),
                ),
            )
        conn.execute("select auditdb.end_maintenance()")
    return ApplyResult(text, added, replaced, removed, unchanged)


def _regclass(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute(
        """select n.nspname, c.relname from pg_catalog.pg_class c
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s""",
        (oid,),
    ).fetchone()
    return qualified(str(row[0]), str(row[1])) if row else str(oid)


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
        """select distinct p.proname from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid
            where t.tgname = any(%s) and coalesce(pg_catalog.pg_partition_root(t.tgrelid), t.tgrelid) = %s::oid
              and p.pronamespace = 'auditdb'::regnamespace""",
        (list(CAPTURE_TRIGGERS.values()), root),
    ).fetchall()
    text = _env.get_template("uncapture.sql.j2").render(
        targets=[str(t[0]) for t in targets],
        triggers=CAPTURE_TRIGGERS,
        functions=[_ident("auditdb", str(f[0])) for f in functions],
    )
    check_sql(text)
    return text
