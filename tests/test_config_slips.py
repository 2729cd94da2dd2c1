"""Slips in auditdb.toml that would leak a secret or stop auditing: refused, warned or named by apply."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from auditdb.cli import cli
from auditdb.config import parse_config
from auditdb.triggers import apply
from tests.fix_capture import audit_entries, entries
from tests.fix_db import scalar

USERS = "create table users (id int primary key, name text, password text, tenant_id text, project_id int)"


def _apply(dsn: str, tmp_path: Path, toml: str, *args: str) -> Result:
    (tmp_path / "auditdb.toml").write_text(toml)
    return CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), *args])


def _captured(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "select count(*) from pg_trigger where tgname like 'auditdb\\_capture\\_%'"))


def _refused(result: Result, *parts: str) -> None:
    """Exit 1 with one line on stderr holding every part, nothing on stdout, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


# Item 2: a mask that matches nothing fails open, in a log nothing can be removed from.


@pytest.mark.parametrize("key", ["mask", "mask_last4"])
def test_table_mask_glob_matching_no_column_is_refused(
    key: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    toml = f'[tables."public.users"]\n{key} = ["pasword"]\n'
    for args in (["apply"], ["apply", "--dry-run"]):
        result = _apply(dsn, tmp_path, toml, *args)
        _refused(
            result,
            f"public.users: {key} glob 'pasword' matches no column, so it would mask nothing",
            "(did you mean 'password'?)",
        )
    assert _captured(conn) == 0 and scalar(conn, "select count(*) from auditdb.tracked_tables") == 0
    conn.execute("insert into users values (1, 'ann', 'hunter2')")
    assert entries(conn) == []  # nothing was applied: the password was never logged


def test_defaults_mask_glob_matching_no_column_warns_and_apply_proceeds(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    conn.execute('create table keys (id int primary key, "Password" text, api_token text)')
    # (A glob a typo away from a column shown in clear is refused: the next test.)
    toml = (
        '[defaults]\nmask = ["passwd_history*", "password*"]\nmask_last4 = ["*token*", "api_key*"]\n'
        '[tables."public.users"]\n[tables."public.keys"]\n'
    )
    dry = _apply(dsn, tmp_path, toml, "apply", "--dry-run")
    result = _apply(dsn, tmp_path, toml, "apply")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["added public.users", "added public.keys"]
    warnings = [
        "warning: [defaults] mask glob 'passwd_history*' matches no column of any tracked table "
        "(it still masks those keys in events' metadata)",
        "warning: [defaults] mask_last4 glob 'api_key*' matches no column of any tracked table "
        "(it still masks those keys in events' metadata)",
    ]
    case = (
        "warning: public.keys: column 'Password' is not masked: mask glob 'password*' matches it only ignoring case "
        "(globs are case-sensitive)"
    )
    assert sorted(result.stderr.splitlines()) == sorted([case, *warnings])
    assert dry.exit_code == 0 and sorted(dry.stderr.splitlines()) == sorted([case, *warnings])
    conn.execute("insert into users values (1, 'ann', 'hunter2')")
    [created] = entries(conn)
    assert created["changes"]["password"] == {"new": "***"}


@pytest.mark.parametrize("key", ["mask", "mask_last4"])
def test_defaults_mask_glob_a_typo_away_from_a_clear_column_is_refused(
    key: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    # Only a warning would leave the password in clear in a log nothing can be removed from.
    conn.execute(USERS)
    toml = f'[defaults]\n{key} = ["pasword"]\n[tables."public.users"]\n'
    for args in (["apply"], ["apply", "--dry-run"]):
        _refused(
            _apply(dsn, tmp_path, toml, *args),
            f"[defaults] {key} glob 'pasword' matches no column (did you mean 'password'?): "
            "that column would be logged in clear",
        )
    assert _captured(conn) == 0
    doctor = _apply(dsn, tmp_path, toml, "doctor")
    assert doctor.exit_code == 1
    assert any(line.startswith("fail  config") and "'pasword'" in line for line in doctor.stdout.splitlines())
    # Masked under its right name, the same typo is only noise: a warning.
    fixed = f'[defaults]\n{key} = ["pasword", "password"]\n[tables."public.users"]\n'
    result = _apply(dsn, tmp_path, fixed, "apply")
    assert result.exit_code == 0 and result.stdout == "added public.users\n"
    assert "warning: [defaults] " + key + " glob 'pasword' matches no column of any tracked table" in result.stderr


def test_table_ignore_glob_matching_no_column_warns(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    # An ignore that matches nothing only logs more, so it is not refused.
    conn.execute(USERS)
    result = _apply(dsn, tmp_path, '[tables."public.users"]\nignore = ["updatd_at", "name"]\n', "apply")
    assert result.exit_code == 0 and result.stdout == "added public.users\n"
    assert result.stderr == "warning: public.users: ignore glob 'updatd_at' matches no column, so it ignores nothing\n"


# Item 2: a setting that names a column the table lacks.


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('tenant = "tenantid"', "public.users: tenant names unknown column 'tenantid' (did you mean 'tenant_id'?)"),
        (
            'project = "projectid"',
            "public.users: project names unknown column 'projectid' (did you mean 'project_id'?)",
        ),
        ('soft_delete = "deleted"', "public.users: soft_delete names unknown column 'deleted' (columns: id, name,"),
        ('id = ["uid"]', "public.users: id names unknown column 'uid' (did you mean 'id'?)"),
        ('name = "nme"', "public.users: name names unknown column 'nme' (did you mean 'name'?)"),
        (
            'rules = [{ on = "UPDATE", when = "OLD.pasword <> NEW.password", action = "PASSWORD_CHANGED" }]',
            "public.users: rule for PASSWORD_CHANGED names unknown column 'pasword' (did you mean 'password'?)",
        ),
    ],
)
def test_column_naming_key_with_unknown_column_is_refused(
    setting: str, message: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    result = _apply(dsn, tmp_path, f'[defaults]\nmask = ["password"]\n[tables."public.users"]\n{setting}\n', "apply")
    _refused(result, message)
    assert _captured(conn) == 0


def test_default_tenant_column_a_table_lacks_is_said_per_table(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    conn.execute("create table notes (id int primary key, body text)")
    toml = '[defaults]\ntenant = "tenant_id"\n[tables."public.users"]\n[tables."public.notes"]\n'
    note = "note: public.notes: tenant from the session context: no column 'tenant_id' ([defaults] tenant)"
    dry = _apply(dsn, tmp_path, toml, "apply", "--dry-run")
    assert dry.exit_code == 0 and dry.stderr.splitlines() == [note]
    result = _apply(dsn, tmp_path, toml, "apply")
    assert result.exit_code == 0 and result.stderr.splitlines() == [note]
    status = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])
    assert status.exit_code == 0
    lines = {line.split()[0]: line for line in status.output.splitlines()}
    assert lines["public.notes"].split(None, 2)[1:] == [
        "installed",
        "tenant from the session context: no column 'tenant_id' ([defaults] tenant)",
    ]
    assert lines["public.users"].split() == ["public.users", "installed"]
    with conn.transaction():
        conn.execute("select auditdb.set_context(actor_id => 'u1', tenant_id => 'from-context')")
        conn.execute("insert into users (id, tenant_id) values (1, 'from-row')")
        conn.execute("insert into notes values (1, 'x')")
    assert [(e["table_name"], e["tenant_id"]) for e in entries(conn)] == [
        ("public.users", "from-row"),
        ("public.notes", "from-context"),
    ]


@pytest.mark.parametrize(
    ("tenant", "hint"), [("tenant_idd", "tenant_id"), ("tenantid", "tenant_id"), ("Tenant_Id", "tenant_id")]
)
def test_default_tenant_a_typo_away_from_a_column_is_refused(
    tenant: str, hint: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    # A note alone would let every entry of users take its tenant from whatever a session set.
    conn.execute(USERS)
    conn.execute("create table notes (id int primary key, body text)")
    toml = f'[defaults]\ntenant = "{tenant}"\n[tables."public.notes"]\n[tables."public.users"]\n'
    for args in (["apply"], ["apply", "--dry-run"]):
        _refused(
            _apply(dsn, tmp_path, toml, *args),
            f"public.users: [defaults] tenant names column '{tenant}', which the table lacks "
            f"(did you mean '{hint}'?): its tenant would come from the session context",
        )
    assert _captured(conn) == 0 and scalar(conn, "select count(*) from auditdb.tracked_tables") == 0
    doctor = _apply(dsn, tmp_path, toml, "doctor")
    assert doctor.exit_code == 1
    assert any(line.startswith("fail  config") and f"'{tenant}'" in line for line in doctor.stdout.splitlines())


def test_default_tenant_with_only_a_column_sharing_a_word_is_a_note(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    # tenant_name is no slip for tenant_id (only part of it is close): the tenant from the context, said.
    conn.execute("create table teams (id int primary key, tenant_name text)")
    toml = '[defaults]\ntenant = "tenant_id"\n[tables."public.teams"]\n'
    result = _apply(dsn, tmp_path, toml, "apply")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: public.teams: tenant from the session context: no column 'tenant_id' ([defaults] tenant)"
    ]


# F12: a mask removed from the config would log the column in clear from then on.

ACCOUNTS = "create table accounts (id int primary key, name text, password_hash text, api_key text)"
MASKED = '[defaults]\nmask = ["password*"]\nmask_last4 = ["api_key*"]\n[tables."public.accounts"]\n'


def _signatures(conn: psycopg.Connection[Any]) -> list[Any]:
    return [
        *conn.execute("select signature, config from auditdb.tracked_tables order by relid").fetchall(),
        *conn.execute("select tgname, obj_description(oid, 'pg_trigger') from pg_trigger order by 1").fetchall(),
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # The glob gone from [defaults], or from a table's own settings
        (
            '[defaults]\nmask_last4 = ["api_key*"]\n[tables."public.accounts"]\n',
            "public.accounts: column(s) 'password_hash', 'password_old' would be logged in clear",
        ),
        (
            '[tables."public.accounts"]\nmask = ["password*"]\n',
            "public.accounts: column(s) 'api_key' would be logged in clear",
        ),
        # Fully masked until now, last-4 from now on
        (
            '[defaults]\nmask_last4 = ["api_key*", "password_hash"]\nmask = ["password_old"]\n'
            '[tables."public.accounts"]\n',
            "public.accounts: column(s) 'password_hash' only last-4 masked",
        ),
    ],
)
def test_removing_a_mask_is_refused_without_unmask(
    toml: str, message: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(ACCOUNTS)
    assert _apply(dsn, tmp_path, MASKED, "apply").exit_code == 0
    # A column added since apply is masked by the globs on its name (the generic capture): it counts too.
    conn.execute("alter table accounts add column password_old text")
    before = _signatures(conn)
    for args in (["apply"], ["apply", "--dry-run"]):
        _refused(
            _apply(dsn, tmp_path, toml, *args),
            message,
            "though the installed capture masks them",
            "run apply --unmask to log them in clear from now on",
        )
    assert _signatures(conn) == before
    conn.execute("insert into accounts values (1, 'ann', 'hash-of-hunter2', 'key-0123456789abcd', 'old-hash')")
    [created] = entries(conn)
    assert created["changes"]["password_hash"] == {"new": "***"}
    assert created["changes"]["password_old"] == {"new": "***"}
    assert created["changes"]["api_key"] == {"new": "***abcd"}
    assert not audit_entries(conn, "action = 'AUDIT_CHANGED' and metadata ? 'unmasked'")


def test_removing_a_mask_with_allow_unmask_logs_in_clear_and_records_it(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(ACCOUNTS)
    assert _apply(dsn, tmp_path, MASKED, "apply").exit_code == 0
    unmasking = '[defaults]\nmask_last4 = ["password_hash"]\n[tables."public.accounts"]\n'
    config = parse_config(tomllib.loads(unmasking))
    dry = apply(conn, config, dry_run=True, allow_unmask=True)
    assert dry.unmasked == {"public.accounts": ["api_key"]}
    assert dry.weakened == {"public.accounts": ["password_hash"]}
    result = apply(conn, config, allow_unmask=True)
    assert result.replaced == ["public.accounts"]
    assert result.unmasked == {"public.accounts": ["api_key"]}
    assert result.warnings == [
        "public.accounts: column(s) 'api_key' no longer masked: logged in clear from now on",
        "public.accounts: column(s) 'password_hash' only last-4 masked from now on (fully masked until now)",
    ]
    [logged] = audit_entries(conn, "action = 'AUDIT_CHANGED' and metadata ? 'unmasked'")
    assert logged["metadata"]["unmasked"] == {"public.accounts": ["api_key"]}
    assert logged["metadata"]["masked_last4"] == {"public.accounts": ["password_hash"]}
    assert logged["metadata"]["updated"] == ["public.accounts"]
    conn.execute("insert into accounts values (1, 'ann', 'hash-of-hunter2', 'key-0123456789abcd')")
    [created] = entries(conn)
    assert created["changes"]["api_key"] == {"new": "key-0123456789abcd"}
    assert created["changes"]["password_hash"] == {"new": "***ter2"}
    # Applied as the config now says, the same config is no longer a change of mask.
    again = _apply(dsn, tmp_path, unmasking, "apply")
    assert again.exit_code == 0 and again.stdout == "nothing to do: 1 table(s) match the config\n"
    assert again.stderr == ""


# Item 2: removing capture needs --remove.


@pytest.mark.parametrize("toml", ["", '[defaults]\nmask = ["password*"]\n', "# tracked tables: none yet\n"])
def test_config_without_a_table_removes_nothing_without_remove(
    toml: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    conn.execute("create table notes (id int primary key, body text)")
    assert _apply(dsn, tmp_path, '[tables."public.users"]\n[tables."public.notes"]\n', "apply").exit_code == 0
    would = [
        "would remove public.notes: run apply --remove to remove its capture",
        "would remove public.users: run apply --remove to remove its capture",
    ]
    dry = _apply(dsn, tmp_path, toml, "apply", "--dry-run")
    assert dry.exit_code == 0 and sorted(dry.stderr.splitlines()) == would
    assert "drop trigger" not in dry.stdout
    result = _apply(dsn, tmp_path, toml, "apply")
    assert result.exit_code == 0, result.output
    assert sorted(result.stderr.splitlines()) == would
    assert result.stdout == "nothing to do: 0 table(s) match the config\n"
    assert _captured(conn) == 8
    assert scalar(conn, "select count(*) from auditdb.tracked_tables") == 2
    conn.execute("insert into notes values (1, 'still audited')")
    assert [e["action"] for e in entries(conn)] == ["CREATE"]
    status = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])
    assert status.exit_code == 1 and status.output.count("not in config") == 2

    dry = _apply(dsn, tmp_path, toml, "apply", "--dry-run", "--remove")
    assert dry.exit_code == 0 and dry.stderr == "" and "drop trigger if exists auditdb_capture_ins" in dry.stdout
    removed = _apply(dsn, tmp_path, toml, "apply", "--remove")
    assert removed.exit_code == 0 and removed.stderr == ""
    assert sorted(removed.stdout.splitlines()) == ["removed public.notes", "removed public.users"]
    assert _captured(conn) == 0 and scalar(conn, "select count(*) from auditdb.tracked_tables") == 0
    [logged] = audit_entries(conn, "metadata->>'operation' = 'apply' and metadata->'removed' <> '[]'")
    assert sorted(logged["metadata"]["removed"]) == ["public.notes", "public.users"]


def test_registered_table_whose_triggers_were_dropped_is_kept_too(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute("create table notes (id int primary key, body text)")
    assert _apply(dsn, tmp_path, '[tables."public.notes"]\n', "apply").exit_code == 0
    for trigger in ("ins", "upd", "del", "trunc"):
        conn.execute(f"drop trigger auditdb_capture_{trigger} on notes")
    status = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "none.toml"), "status"])
    assert "public.notes  not in config  registered but not configured" in status.output
    result = _apply(dsn, tmp_path, "", "apply")
    assert result.exit_code == 0
    assert result.stderr == "would remove public.notes: run apply --remove to remove its capture\n"
    assert scalar(conn, "select count(*) from auditdb.tracked_tables") == 1
    removed = _apply(dsn, tmp_path, "", "apply", "--remove")
    assert removed.stdout == "removed public.notes\n"
    assert scalar(conn, "select count(*) from auditdb.tracked_tables") == 0
    assert scalar(conn, "select count(*) from pg_proc where proname like 'auditdb\\_capture\\_notes%'") == 0


# Item 4: apply as a plain role, and tables auditdb cannot track.


@pytest.mark.parametrize("args", [["apply"], ["apply", "--dry-run"], ["apply", "--remove"]])
def test_apply_as_a_plain_role_says_a_superuser_is_needed(
    args: list[str], conn: psycopg.Connection[Any], app_dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    result = _apply(app_dsn, tmp_path, '[tables."public.users"]\n', *args)
    _refused(
        result,
        "permission denied: `auditdb apply` needs a superuser (it creates triggers on your tables and capture "
        "functions owned by auditdb_capture); role auditdb_test_app is not one",
    )
    assert "tracked_tables" not in result.stderr
    assert _captured(conn) == 0


@pytest.mark.parametrize(
    ("setup", "key", "message"),
    [
        (
            "",
            "auditdb.log",
            "auditdb.log cannot be tracked: it is in schema auditdb, auditdb's own (its guards protect it; capturing "
            "the log would log every entry it writes)",
        ),
        ("", "auditdb.tracked_tables", "auditdb.tracked_tables cannot be tracked: it is in schema auditdb"),
        ("", "pg_catalog.pg_class", "pg_catalog.pg_class cannot be tracked: it is in pg_catalog, PostgreSQL's"),
        ("", "information_schema.sql_parts", "cannot be tracked: it is in information_schema, PostgreSQL's"),
        ("", "pg_toast.pg_toast_2619", "cannot be tracked: it is in pg_toast, one of PostgreSQL's own schemas"),
        ("", "pg_temp.scratch", "pg_temp.scratch cannot be tracked: it is a temporary table"),
        ("create view v as select 1 as id", "public.v", "public.v cannot be audited because it is a view, not a table"),
        (
            "create materialized view v as select 1 as id",
            "public.v",
            "public.v cannot be audited because it is a materialized view, not a table",
        ),
        (
            "create foreign data wrapper nowhere; create server far foreign data wrapper nowhere;"
            "create foreign table f (id int) server far",
            "public.f",
            "public.f cannot be audited because it is a foreign table, not a table",
        ),
        ("create sequence s", "public.s", "public.s cannot be audited because it is a sequence, not a table"),
    ],
)
def test_untrackable_relations_are_refused_in_one_line(
    setup: str, key: str, message: str, conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    if setup:
        conn.execute(setup)
    conn.execute(USERS)
    toml = f'[tables."public.users"]\n[tables."{key}"]\n'
    for args in (["apply"], ["apply", "--dry-run"]):
        _refused(_apply(dsn, tmp_path, toml, *args), message)
    assert _captured(conn) == 0
    conn.execute("insert into users (id) values (1)")
    assert entries(conn) == []


def test_a_temporary_table_in_its_own_schema_is_refused(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute("create temporary table scratch (id int primary key)")
    schema = scalar(conn, "select nspname from pg_namespace where oid = pg_my_temp_schema()")
    _refused(
        _apply(dsn, tmp_path, f'[tables."{schema}.scratch"]\n', "apply"),
        f"{schema}.scratch cannot be tracked: it is a temporary table (it lives only as long as its session)",
    )
    assert _captured(conn) == 0


def test_apply_unmask_on_the_command_line(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    conn.execute(ACCOUNTS)
    assert _apply(dsn, tmp_path, MASKED, "apply").exit_code == 0
    clear = '[tables."public.accounts"]\n'
    _refused(_apply(dsn, tmp_path, clear, "apply"), "would be logged in clear", "run apply --unmask")
    allowed = _apply(dsn, tmp_path, clear, "apply", "--unmask")
    assert allowed.exit_code == 0 and allowed.stdout == "updated public.accounts\n", allowed.output
    assert "no longer masked: logged in clear from now on" in allowed.stderr
    [logged] = audit_entries(conn, "action = 'AUDIT_CHANGED' and metadata ? 'unmasked'")
    assert sorted(logged["metadata"]["unmasked"]["public.accounts"]) == ["api_key", "password_hash"]


def test_status_calls_a_captured_table_whose_config_is_now_refused_outdated(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute(USERS)
    assert _apply(dsn, tmp_path, '[tables."public.users"]\n', "apply").exit_code == 0
    status = _apply(dsn, tmp_path, '[tables."public.users"]\nproject = "projectid"\n', "status")
    assert status.exit_code == 1
    [line] = [line for line in status.stdout.splitlines() if line.startswith("public.users")]
    assert line.split()[1] == "outdated" and "apply refuses the config: " in line and "'projectid'" in line


def test_a_system_role_that_does_not_exist_is_named(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    conn.execute(USERS)
    toml = '[defaults]\nsystem_roles = ["migrat0r", "postgres"]\n[tables."public.users"]\n'
    result = _apply(dsn, tmp_path, toml, "apply")
    assert result.exit_code == 0 and result.stdout == "added public.users\n"
    assert result.stderr == (
        "warning: [defaults] system_roles names role 'migrat0r', which does not exist: it exempts nobody\n"
    )
