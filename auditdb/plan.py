"""Capture planning: a tracked table's capture SQL rendered from its config and catalog facts, and checked.

`plan_tables` reads each configured table's facts (auditdb.facts) and `render_table` renders
sql/templates/capture.sql.j2 from them without a database; nothing here changes the database
(auditdb.triggers applies).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import jinja2
import pglast
import psycopg
from psycopg import sql

from auditdb.columns import BUILTIN, Column
from auditdb.config import (
    Config,
    Defaults,
    TableConfig,
    check_columns,
    glob_regex,
    matches,
    unknown_column,
)
from auditdb.context import CONTEXT_BOUNDS
from auditdb.errors import AuditDBError, ConfigError, NotAuditableError
from auditdb.expressions import Expression
from auditdb.facts import TableFacts, read_facts
from auditdb.names import CAPTURE_TRIGGERS, capture_function_name
from auditdb.upgrade import CONFIG_FORMAT

__all__ = [
    "TEMPLATE_VERSION",
    "TablePlan",
    "check_sql",
    "ident",
    "plan_tables",
    "render_sql",
    "render_table",
    "resolve_table",
    "template",
]

# Bump when the template's output changes, so `status` calls existing installs outdated (and
# sql/definitions/refresh.sql gives older ones the generic body on upgrade).
TEMPLATE_VERSION = "5"
BOOL_OID = 16
SIGNATURE_PREFIX = "auditdb:"


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
    # schema.table as the server quotes it (format('%I.%I')): what entries and the registry record
    table_name: str = ""
    # Every column's name (for the [defaults] checks), and what apply and status say of the table
    every_column: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def targets(self) -> list[tuple[str, str]]:
        return [(self.config.schema, self.config.table), *self.partitions]


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


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string()


def _lit(value: Any) -> str:
    return sql.Literal(value).as_string()


def template(name: str) -> jinja2.Template:
    """One of sql/templates/*.j2."""
    return _env.get_template(name)


def resolve_table(conn: psycopg.Connection[Any], cfg: TableConfig, defaults: Defaults) -> TablePlan:
    """The table's capture, planned from what the catalog says of it now."""
    return render_table(cfg, defaults, read_facts(conn, cfg))


def render_table(cfg: TableConfig, defaults: Defaults, facts: TableFacts) -> TablePlan:
    """The capture of a table with these facts, as the config asks: checked, rendered, parsed; no database."""
    oid, table_name = facts.oid, facts.table_name
    columns = [
        replace(
            c,
            mask="full" if matches(c.name, cfg.mask) else "last4" if matches(c.name, cfg.mask_last4) else None,
            ignored=matches(c.name, cfg.ignore),
        )
        for c in facts.columns
    ]
    by_name = {c.name: c for c in columns}
    names = list(by_name)
    every = list(facts.every_column)
    notes, warnings = check_columns(cfg, names, every)

    def known(column: str, what: str) -> str:
        if column not in by_name:
            raise unknown_column(cfg.qualified, what, column, names)
        return column

    key = tuple(known(c, "id") for c in cfg.id) if cfg.id else facts.primary_key
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

            name_expr = parse_expression(ident(default), what=f"{cfg.qualified}.name")
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
    partitions = facts.partitions

    def seen(alias: str, column: str) -> str | None:
        col = by_name[column]
        return None if col.kind == BUILTIN else col.seen_by_expressions(alias)

    def uses(expression: Expression | None, extra: tuple[str, ...] = ()) -> list[list[Any]]:
        used = sorted({c for _, c in expression.columns} if expression else set()) + list(extra)
        return [[by_name[c].attnum, c, by_name[c].type_oid, by_name[c].collation] for c in used]

    soft_sql = None
    if soft_delete:
        col = by_name[soft_delete]
        # Set means true for a boolean column, not null for any other (a deletion timestamp).
        if col.base_type == "boolean":
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

    strays = {relid: [ident(name) for name in names] for relid, names in facts.stray_triggers.items()}

    def row_column(column: str | None) -> dict[str, str] | None:
        return {"n": by_name[column].text("n"), "o": by_name[column].text("o")} if column else None

    context = {
        "function": ident("auditdb", function),
        "function_lit": _lit(ident("auditdb", function) + "()"),
        "table_oid": int(oid),
        "table_name": _lit(table_name),
        # The pairing column of a multi-row UPDATE: a name none of the table's columns has.
        "pair": ident(next(p for p in (f"auditdb_pair{i or ''}" for i in range(len(columns) + 1)) if p not in by_name)),
        # Each captured column by name (never t.*: a virtual generated column cannot be read back).
        "row_columns": ", ".join(sql.Identifier("t", c.name).as_string() for c in columns) or "null",
        "entity_type": _lit(cfg.entity_type),
        "partitioned": facts.partitioned,
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
        "targets": [ident(s, t) for s, t, _ in targets],
        "stray_triggers": {ident(s, t): strays[relid] for s, t, relid in targets if relid in strays},
        "triggers": CAPTURE_TRIGGERS,
    }
    resolved = {
        # What the generic capture function (used after a schema change) and the DDL watchers need:
        # settings, rendered expressions with the columns (by number) they were written for, and
        # how to treat columns added later.
        "format": CONFIG_FORMAT,
        "entity_type": cfg.entity_type,
        # What the DDL watchers compare the table with (a changed collation changes what equals).
        "columns": [[c.name, c.type_oid, c.typmod, c.collation] for c in columns],
        "key": [[by_name[k].attnum, k] for k in key],
        "masked_full_attnums": [c.attnum for c in columns if c.mask == "full"],
        "masked_last4_attnums": [c.attnum for c in columns if c.mask == "last4"],
        "mask_regex": [glob_regex(g) for g in cfg.mask],
        "mask_last4_regex": [glob_regex(g) for g in cfg.mask_last4],
        "ignore_regex": [glob_regex(g) for g in cfg.ignore],
        # Ignored by number: a column renamed to an ignored name is still compared.
        "known_attnums": [c.attnum for c in columns],
        "ignored_attnums": [c.attnum for c in columns if c.ignored],
        "project": [by_name[project].attnum, project] if project else None,
        "tenant": [by_name[tenant].attnum, tenant] if tenant else None,
        "soft_delete": {"sql": soft_sql, "uses": uses(None, (soft_delete,))} if soft_sql and soft_delete else None,
        "name": {**name_sql, "uses": uses(name_expr)} if name_sql else None,
        "rules": rules,
        "require_actor": defaults.require_actor,
        "system_roles": list(defaults.system_roles),
    }
    plan = _finish(
        cfg,
        oid,
        facts.partitioned,
        tuple(columns),
        key,
        tuple((s, t) for s, t, _ in partitions),
        function,
        context,
        resolved,
        [relid for _, _, relid in partitions],
    )
    return replace(plan, table_name=table_name, every_column=tuple(every), notes=tuple(notes), warnings=tuple(warnings))


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
    return [resolve_table(conn, table, config.defaults) for table in config.tables]


def render_sql(plans: list[TablePlan]) -> str:
    return "\n".join(p.install_sql for p in plans)
