"""Issue 12: a database installed and applied by release 0006 (1fc8c71) is protected by
`auditdb install` alone. Its capture functions, which ran as auditdb_owner and called the
application's casts, get the safe generic body at once; status and doctor fail until `apply`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import psycopg
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.config import parse_config
from auditdb.install import install
from auditdb.triggers import apply
from tests.fix_capture import entries
from tests.fix_db import APP_ROLE, scalar

DATA = Path(__file__).parent / "data"
TOML = """
[defaults]
mask = ["password*"]

[tables."public.tickets"]
name = "title"
rules = [{ on = "UPDATE", when = "OLD.state IS DISTINCT FROM NEW.state", action = "TICKET_STATE_CHANGED" }]
"""
APP_SQL = """
create type public.ticket_state as enum ('open', 'closed');
create table public.tickets (id int primary key, title text, state public.ticket_state, password_hash text);
create table public.probe_hits (who text);
grant insert on public.probe_hits to public;
create function public.ts_json(public.ticket_state) returns json language plpgsql as $$
begin insert into public.probe_hits values (current_user); return to_json($1::text); end $$;
create cast (public.ticket_state as json) with function public.ts_json(public.ticket_state);
"""


def _release_0006(empty_db: str) -> None:
    """The database as release 0006 left it: installed, the application's tables, `apply` run."""
    install(empty_db, target="0006")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(f"grant create on schema public to {APP_ROLE}")
    with psycopg.connect(_as(empty_db, APP_ROLE), autocommit=True) as app:
        app.execute(APP_SQL)
    with psycopg.connect(empty_db, autocommit=True) as conn, conn.transaction():
        conn.execute((DATA / "release_0006_apply.sql").read_text().encode())
        conn.execute(
            """insert into auditdb.tracked_tables (relid, table_name, function_name, config, signature)
               values ('public.tickets'::regclass, 'public.tickets', 'auditdb_capture_tickets_3e77342a1c', %s,
                       'auditdb:2:2c5b7e68359600bd')""",
            ((DATA / "release_0006_tracked_config.json").read_text(),),
        )


def _as(dsn: str, user: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = user
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def test_an_install_of_release_0006_is_protected_by_install_alone(
    empty_db: str, template_db: str, tmp_path: Path
) -> None:
    _release_0006(empty_db)
    with psycopg.connect(_as(empty_db, APP_ROLE), autocommit=True) as app:
        app.execute("insert into tickets values (1, 'Login works', 'open', 'h1')")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        # The fixture is the real thing: release 0006's capture ran the application's cast as auditdb_owner.
        assert scalar(conn, "select array_agg(distinct who) from probe_hits") == ["auditdb_owner"]
        conn.execute("delete from probe_hits")

    upgraded = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert upgraded.exit_code == 0, upgraded.output
    (tmp_path / "auditdb.toml").write_text(TOML)
    config = ["--dsn", empty_db, "--config", str(tmp_path / "auditdb.toml")]
    with psycopg.connect(_as(empty_db, APP_ROLE), autocommit=True) as app:
        app.execute("update tickets set state = 'closed', title = 'Login works!'")
        app.execute("insert into tickets values (2, 'Logout', 'open', 'h2')")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert scalar(conn, "select count(*) from probe_hits") == 0
        fn = conn.execute(
            """select proowner::regrole::text, obj_description(oid, 'pg_proc') from pg_proc
                where proname = 'auditdb_capture_tickets_3e77342a1c'"""
        ).fetchone()
        assert fn == ("auditdb_capture", "auditdb:generic")
        update, create = entries(conn)[-2:]
        # The upgraded config still names the entity and applies the rule over the enum column.
        assert (update["action"], update["entity_name"]) == ("TICKET_STATE_CHANGED", "Login works!")
        assert update["changes"]["state"] == {"old": "open", "new": "closed"}
        assert create["changes"]["password_hash"] == {"new": "***"}
        status = CliRunner().invoke(cli, [*config, "status"])
        assert status.exit_code == 1 and "generic capture in use" in status.output
        assert CliRunner().invoke(cli, [*config, "doctor"]).exit_code == 1
        apply(conn, parse_config(tomllib.loads(TOML)))
        assert CliRunner().invoke(cli, [*config, "status"]).exit_code == 0
    with psycopg.connect(_as(empty_db, APP_ROLE), autocommit=True) as app:
        app.execute("update tickets set state = 'open'")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert scalar(conn, "select count(*) from probe_hits") == 0
        assert json.loads(json.dumps(entries(conn)[-1]["changes"]["state"])) == {"old": "closed", "new": "open"}


def test_readers_are_bound_by_login_after_the_upgrade(empty_db: str) -> None:
    install(empty_db, target="0006")
    assert CliRunner().invoke(cli, ["--dsn", empty_db, "install"]).exit_code == 0
    with psycopg.connect(empty_db, autocommit=True) as conn:
        policies = {
            r[0]: r[1] for r in conn.execute("select policyname, qual from pg_policies where tablename = 'log'")
        }
    assert set(policies) == {"log_admin_read", "log_viewer_read", "log_capture_append"}
    assert "reader_tenants" in str(policies["log_viewer_read"]) and "current_user" not in str(policies)
