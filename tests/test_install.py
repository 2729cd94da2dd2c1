"""auditdb install / uninstall: schema, roles, log, partitions, idempotence, frozen revisions."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import pglast
import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.install import HEAD_REVISION, alembic_head, definitions_marker, install, installed_marker
from tests.fix_db import scalar

LOG_COLUMNS = {
    "id": "bigint",
    "occurred_at": "timestamp with time zone",
    "action": "text",
    "entity_type": "text",
    "entity_id": "text",
    "entity_name": "text",
    "project_id": "text",
    "tenant_id": "text",
    "actor_id": "text",
    "actor_email": "text",
    "actor_name": "text",
    "ip": "inet",
    "user_agent": "text",
    "db_user": "text",
    "table_name": "text",
    "changes": "jsonb",
    "metadata": "jsonb",
    "txid": "bigint",
}

# Released revision files never change: an old revision must install the same schema forever.
FROZEN_SQL = {
    "0001_access.sql": "e5af4f7b5a53b60f19c459cda7152cdf5273d87d21424d3b83b51ed3640b37a4",
    "0001_capture.sql": "5f2bf9d5b63c838817b96482772b2389025a09f78499eb17834fa63af3d2f826",
    "0001_context.sql": "1365a078d76b62cf42627593a0749983af1065c3309d7d89682c56f85b609785",
    "0001_ddl.sql": "2ccdba4757d1b985cc0d8dcc7132d06499a6331e012a30edd8c646e44ca42ac9",
    "0001_events.sql": "fe9e0283a62342b62f47a87fb1c95f36402382b2b3d1775145fbfd1f7ee5ea45",
    "0001_grants.sql": "a5bddc7009aa3eae18cd2df43aa786b09857ba6b07f17d1d003593ec0c7085a7",
    "0001_guard.sql": "62888111761f6d17dfb291564b625f0d3133aa725d92ea59394528a7c12ca6bd",
    "0001_log.sql": "ae429d764a7cb2a2b31b65c9627d68398cee961da69e5168cee4e954ea24ab8a",
    "0001_partitions.sql": "d811916419eb9e496e9a071d3fb2ba028650396979105084b0f33614ece0926c",
    "0001_queue.sql": "79be3d96d8413ae58778d7720e29221c3014b40d3ee2b3136a54f7ed00e2b761",
    "0001_roles.sql": "b94409619b79a9d23d87e39c7fcca0ff4e130de00163682bc4d05883fc6b3d0d",
    "0002_capture.sql": "d0035c97f6b23c470d2c973dc7cc9c75c828ea9b6d6f5ffa27bdee27a8f24287",
    "0003_log.sql": "32597e6accead3d8cdf26e282b78ccad39e9c657bd928c01cce7ca0a49e74a20",
    "0004_queue.sql": "da4ae07cfb0975ad9738259cb5f638e07a1b5a97aa58f0dc2179725abf02094e",
    "0005_events.sql": "9932f61b5e6f46b1e618081f0ab0dab2fd2a7c7d97c459afab096cb12ea42e38",
    "0006_log.sql": "efbf87770c0051188510531244ea44b1ab70c684a374327d1af38e065307e937",
    "0007_trust.sql": "86d2905b4ce2502d204b0d7bbc3be82df1720359ac87d1ca4a79351672597eae",
    "0008_log.sql": "ca5619dc187d9899af279822f2aa12c3193be140f37514fb1905d6ae3a1856a5",
    "0009_seal.sql": "135ed8a97013934f79ebabeb7da71f6ac0c614c2fcb3c07c641dd21332c4935d",
    "0010_seal_emitters.sql": "6aed58011feb830b0ea8e68cfe58c8078bd0b374fd794aa0c1886ea55df44dbd",
}


def test_head_revision_matches_alembic() -> None:
    assert alembic_head() == HEAD_REVISION


def test_released_revision_files_are_frozen() -> None:
    root = resources.files("auditdb.sql")
    names = sorted(p.name for p in root.iterdir() if p.name[:4].isdigit() and p.name.endswith(".sql"))
    digests = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}
    assert digests == FROZEN_SQL, "a released revision file changed: add a new revision instead"


def test_install_on_empty_database(empty_db: str) -> None:
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    assert f"installed auditdb (schema version {HEAD_REVISION})" in result.output
    with psycopg.connect(empty_db) as conn:
        columns = dict(
            conn.execute(
                """select column_name, data_type from information_schema.columns
                where table_schema = 'auditdb' and table_name = 'log'"""
            ).fetchall()
        )
        assert columns == LOG_COLUMNS
        assert scalar(conn, "select relkind from pg_class where oid = 'auditdb.log'::regclass") == "p"
        assert scalar(conn, "select version_num from auditdb.alembic_version") == HEAD_REVISION
        roles = {
            r
            for (r,) in conn.execute(
                "select rolname from pg_roles where rolname like 'auditdb\\_%' and not rolcanlogin"
            )
        }
        assert {"auditdb_owner", "auditdb_admin", "auditdb_viewer", "auditdb_writer"} <= roles
        owner = scalar(conn, "select nspowner::regrole::text from pg_namespace where nspname = 'auditdb'")
        assert owner == "auditdb_owner"
        assert scalar(conn, "select to_regprocedure('auditdb.set_context(text,text,text,text,text,text,text,text)')")


def test_install_twice_is_a_noop(empty_db: str) -> None:
    install(empty_db)
    with psycopg.connect(empty_db) as conn:
        before = conn.execute(
            "select oid, relname from pg_class where relnamespace = 'auditdb'::regnamespace order by oid"
        ).fetchall()
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    with psycopg.connect(empty_db) as conn:
        after = conn.execute(
            "select oid, relname from pg_class where relnamespace = 'auditdb'::regnamespace order by oid"
        ).fetchall()
    assert after == before


def test_install_upgrades_an_older_schema(empty_db: str) -> None:
    # A database left at the first release moves to the head revision, and says so.
    assert install(empty_db, target="0001") == (None, "0001")
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    assert f"upgraded auditdb from schema version 0001 to {HEAD_REVISION}" in result.output
    with psycopg.connect(empty_db) as conn:
        assert scalar(conn, "select version_num from auditdb.alembic_version") == HEAD_REVISION
        assert installed_marker(conn) == definitions_marker()


def test_install_keeps_existing_roles(empty_db: str, conn: psycopg.Connection[Any]) -> None:
    # The template already created the roles in this cluster: a second database installs fine.
    assert scalar(conn, "select count(*) from pg_roles where rolname = 'auditdb_owner'") == 1
    install(empty_db)


def test_install_sql_prints_parseable_sql() -> None:
    result = CliRunner().invoke(cli, ["install", "--sql"])
    assert result.exit_code == 0, result.output
    assert "create table auditdb.log" in result.output
    assert pglast.parse_sql(result.output)


def test_log_indexes_serve_the_filters(conn: psycopg.Connection[Any]) -> None:
    indexes = dict(
        conn.execute(
            "select indexname, indexdef from pg_indexes where schemaname = 'auditdb' and tablename = 'log'"
        ).fetchall()
    )
    for column in ("id", "occurred_at", "entity_type", "actor_id", "tenant_id", "project_id", "action"):
        assert any(f"({column}" in d for d in indexes.values()), (column, indexes)


def test_every_function_pins_search_path(conn: psycopg.Connection[Any]) -> None:
    unpinned = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'auditdb'::regnamespace
              and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)"""
    ).fetchall()
    assert unpinned == []


