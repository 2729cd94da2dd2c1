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


def test_an_upgrade_from_release_0006_has_the_same_structure(empty_db: str, template_db: str) -> None:
    install(empty_db, target="0006")
    install(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert structure_differences(conn) == []


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ("alter table auditdb.log_default disable trigger log_append_only", "log_default.log_append_only"),
        (
            "drop trigger log_append_only on auditdb.log; create trigger log_append_only before insert on auditdb.log "
            "for each statement execute function auditdb.refuse_log_change()",
            "log.log_append_only",
        ),
        ("alter sequence auditdb.log_id_seq maxvalue 50 cycle", "sequence | log_id_seq"),
        ("alter table auditdb.log_default set unlogged", "relation | log_default"),
        ("alter table auditdb.log detach partition auditdb.log_default", "log_default"),
        ("alter table auditdb.log drop constraint log_metadata_ck", "log.log_metadata_ck"),
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
