"""Capture triggers: resolve the config against the catalog, render, check, plan, apply, status."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

import jinja2
import pglast
import psycopg
from psycopg import sql

from auditdb.config import Config, Defaults, TableConfig, glob_regex, matches
from auditdb.errors import AuditDBError, ConfigError, NotAuditableError
from auditdb.names import CAPTURE_TRIGGERS, capture_function_name, qualified

__all__ = ["ApplyResult", "State", "TablePlan", "TableStatus", "apply", "plan_tables", "render_sql", "status"]

# Bump when the template's output changes, so `status` calls existing installs outdated.
TEMPLATE_VERSION = "2"
SIGNATURE_PREFIX = "auditdb:"


class State(Enum):
    INSTALLED = "installed"
    OUTDATED = "outdated"
    MISSING = "missing"
    DISABLED = "disabled"
    NOT_IN_CONFIG = "not in config"


@dataclass(frozen=True)
class Column:
    name: str
    attnum: int
    type: str
    comparable: bool
    mask: str | None  # "full", "last4" or None
    ignored: bool


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
    attrs = conn.execute(
        """select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnum
             from pg_catalog.pg_attribute a
            where a.attrelid = %s and a.attnum > 0 and not a.attisdropped
            order by a.attnum""",
        (oid,),
    ).fetchall()
    names = [str(a[0]) for a in attrs]

    def known(column: str, what: str) -> str:
        if column not in names:
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
    comparable: dict[str, bool] = {}
    columns = []
    for name, type_sql, attnum in attrs:
        if type_sql not in comparable:
            comparable[type_sql] = _has_equality(conn, type_sql)
        mask = "full" if matches(name, cfg.mask) else "last4" if matches(name, cfg.mask_last4) else None
        columns.append(Column(name, attnum, type_sql, comparable[type_sql], mask, matches(name, cfg.ignore)))
    masked = {c.name for c in columns if c.mask}
    name_expr = cfg.name
    if name_expr is not None:
        for _, column in name_expr.columns:
            known(column, "name")
    else:
        default = next((c for c in ("name", "title", "label") if c in names and c not in masked), None)
        if default:
            from auditdb.expressions import parse_expression

            name_expr = parse_expression(_ident(default), what=f"{cfg.qualified}.name")
    for rule in cfg.rules:
        if rule.when is not None:
            for _, column in rule.when.columns:
                known(column, f"rule for {rule.action}")
    project = known(cfg.project, "project") if cfg.project else None
    tenant = cfg.tenant if cfg.tenant and cfg.tenant in names else None
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
        (str(s), str(t))
        for s, t in conn.execute(
            """select n.nspname, c.relname from pg_catalog.pg_partition_tree(%s) p
                 join pg_catalog.pg_class c on c.oid = p.relid
                 join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                where p.relid <> %s::regclass order by p.level, c.relname""",
            (oid, oid),
        ).fetchall()
    )
    soft_sql = None
    if soft_delete:
        col = next(c for c in columns if c.name == soft_delete)
        # Set means true for a boolean column, not null for any other (a deletion timestamp).
        soft_sql = (
            (
                sql.SQL("(o.{c} is not true and n.{c} is true)")
                if col.type == "boolean"
                else sql.SQL("(o.{c} is null and n.{c} is not null)")
            )
            .format(c=sql.Identifier(soft_delete))
            .as_string()
        )
    function = capture_function_name(cfg.schema, cfg.table)
    context = {
        "function": _ident("auditdb", function),
        "table_lit": _lit(_ident(cfg.schema, cfg.table)),
        "table_name": _lit(cfg.qualified),
        "entity_type": _lit(cfg.entity_type),
        "partitioned": relkind == "p",
        "columns": [
            {
                "ident": _ident(c.name),
                "lit": _lit(c.name),
                "mask": c.mask,
                "ignored": c.ignored,
                # Types without equality (json, xml, point…) are compared as text.
                "changed": (
                    sql.SQL("o.{c} is distinct from n.{c}")
                    if c.comparable
                    else sql.SQL("o.{c}::text is distinct from n.{c}::text")
                )
                .format(c=sql.Identifier(c.name))
                .as_string(),
            }
            for c in columns
        ],
        "key": [{"ident": _ident(k), "lit": _lit(k)} for k in key],
        "name": {"n": name_expr.render({"": "n"}), "o": name_expr.render({"": "o"})} if name_expr else None,
        "project": _ident(project) if project else None,
        "tenant": _ident(tenant) if tenant else None,
        "project_column": project,
        "tenant_column": tenant,
        "system_role_names": defaults.system_roles,
        "soft_delete": soft_sql,
        "rules": {
            event: [
                {"action": _lit(r.action), "when": r.when.render({"old": "o", "new": "n"}) if r.when else None}
                for r in cfg.rules
                if r.on == event
            ]
            for event in ("INSERT", "UPDATE", "DELETE")
        },
        "require_actor": defaults.require_actor,
        "system_roles": "array[" + ", ".join(_lit(r) for r in defaults.system_roles) + "]::text[]",
        "targets": [_ident(s, t) for s, t in [(cfg.schema, cfg.table), *partitions]],
        "triggers": CAPTURE_TRIGGERS,
    }
    return _finish(cfg, oid, relkind == "p", tuple(columns), key, partitions, function, context)


def _finish(
    cfg: TableConfig,
    oid: int,
    partitioned: bool,
    columns: tuple[Column, ...],
    key: tuple[str, ...],
    partitions: tuple[tuple[str, str], ...],
    function: str,
    context: dict[str, Any],
) -> TablePlan:
    draft = _env.get_template("capture.sql.j2").render(**context, signature="'auditdb:pending'")
    digest = hashlib.sha256(draft.encode()).hexdigest()[:16]
    signature = f"{SIGNATURE_PREFIX}{TEMPLATE_VERSION}:{digest}"
    install_sql = _env.get_template("capture.sql.j2").render(**context, signature=_lit(signature))
    install_sql = "set local role auditdb_owner;\n" + install_sql.replace(
        f"\ncomment on function {context['function']}() is {_lit(signature)};\n",
        f"\ncomment on function {context['function']}() is {_lit(signature)};\nreset role;\n",
        1,
    )
    uninstall_sql = _env.get_template("uncapture.sql.j2").render(
        targets=context["targets"], triggers=CAPTURE_TRIGGERS, functions=[context["function"]]
    )
    check_sql(install_sql)
    check_sql(uninstall_sql)
    resolved = {
        # What the generic capture function (used after a schema change) needs to produce the
        # same entries: settings, rendered expressions, and how to treat columns added later.
        "entity_type": cfg.entity_type,
        "id": list(key),
        "column_types": [[c.name, c.type] for c in columns],
        "masked_full_attnums": [c.attnum for c in columns if c.mask == "full"],
        "masked_last4_attnums": [c.attnum for c in columns if c.mask == "last4"],
        "mask_regex": [glob_regex(g) for g in cfg.mask],
        "mask_last4_regex": [glob_regex(g) for g in cfg.mask_last4],
        "ignore_regex": [glob_regex(g) for g in cfg.ignore],
        "project": context["project_column"],
        "tenant": context["tenant_column"],
        "soft_delete": {"sql": context["soft_delete"]} if context["soft_delete"] else None,
        "name": context["name"],
        "rules": [
            {"on": event, "action": r.action, "when": r.when.render({"old": "o", "new": "n"}) if r.when else None}
            for event in ("INSERT", "UPDATE", "DELETE")
            for r in cfg.rules
            if r.on == event
        ],
        "require_actor": context["require_actor"],
        "system_roles": list(context["system_role_names"]),
    }
    return TablePlan(
        cfg, oid, partitioned, columns, key, partitions, function, install_sql, uninstall_sql, signature, resolved
    )


def _has_equality(conn: psycopg.Connection[Any], type_sql: str) -> bool:
    """Whether IS DISTINCT FROM works on the type (json, xml, point… have no equality)."""
    probe = sql.SQL("select null::{t} is distinct from null::{t}").format(t=sql.SQL(type_sql))
    try:
        with conn.transaction():
            conn.execute(probe)
        return True
    except psycopg.errors.UndefinedFunction:
        return False


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
    """Capture triggers found in the database, grouped by the root table they serve."""
    rows = conn.execute(
        """select coalesce(pg_catalog.pg_partition_root(t.tgrelid), t.tgrelid)::oid, t.tgrelid::oid,
                  t.tgname, t.tgenabled, pg_catalog.obj_description(t.oid, 'pg_trigger')
             from pg_catalog.pg_trigger t
            where t.tgname = any(%s) and not t.tgisinternal""",
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
    generic = conn.execute(
        "select obj_description(to_regprocedure(%s), 'pg_proc') = 'auditdb:generic'",
        (f"auditdb.{_ident(plan.function)}()",),
    ).fetchone()
    if generic and generic[0]:
        return TableStatus(name, State.OUTDATED, "table changed since apply: generic capture in use, run apply")
    expected = {(oid, t) for oid in _target_oids(conn, plan) for t in CAPTURE_TRIGGERS.values()}
    present = {(relid, n) for relid, n, _, _ in triggers}
    if expected - present:
        return TableStatus(name, State.OUTDATED, f"{len(expected - present)} trigger(s) missing (new partitions?)")
    if any(c != plan.signature for _, _, _, c in triggers):
        return TableStatus(name, State.OUTDATED, "generated from another config or auditdb version")
    function_ok = conn.execute(
        "select obj_description(to_regprocedure(%s), 'pg_proc') = %s",
        (f"auditdb.{_ident(plan.function)}()", plan.signature),
    ).fetchone()
    if not function_ok or not function_ok[0]:
        return TableStatus(name, State.OUTDATED, "capture function missing or changed")
    return TableStatus(name, State.INSTALLED)


def _target_oids(conn: psycopg.Connection[Any], plan: TablePlan) -> list[int]:
    rows = conn.execute("select relid::oid from pg_catalog.pg_partition_tree(%s)", (plan.oid,)).fetchall()
    return [int(r[0]) for r in rows] or [plan.oid]


EVENT_TRIGGERS = ("auditdb_ddl_command_end", "auditdb_sql_drop")


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


# Recreates auditdb's event triggers (as 0001_events.sql made them) where missing or not ALWAYS.
REPAIR_EVENT_TRIGGERS = """
do $$
begin
    if not exists (select from pg_catalog.pg_event_trigger where evtname = 'auditdb_ddl_command_end') then
        create event trigger auditdb_ddl_command_end on ddl_command_end execute function auditdb.on_ddl_command_end();
    end if;
    if not exists (select from pg_catalog.pg_event_trigger where evtname = 'auditdb_sql_drop') then
        create event trigger auditdb_sql_drop on sql_drop execute function auditdb.on_sql_drop();
    end if;