def test_nothing_is_executable_by_public(conn: psycopg.Connection[Any]) -> None:
    public = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'auditdb'::regnamespace
              and has_function_privilege('public', p.oid, 'execute')"""
    ).fetchall()
    assert public == []
    writer = {
        r
        for (r,) in conn.execute(
            """select p.proname from pg_proc p where p.pronamespace = 'auditdb'::regnamespace
              and has_function_privilege('auditdb_writer', p.oid, 'execute')"""
        )
    }
    assert writer == {"set_context", "current_context", "emit"}


def test_uninstall_refuses_without_yes(dsn: str, conn: psycopg.Connection[Any]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "uninstall"])
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert scalar(conn, "select to_regnamespace('auditdb') is not null")


def test_uninstall_removes_schema_and_keeps_roles(dsn: str, conn: psycopg.Connection[Any]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "uninstall", "--yes"])
    assert result.exit_code == 0, result.output
    assert scalar(conn, "select to_regnamespace('auditdb') is null")
    assert scalar(conn, "select count(*) from pg_roles where rolname like 'auditdb\\_%'") >= 4
    again = CliRunner().invoke(cli, ["--dsn", dsn, "uninstall", "--yes"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    # And it can be installed again afterwards.
    assert install(dsn)[1] == HEAD_REVISION


@pytest.mark.parametrize("command", [["install"], ["partitions", "list"], ["partitions", "prune", "--older-than", "1"]])
def test_commands_on_a_database_without_auditdb(command: list[str], empty_db: str) -> None:
    result = CliRunner().invoke(cli, ["--dsn", empty_db, *command])
    if command == ["install"]:
        assert result.exit_code == 0
    else:
        assert result.exit_code == 1
        assert "auditdb is not installed" in result.output and "auditdb install" in result.output


def test_the_upgrade_refresh_knows_the_current_template_version() -> None:
    # sql/definitions/refresh.sql gives capture functions of any other template version the
    # generic body on upgrade: it must name the version auditdb/plan.py renders.
    from auditdb.plan import TEMPLATE_VERSION

    refresh = (resources.files("auditdb.sql") / "definitions" / "refresh.sql").read_text()
    assert f"not like 'auditdb:{TEMPLATE_VERSION}:%'" in refresh


def test_the_definitions_apply_again_over_themselves(empty_db: str) -> None:
    # What every later upgrade does: re-apply the current definitions over an installed database.
    install(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("comment on table auditdb.alembic_version is 'auditdb definitions of an older release'")
    result = CliRunner().invoke(cli, ["--dsn", empty_db, "install"])
    assert result.exit_code == 0, result.output
    with psycopg.connect(empty_db) as conn:
        assert installed_marker(conn) == definitions_marker()
        owner = scalar(
            conn, "select proowner::regrole::text from pg_proc where oid = 'auditdb.capture_generic'::regproc"
        )
        assert owner == "auditdb_capture"
