"""Rendering a table's capture is a pure function of its config and catalog facts: no database here.

Every rendered statement is parsed with pglast (render_table checks it, and these tests parse it
again); hostile names come out quoted, never as SQL.
"""

from __future__ import annotations

import tomllib

import pglast
import pytest

from auditdb.columns import BUILTIN, TEXT, Column
from auditdb.config import parse_config
from auditdb.errors import ConfigError, NotAuditableError
from auditdb.facts import TableFacts
from auditdb.plan import TablePlan, render_table

TEXT_OID, INT_OID, NUMERIC_OID = 25, 23, 1700


def _column(name: str, attnum: int, type_oid: int = TEXT_OID, *, kind: str = BUILTIN) -> Column:
    type_sql = {TEXT_OID: "text", INT_OID: "integer", NUMERIC_OID: "numeric"}.get(type_oid, "mood")
    return Column(name, attnum, type_oid, -1, type_sql, kind, kind == BUILTIN, base_type=type_sql)


def _facts(table: str, columns: list[Column], key: tuple[str, ...] = ("id",), **more: object) -> TableFacts:
    return TableFacts(
        oid=16384,
        partitioned=bool(more.get("partitions")),
        table_name=table,
        columns=tuple(columns),
        every_column=tuple(c.name for c in columns),
        primary_key=key,
        partitions=more.get("partitions", ()),  # type: ignore[arg-type]
        stray_triggers=more.get("strays", {}),  # type: ignore[arg-type]
    )


def _render(toml: str, facts: TableFacts) -> TablePlan:
    config = parse_config(tomllib.loads(toml))
    [table] = config.tables
    return render_table(table, config.defaults, facts)


ACCOUNTS = [
    _column("id", 1, INT_OID),
    _column("name", 2),
    _column("password_hash", 3),
    _column("mood", 4, 99999, kind=TEXT),
]


def test_the_same_config_and_facts_render_the_same_sql() -> None:
    toml = '[tables."public.accounts"]\nmask = ["password*"]\n'
    first, second = (_render(toml, _facts("public.accounts", ACCOUNTS)) for _ in range(2))
    assert first.install_sql == second.install_sql and first.signature == second.signature
    for text in (first.install_sql, first.uninstall_sql):
        pglast.parse_sql(text)
    # Masked: the column's value never appears unmasked in what capture writes.
    assert "'***'" in first.install_sql
    assert first.resolved["masked_full_attnums"] == [3]


def test_a_change_of_config_changes_the_signature() -> None:
    plain = _render('[tables."public.accounts"]\n', _facts("public.accounts", ACCOUNTS))
    masked = _render('[tables."public.accounts"]\nmask = ["password*"]\n', _facts("public.accounts", ACCOUNTS))
    assert plain.signature != masked.signature
    assert plain.resolved["masked_full_attnums"] == []


def test_a_type_of_its_own_is_rendered_through_its_text_never_a_cast() -> None:
    plan = _render('[tables."public.accounts"]\n', _facts("public.accounts", ACCOUNTS))
    assert 'pg_catalog.format(\'%s\', "n"."mood")' in plan.install_sql
    assert '"mood"::jsonb' not in plan.install_sql and '"mood")::json' not in plan.install_sql


HOSTILE = [
    'x"; drop table users; --',
    "a'b",
    "new\nline",
    "$$",
    "ünï\tcödé",
    "select",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_come_out_quoted(name: str) -> None:
    table = name.replace('"', '""')
    columns = [_column("id", 1, INT_OID), _column(name, 2), _column(f"{name}_secret", 3)]
    toml_table = f'"{table}"'.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    key = "'public." + toml_table + "'" if "'" not in name else '"public.' + toml_table.replace('"', '\\"') + '"'
    toml = f'[tables.{key}]\nmask = ["*_secret"]\n'
    plan = _render(toml, _facts(f'public."{table}"', columns))
    statements = pglast.parse_sql(plan.install_sql)
    assert statements
    pglast.parse_sql(plan.uninstall_sql)
    # Nothing of the name escaped its quoting: no statement beyond the template's own.
    clean = _render('[tables."public.t"]\nmask = ["*_secret"]\n', _facts("public.t", columns))
    assert len(statements) == len(pglast.parse_sql(clean.install_sql))
    assert plan.resolved["masked_full_attnums"] == [3]


def test_refusals_need_no_database() -> None:
    with pytest.raises(NotAuditableError, match="has no primary key"):
        _render('[tables."public.accounts"]\n', _facts("public.accounts", ACCOUNTS, key=()))
    with pytest.raises(ConfigError, match="project names unknown column 'projectid'"):
        _render('[tables."public.accounts"]\nproject = "projectid"\n', _facts("public.accounts", ACCOUNTS))
    with pytest.raises(ConfigError, match="uses masked column"):
        _render(
            '[tables."public.accounts"]\nname = "password_hash"\nmask = ["password*"]\n',
            _facts("public.accounts", ACCOUNTS),
        )


def test_partitions_and_renamed_triggers_are_rendered_from_the_facts() -> None:
    facts = _facts(
        "public.accounts",
        ACCOUNTS,
        partitions=(("public", "accounts_2026", 16390),),
        strays={16390: ("renamed_capture",)},
    )
    plan = _render('[tables."public.accounts"]\n', facts)
    assert plan.partitioned and plan.partitions == (("public", "accounts_2026"),)
    assert '"public"."accounts_2026"' in plan.install_sql
    assert plan.install_sql.count('drop trigger "renamed_capture" on "public"."accounts_2026";') == 1
