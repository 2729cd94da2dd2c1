"""Issue 12: a database installed and applied by release 0006 (1fc8c71) is protected by
`auditdb install` alone. Its capture functions, which ran as auditdb_owner and called the
application's casts, get the safe generic body at once; status and doctor fail until `apply`."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.config import parse_config
from auditdb.errors import AuditDBError
from auditdb.install import install
from auditdb.triggers import apply
from tests.fix_capture import Track, entries
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


def _removed_by_install(dsn: str) -> dict[str, str]:
    """What the upgrade logged as removed: {object: kind}."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            """select entity_id, entity_name from auditdb.log
                where metadata->>'operation' = 'foreign_object_removed'"""
        ).fetchall()
    return {str(k): str(v) for k, v in rows}


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


PLANTED_AS_OWNER = """
create policy zz_all on auditdb.log for select to public using (true);
grant select on auditdb.log to {app};
create function auditdb.zz_forge(a text) returns void language sql security definer
    as $$ insert into auditdb.log (action, entity_type) values (a, 'Forged') $$;
grant execute on function auditdb.zz_forge(text) to {app};
create function auditdb.zz_rewrite() returns trigger language plpgsql
    as $$ begin return null; end $$;
create trigger zz_rewrite before insert on auditdb.log_default for each row execute function auditdb.zz_rewrite();
create rule zz_rule as on insert to auditdb.settings do instead nothing;
alter table auditdb.log alter column db_user set default 'someone-else';
grant execute on function auditdb.process_events(integer) to auditdb_writer;
"""


def test_what_code_running_as_auditdb_owner_planted_is_removed_by_the_upgrade(
    empty_db: str, template_db: str, tmp_path: Path
) -> None:
    # Under release 0006 the application's cast ran as auditdb_owner: whatever it could do then.
    install(empty_db, target="0006")
    with psycopg.connect(empty_db, autocommit=True) as conn, conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(PLANTED_AS_OWNER.format(app=APP_ROLE))
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    with psycopg.connect(empty_db, autocommit=True) as conn:
        removed = conn.execute(
            "select entity_name, entity_id from auditdb.log where metadata->>'operation' = 'foreign_object_removed'"
        ).fetchall()
        kinds = sorted(k for k, _ in removed)
        assert kinds == [
            "column default",
            "function",
            "function",
            "policy",
            "privilege",  # the application's on the log (its grant on zz_forge went with the function)
            "rule",
            "trigger",
        ]
        revoked = conn.execute(
            "select entity_id from auditdb.log where metadata->>'operation' = 'privilege_revoked'"
        ).fetchall()
        assert revoked == [("auditdb_writer EXECUTE on function auditdb.process_events(integer)",)]
        assert scalar(conn, "select count(*) from pg_policies where policyname = 'zz_all'") == 0
        assert scalar(conn, "select to_regprocedure('auditdb.zz_forge(text)')") is None
        assert not scalar(conn, f"select has_table_privilege('{APP_ROLE}', 'auditdb.log', 'select')")
        assert not scalar(
            conn, "select has_function_privilege('auditdb_writer', 'auditdb.process_events(integer)', 'execute')"
        )
        conn.execute("select auditdb.log_audit_change('X', 'x', 'x', null, '{}')")
        assert scalar(conn, "select db_user from auditdb.log order by id desc limit 1") == conn.info.user
    doctor = CliRunner().invoke(cli, ["--dsn", empty_db, "--config", "/nonexistent.toml", "doctor"])
    [line] = [line for line in doctor.output.splitlines() if "schema integrity" in line]
    assert line.startswith("ok")


def test_doctor_fails_on_an_object_auditdb_did_not_make(conn: psycopg.Connection[Any], dsn: str) -> None:
    conn.execute("create function auditdb.extra() returns int language sql as 'select 1'")
    conn.execute(f"grant select on auditdb.event_queue to {APP_ROLE}")
    doctor = CliRunner().invoke(cli, ["--dsn", dsn, "--config", "/nonexistent.toml", "doctor"])
    assert doctor.exit_code == 1
    [line] = [line for line in doctor.output.splitlines() if "schema integrity" in line]
    assert line.startswith("fail") and "auditdb.extra()" in line and "event_queue" in line


def test_install_gives_up_on_a_lock_an_application_holds(
    conn: psycopg.Connection[Any], dsn: str, app_dsn: str, track: Track
) -> None:
    track("create table items (id int primary key)", '[tables."public.items"]\n')
    conn.execute(f"grant all on items to {APP_ROLE}")
    conn.execute("comment on table auditdb.alembic_version is 'auditdb definitions of an older release'")
    with psycopg.connect(app_dsn) as app:
        app.execute("insert into items values (1)")  # holds the table until it ends
        with pytest.raises(AuditDBError, match="gave up waiting for a lock"):
            install(dsn, lock_timeout="500ms")
        app.rollback()
    install(dsn)


def test_the_definitions_marker_cannot_be_forged_by_the_schema_owner(conn: psycopg.Connection[Any], dsn: str) -> None:
    # Code that once ran as auditdb_owner could not mark older definitions as current: it cannot
    # comment on the installer's version table, and a version table of its own is not believed.
    from auditdb.db import require_installed
    from auditdb.install import definitions_marker, installed_marker

    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(f"comment on table auditdb.alembic_version is '{definitions_marker()}'")
    with conn.transaction():
        version = scalar(conn, "select version_num from auditdb.alembic_version")
        conn.execute("set local role auditdb_owner")
        conn.execute("drop table auditdb.alembic_version")  # the schema's owner may drop it
        conn.execute("create table auditdb.alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into auditdb.alembic_version values (%s)", (version,))
        conn.execute(f"comment on table auditdb.alembic_version is '{definitions_marker()}'")
        conn.execute("reset role")
        assert installed_marker(conn) is None
        with pytest.raises(AuditDBError, match="run `auditdb install`"):
            require_installed(conn)
        raise psycopg.Rollback()


PLANTED_QUIETER = """
create function auditdb.emit(action text) returns bigint language sql security definer
    as $$ insert into auditdb.log (action, entity_type) values (action, 'Forged') returning id $$;