end
$$;
alter event trigger auditdb_ddl_command_end enable always;
alter event trigger auditdb_sql_drop enable always;
"""


def status(conn: psycopg.Connection[Any], config: Config | None) -> list[TableStatus]:
    """Each configured table's state, then tables captured but no longer configured.

    Event triggers that are missing or not ALWAYS come first: they keep capture complete.
    """
    found = _installed(conn)
    result = event_trigger_status(conn)
    configured: set[int] = set()
    for plan in plan_tables(conn, config) if config else []:
        configured.add(plan.oid)
        result.append(_table_state(conn, plan, found.get(plan.oid, [])))
    for root in sorted(set(found) - configured):
        result.append(TableStatus(_regclass(conn, root), State.NOT_IN_CONFIG, "captured but not configured"))
    return result


def apply(conn: psycopg.Connection[Any], config: Config, *, dry_run: bool = False) -> ApplyResult:
    """Make the database's capture match the config, in one transaction."""
    with conn.transaction():
        conn.execute("select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('auditdb.apply'))")
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
        if text:
            # Mark the transaction as auditdb's own, so the event triggers do not log each
            # trigger it replaces; the whole apply is logged once below instead.
            conn.execute("select auditdb.begin_maintenance()")
            conn.execute(text.encode())
            conn.execute(
                "select auditdb.log_audit_change('AuditConfig', 'apply', 'auditdb apply', null, %s)",
                (json.dumps({"operation": "apply", "added": added, "updated": replaced, "removed": removed}),),
            )
        conn.execute("delete from auditdb.tracked_tables where not (relid::oid = any(%s))", (list(configured),))
        # Event metadata is masked with the same globs (auditdb.emit reads them from here).
        for name, globs in (("mask_regex", config.defaults.mask), ("mask_last4_regex", config.defaults.mask_last4)):
            conn.execute(
                "update auditdb.settings set value = %s where name = %s",
                (json.dumps([glob_regex(g) for g in globs]), name),
            )
        for plan in plans:
            conn.execute(
                """insert into auditdb.tracked_tables (relid, table_name, function_name, config, signature)
                   values (%s, %s, %s, %s, %s)
                   on conflict (relid) do update
                   set table_name = excluded.table_name, function_name = excluded.function_name,
                       config = excluded.config, signature = excluded.signature, applied_at = now()
                   where auditdb.tracked_tables.signature is distinct from excluded.signature""",
                (plan.oid, plan.config.qualified, plan.function, json.dumps(plan.resolved), plan.signature),
            )
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
