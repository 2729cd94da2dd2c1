"""The shape of schema auditdb: a fresh install has exactly sql/queries/structure.txt, an upgrade
from release 0006 ends with the same, and doctor fails on any difference."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.install import install
from auditdb.integrity import structure, structure_differences

HEADER = """# What a fresh install of this release has in schema auditdb (sql/queries/structure.sql): doctor
# fails on any difference. Rewritten by AUDITDB_WRITE_STRUCTURE=1 ./run test tests/test_integrity.py
"""


def test_a_fresh_install_has_the_expected_structure(conn: psycopg.Connection[Any]) -> None:
    # More months ahead than the install made: every partition looks the same.
    conn.execute("select auditdb.ensure_partitions(6)")
    if os.environ.get("AUDITDB_WRITE_STRUCTURE"):
        path = resources.files("auditdb.sql") / "queries" / "structure.txt"
        with resources.as_file(path) as target:
            target.write_text(HEADER + "\n".join(structure(conn)) + "\n", encoding="utf-8")
    assert structure_differences(conn) == []


# Every function of schema auditdb as the catalog holds it: signature, body, kind, rights,
# settings, owner and ACL; the owner's grant to itself left out (the ACL's first entry).
FUNCTIONS_SQL = """
select p.oid::regprocedure::text, p.prokind, p.prosecdef, p.proconfig::text, pg_catalog.md5(p.prosrc),
       pg_catalog.pg_get_userbyid(p.proowner),
       array(select a::text from pg_catalog.unnest(p.proacl) a order by 1)::text,
       pg_catalog.obj_description(p.oid, 'pg_proc')
  from pg_catalog.pg_proc p where p.pronamespace = 'auditdb'::regnamespace order by 1
"""
# Policies, event triggers and the schema's own ACL: the rest of what the definitions make.
REST_SQL = """
select 'policy', pol.polrelid::regclass::text || '.' || pol.polname, pol.polcmd::text,
       pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
       pol.polroles::regrole[]::text
  from pg_catalog.pg_policy pol join pg_catalog.pg_class c on c.oid = pol.polrelid
 where c.relnamespace = 'auditdb'::regnamespace
union all
select 'event trigger', evtname, evtevent, evtenabled::text, evtfoid::regproc::text, evttags::text
  from pg_catalog.pg_event_trigger where evtname like 'auditdb%'
union all
select 'schema', nspname, pg_catalog.pg_get_userbyid(nspowner), nspacl::text, null, null
  from pg_catalog.pg_namespace where nspname = 'auditdb'
order by 1, 2
"""


def _catalog(dsn: str) -> tuple[list[Any], list[Any], list[str]]:
    with psycopg.connect(dsn) as conn:
        return (
            conn.execute(FUNCTIONS_SQL).fetchall(),
            conn.execute(REST_SQL).fetchall(),
            structure_differences(conn),
        )


@pytest.mark.parametrize("release", ["0001", "0002", "0003", "0004", "0005", "0006", "0007"])
def test_an_upgrade_from_every_release_ends_as_a_fresh_install(release: str, empty_db: str, dsn: str) -> None:
    """Tables (structure.txt), functions with their bodies, owners and ACLs, policies, event triggers
    and the schema's privileges: the same whether installed now or at `release` and upgraded."""
    install(empty_db, target=release)
    install(empty_db)
    functions, rest, differences = _catalog(empty_db)
    fresh_functions, fresh_rest, _ = _catalog(dsn)
    assert differences == []
    assert len(fresh_functions) > 40 and len(fresh_rest) > 10
    assert functions == fresh_functions
    assert rest == fresh_rest


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ("alter table auditdb.log_default disable trigger log_append_only", "log_default.log_append_only"),
        (
            "drop trigger log_append_only on auditdb.log; create trigger log_append_only before delete on auditdb.log "
            "for each statement execute function auditdb.refuse_log_change()",
            "log.log_append_only",
        ),
        ("alter sequence auditdb.log_id_seq maxvalue 50 cycle", "sequence | log_id_seq"),
        ("alter table auditdb.log_default set unlogged", "relation | log_default"),
        ("alter table auditdb.log detach partition auditdb.log_default", "log_default"),
        ("alter table auditdb.event_queue drop constraint event_queue_action_check", "event_queue_action_check"),
        ("alter table auditdb.log alter column db_user type varchar(3)", "log.db_user"),
        ("grant update (changes) on auditdb.log to public", "column acl | log.changes"),
        ("create table auditdb.zz_spare (x int)", "zz_spare"),
        ("alter table auditdb.tenant_roles replica identity full", "relation | tenant_roles"),
        ("alter table auditdb.settings disable row level security", "relation | settings"),
    ],
)
def test_doctor_fails_on_a_change_to_auditdbs_tables(
    change: str, shown: str, conn: psycopg.Connection[Any], dsn: str
) -> None:
    conn.execute(change)
    differences = structure_differences(conn)
    assert differences and any(shown in line for line in differences), differences
    doctor = CliRunner().invoke(cli, ["--dsn", dsn, "--config", "/nonexistent.toml", "doctor"])
    assert doctor.exit_code == 1
    [line] = [line for line in doctor.output.splitlines() if "schema shape" in line]
    assert line.startswith("fail") and shown.split(" | ")[-1] in line, line