alter table auditdb.settings add constraint zz_check check (public.zz_probe(name));
create index zz_index on auditdb.tenant_roles (public.zz_probe(role_name));
alter table auditdb.event_queue add column zz_generated boolean generated always as (public.zz_probe(action)) stored;
create function public.zz_elsewhere() returns void language sql security definer as 'select';
alter default privileges for role auditdb_owner in schema auditdb grant select on tables to {app};
grant create on schema auditdb to auditdb_writer;
"""


def _owner_planted_elsewhere_under_0006(empty_db: str, before: str, planting: str, after: str = "") -> None:
    """Release 0006, where auditdb_owner (which the application could act as) may create in public."""
    install(empty_db, target="0006")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("grant create on schema public to auditdb_owner")
        conn.execute(before)
        with conn.transaction():
            conn.execute("set local role auditdb_owner")
            conn.execute(planting)
        if after:
            conn.execute(after)


def test_quieter_plantings_are_removed_too(empty_db: str, template_db: str) -> None:
    # An overload of auditdb.emit a call could pick; constraints, indexes and generated columns
    # calling the application's code whenever auditdb writes; a definer function owned by
    # auditdb_owner outside the schema; default privileges; CREATE on the schema for its roles.
    _owner_planted_elsewhere_under_0006(
        empty_db,
        "create function public.zz_probe(text) returns boolean language sql immutable as 'select true'",
        PLANTED_QUIETER.format(app=APP_ROLE),
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    removed = _removed_by_install(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert removed == {
            "auditdb.emit(text)": "function",
            "zz_check on auditdb.settings": "constraint",
            "auditdb.zz_index": "index",
            "auditdb.event_queue.zz_generated": "column default",
            "function public.zz_elsewhere()": "object elsewhere",
            f"of auditdb_owner on tables to {APP_ROLE}": "default privilege",
            "auditdb_writer CREATE on schema auditdb": "privilege",
        }
        # The default privileges went before release 0007 created its tables: none was given away.
        assert not scalar(conn, f"select has_table_privilege('{APP_ROLE}', 'auditdb.admin_roles', 'select')")
        assert scalar(conn, "select count(*) from pg_proc where proname = 'emit'") == 1
        assert scalar(conn, "select to_regprocedure('public.zz_elsewhere()')") is None
        assert scalar(conn, "select count(*) from pg_default_acl where defaclrole = 'auditdb_owner'::regrole") <= 1
        assert scalar(conn, "select has_schema_privilege('auditdb_writer', 'auditdb', 'usage')")
        assert not scalar(conn, "select has_schema_privilege('auditdb_writer', 'auditdb', 'create')")
        # The function it called remains the application's, and nothing of auditdb's uses it.
        assert (
            scalar(conn, "select count(*) from pg_depend where refobjid = 'public.zz_probe(text)'::regprocedure") == 0
        )
    doctor = CliRunner().invoke(cli, ["--dsn", empty_db, "--config", "/nonexistent.toml", "doctor"])
    [line] = [line for line in doctor.output.splitlines() if "schema integrity" in line]
    assert line.startswith("ok"), line


def test_a_function_elsewhere_an_applications_trigger_uses_stops_the_upgrade(empty_db: str, template_db: str) -> None:
    # Left in place it would keep running with auditdb_owner's rights for whoever fires the trigger
    # (forging entries, disabling guards); dropped with CASCADE it would silently take the
    # application's trigger with it. The upgrade stops with one line and changes nothing.
    _owner_planted_elsewhere_under_0006(
        empty_db,
        "create table public.zz_items (id int)",
        "create function public.zz_used() returns trigger language plpgsql security definer"
        " as 'begin return null; end'",
        "create trigger zz after insert on public.zz_items for each row execute function public.zz_used()",
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 1, result.output
    assert "function public.zz_used() belongs to auditdb's roles but was not made by auditdb" in result.output
    assert "CASCADE" not in result.output
    assert "nothing was changed" in result.output and len(result.output.strip().splitlines()) == 1
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert scalar(conn, "select version_num from auditdb.alembic_version") == "0006"
        assert scalar(conn, "select count(*) from pg_trigger where tgname = 'zz'") == 1
        assert scalar(conn, "select proowner::regrole::text from pg_proc where proname = 'zz_used'") == "auditdb_owner"


def test_status_and_doctor_do_not_wait_behind_an_applications_lock(
    conn: psycopg.Connection[Any], dsn: str, app_dsn: str, track: Track, tmp_path: Path
) -> None:

    track("create table items (id int primary key)", '[tables."public.items"]\n')
    conn.execute(f"alter table items owner to {APP_ROLE}")
    (tmp_path / "auditdb.toml").write_text('[tables."public.items"]\n')
    config = ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml")]
    with psycopg.connect(app_dsn) as app:
        app.execute("lock table items in access exclusive mode")
        for command in ("status", "doctor"):
            started = time.monotonic()
            result = CliRunner().invoke(cli, [*config, command])
            assert time.monotonic() - started < 30, command
            assert result.exit_code == 0, result.output  # read from the catalog, not the locked table
        app.rollback()


# The application's code, for the plantings below to call: it records who ran it.
PROBE_SQL = """
create table public.probe_hits (who text, superuser boolean);
grant insert on public.probe_hits to public;
create function public.probe(x text) returns boolean language plpgsql as $$
begin
    insert into public.probe_hits select current_user, rolsuper from pg_roles where rolname = current_user;
    return true;
