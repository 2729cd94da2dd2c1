"""auditdb.toml: keys, tables and expressions are checked before anything reaches the database."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.config import load_config, parse_config, split_qualified
from auditdb.errors import ConfigError, NotAuditableError
from auditdb.triggers import plan_tables
from tests.fix_capture import EXAMPLE


def _parse(text: str) -> Any:
    return parse_config(tomllib.loads(text))


def test_example_config_parses_with_every_key() -> None:
    config = load_config(EXAMPLE / "auditdb.toml")
    assert config.defaults.mask == ("password*", "*secret*")
    assert config.defaults.system_roles == ("migrator",)
    assert len(config.tables) == 19
    tokens = next(t for t in config.tables if t.table == "api_tokens")
    assert [r.action for r in tokens.rules] == [
        "API_KEY_CREATED",
        "API_KEY_DELETED",
        "API_KEY_REVOKED",
        "API_KEY_REGENERATED",
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("public.test_cases", ("public", "test_cases")),
        ('public."Order Items"', ("public", "Order Items")),
        ("Users", ("public", "users")),
        ('"a""b"."C"', ('a"b', "C")),
    ],
)
def test_table_keys_are_sql_names(key: str, expected: tuple[str, str]) -> None:
    assert split_qualified(key) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nmaks = []", "unknown key(s) maks"),
        ("[tabels]", "unknown key(s) tabels"),
        ('[tables."public.t"]\nentity = "T"', "unknown key(s) entity"),
        ('[tables."public.t"]\nrules = [{ on = "UPSERT", action = "X" }]', "'UPSERT' is not one of"),
        ('[tables."public.t"]\nrules = [{ on = "INSERT", action = "lower" }]', "must match"),
        (
            '[tables."public.t"]\nrules = [{ on = "INSERT", action = "X", when = "OLD.a = 1" }]',
            "old.a is not NEW.column",
        ),
        ('[tables."public.t"]\nname = "(select secret from keys)"', "subqueries"),
        ('[tables."public.t"]\nname = "pg_sleep(10)::text"', "function pg_sleep"),
        ("[tables.\"public.t\"]\nname = \"set_config('auditdb.actor_id', 'x', false)\"", "function set_config"),
        ('[tables."public.t"]\nname = "a; drop table t"', "not several statements"),
        ('[tables."public.t"]\nname = "now()"', "function now"),
        ('[tables."public.t"]\nname = "a::regclass"', "cast to regclass"),
        ('[tables."a.b.c"]', "not 3 parts"),
        ("[defaults]\nrequire_actor = 1", "true or false"),
    ],
)
def test_bad_config_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        _parse(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("schema", "toml", "message", "error"),
    [
        ("", '[tables."public.nope"]', "table public.nope does not exist", ConfigError),
        ("create table t (a int primary key)", '[tables."public.t"]\nname = "b"', "unknown column 'b'", ConfigError),
        ("create table t (a int primary key)", '[tables."public.t"]\nproject = "p"', "unknown column 'p'", ConfigError),
        (
            "create table t (a int primary key)",
            '[tables."public.t"]\nsoft_delete = "x"',
            "unknown column 'x'",
            ConfigError,
        ),
        (
            "create table t (a int primary key)",
            '[tables."public.t"]\nrules = [{on = "UPDATE", when = "NEW.z", action = "X"}]',
            "unknown column 'z'",
            ConfigError,
        ),
        ("create table t (a int)", '[tables."public.t"]', "has no primary key", NotAuditableError),
        ("create view t as select 1 as a", '[tables."public.t"]', "not a table", NotAuditableError),
        (
            "create table t (a int primary key, password text)",
            '[defaults]\nmask = ["password"]\n[tables."public.t"]\nname = "password"',
            "masked column",
            ConfigError,
        ),
        (
            "create table t (a int, k int, primary key (a, k)) partition by list (k);"
            "create table t1 partition of t for values in (1)",
            '[tables."public.t1"]',
            "is a partition",
            NotAuditableError,
        ),
        (
            "create table t (a int primary key, password text)",
            '[tables."public.t"]\nmask = ["pasword"]',
            "public.t: mask glob 'pasword' matches no column, so it would mask nothing (did you mean 'password'?)",
            ConfigError,
        ),
        (
            "create table t (a int primary key, api_token text)",
            '[tables."public.t"]\nmask_last4 = ["*tokn*"]',
            "public.t: mask_last4 glob '*tokn*' matches no column",
            ConfigError,
        ),
        (
            "create table t (a int primary key, tenant_id text)",
            '[defaults]\ntenant = "tenant_id"\n[tables."public.t"]\ntenant = "tenantid"',
            "public.t: tenant names unknown column 'tenantid' (did you mean 'tenant_id'?)",
            ConfigError,
        ),
        ("", '[tables."auditdb.log"]', "auditdb.log cannot be tracked: it is in schema auditdb", NotAuditableError),
        ("", '[tables."pg_catalog.pg_class"]', "cannot be tracked: it is in pg_catalog", NotAuditableError),
        ("create sequence t", '[tables."public.t"]', "it is a sequence, not a table", NotAuditableError),
    ],
)
def test_config_is_checked_against_the_database(
    schema: str, toml: str, message: str, error: type[Exception], conn: psycopg.Connection[Any]
) -> None:
    if schema:
        conn.execute(schema)
    with pytest.raises(error) as caught:
        plan_tables(conn, _parse(toml))
    assert message in str(caught.value)


def test_table_without_the_default_tenant_column_takes_it_from_the_context(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table t (a int primary key, body text); create table u (a int primary key, tenant_id text)")
    plans = plan_tables(conn, _parse('[defaults]\ntenant = "tenant_id"\n[tables."public.t"]\n[tables."public.u"]'))
    assert [(p.config.table, p.notes, p.resolved["tenant"]) for p in plans] == [
        ("t", ("tenant from the session context: no column 'tenant_id' ([defaults] tenant)",), None),
        ("u", (), [2, "tenant_id"]),
    ]


def test_cli_reports_config_errors_in_one_line(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "auditdb.toml").write_text('[tables."public.t"]\nname = "pg_sleep(1)"\n')
    result = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "apply"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "pg_sleep" in result.output
    missing = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "none.toml"), "apply"])
    assert missing.exit_code == 1 and "not found" in missing.output