end $$;
grant execute on function public.probe(text) to public;
"""


def _planted_under_0006(empty_db: str, planting: str) -> None:
    install(empty_db, target="0006")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(PROBE_SQL)
        with conn.transaction():
            conn.execute("set local role auditdb_owner")
            conn.execute(planting)
        # Under release 0006 a replaced function its watchers call already runs as the superuser at
        # the next DDL (the planting's own): what counts is what runs from the upgrade on.
        conn.execute("truncate public.probe_hits")


def _probe_hits(dsn: str) -> list[tuple[str, bool]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [(str(w), bool(s)) for w, s in conn.execute("select who, superuser from public.probe_hits").fetchall()]


@pytest.mark.parametrize(
    "planting",
    [
        # Functions the old release's watchers (run as the superuser) and the upgrade call.
        """create or replace function auditdb.in_maintenance() returns boolean language plpgsql
               as $$ begin perform public.probe('in_maintenance'); return false; end $$""",
        """create or replace function auditdb.begin_maintenance() returns void language plpgsql
               as $$ begin perform public.probe('begin_maintenance'); end $$""",
        """create or replace function auditdb.log_audit_change(a text, b text, c text, d jsonb, e jsonb)
               returns void language plpgsql as $$ begin perform public.probe('log_audit_change'); end $$""",
        # The guard's function, and a trigger on a table the revisions write.
        """create or replace function auditdb.refuse_log_change() returns trigger language plpgsql
               as $$ begin perform public.probe('guard'); return null; end $$""",
        """create function auditdb.zz_t() returns trigger language plpgsql
               as $$ begin perform public.probe('trigger'); return new; end $$;
           create trigger zz before insert or update or delete on auditdb.tenant_roles
               for each row execute function auditdb.zz_t()""",
    ],
)
def test_nothing_the_old_release_holds_runs_as_the_superuser_who_upgrades(
    planting: str, empty_db: str, template_db: str
) -> None:
    _planted_under_0006(empty_db, planting)
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    assert [hit for hit in _probe_hits(empty_db) if hit[1]] == []
    doctor = CliRunner().invoke(cli, ["--dsn", empty_db, "--config", "/nonexistent.toml", "doctor"])
    [line] = [line for line in doctor.output.splitlines() if "schema integrity" in line]
    assert line.startswith("ok"), line


def test_a_version_table_the_schema_owner_replaced_stops_the_upgrade(empty_db: str, template_db: str) -> None:
    # Alembic reads and updates it as the superuser: a trigger or a domain check on it would run.
    _planted_under_0006(
        empty_db,
        """drop table auditdb.alembic_version;
           create table auditdb.alembic_version (version_num varchar(32) primary key);
           insert into auditdb.alembic_version values ('0006');
           create function auditdb.zz_t() returns trigger language plpgsql
               as $$ begin perform public.probe('version'); return new; end $$;
           create trigger zz before update on auditdb.alembic_version for each row execute function auditdb.zz_t()""",
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 1
    assert "auditdb.alembic_version is not the table install made" in result.output
    assert _probe_hits(empty_db) == []


def test_a_domain_planted_under_a_log_column_is_removed(empty_db: str, template_db: str) -> None:
    # Its check would run as whoever writes an entry: auditdb_owner (emit), auditdb_capture.
    _planted_under_0006(
        empty_db,
        """create domain auditdb.label as text check (public.probe(value));
           alter table auditdb.log alter column entity_type type auditdb.label""",
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("truncate public.probe_hits")
        conn.execute("select auditdb.log_audit_change('X', 'x', 'x', null, '{}')")
        assert (
            scalar(
                conn,
                "select format_type(atttypid, atttypmod) from pg_attribute "
                "where attrelid = 'auditdb.log'::regclass and attname = 'entity_type'",
            )
            == "text"
        )
        assert scalar(conn, "select to_regtype('auditdb.label')") is None
        removed = {
            r[0]
            for r in conn.execute(
                "select entity_name from auditdb.log where metadata->>'operation' = 'foreign_object_removed'"
            ).fetchall()
        }
        assert removed == {"column type", "domain"}
    assert _probe_hits(empty_db) == []


def test_other_kinds_of_objects_planted_are_removed_without_stopping_the_upgrade(
    empty_db: str, template_db: str
) -> None:
    _planted_under_0006(
        empty_db,
        """create procedure auditdb.zz_p() language sql as 'select 1';
           create aggregate auditdb.zz_agg(int) (sfunc = int4pl, stype = int);
           create view auditdb.zz_v as select public.probe('view') as hit;
           create table auditdb.zz_child () inherits (auditdb.tenant_roles);
           create table auditdb.zz_parts (k int) partition by list (k);
           create table auditdb.zz_part partition of auditdb.zz_parts for values in (1);
           create type auditdb.zz_enum as enum ('a')""",
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    removed = _removed_by_install(empty_db)
    assert removed == {
        "auditdb.zz_p()": "function",
        "auditdb.zz_agg(integer)": "function",
        "auditdb.zz_v": "relation",
        "auditdb.zz_child inherits auditdb.tenant_roles": "inheritance",
        # A partition cannot leave by NO INHERIT: it is detached.
        "auditdb.zz_part inherits auditdb.zz_parts": "inheritance",
        "auditdb.zz_enum": "type",
    }
    assert _probe_hits(empty_db) == []


def test_changes_to_auditdbs_tables_under_the_old_release_are_reported(empty_db: str, template_db: str) -> None:
    # What the schema's owner could do to its own tables: not code, but no longer what auditdb
    # made. The upgrade cannot tell what the right data would be: it says so, and doctor fails.
    _planted_under_0006(
        empty_db,
        """alter table auditdb.log_default disable trigger log_append_only;
           alter sequence auditdb.log_id_seq maxvalue 1000000 cycle;
           alter table auditdb.log_default set unlogged""",
    )
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    assert "warning: auditdb's tables differ from a fresh install in" in result.output
    with psycopg.connect(empty_db, autocommit=True) as conn:
        found = [
            r[0]
            for r in conn.execute(
                "select entity_id from auditdb.log where metadata->>'operation' = 'foreign_object_found'"
            ).fetchall()
        ]
    assert any("log_default.log_append_only" in f and "enabled=D" in f for f in found), found
    assert any(f.startswith("extra: sequence | log_id_seq") and "cycle" in f for f in found), found
    assert any(f.startswith("extra: relation | log_default") and "persistence=u" in f for f in found), found
    doctor = CliRunner().invoke(cli, ["--dsn", empty_db, "--config", "/nonexistent.toml", "doctor"])
    [line] = [line for line in doctor.output.splitlines() if "schema shape" in line]
    assert line.startswith("fail"), line
