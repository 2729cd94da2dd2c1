"""Schema changes while 4 connections write: no business write fails because of auditing, no entry is partial."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from tests.fix_capture import Track, audit_entries, entries

TOML = '[defaults]\nmask = ["*secret*"]\n[tables."public.orders"]\nentity_type = "Order"\nname = "label"\n'


@pytest.mark.slow  # a load test: `./run test -m slow`
def test_add_drop_rename_columns_and_rename_table_under_load(
    conn: psycopg.Connection[Any], dsn: str, track: Track, tmp_path: Path
) -> None:
    track("create table orders (id serial primary key, label text, qty int default 0)", TOML)
    stop = threading.Event()
    failures: list[str] = []
    done = [0] * 4

    table = ["orders"]  # the writers follow the rename
    has_label = [True]

    def write(worker: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                name = sql.Identifier(table[0])
                try:
                    if has_label[0]:
                        c.execute(sql.SQL("insert into {} (label) values (%s)").format(name), (f"w{worker}",))
                    else:
                        c.execute(sql.SQL("insert into {} default values").format(name))
                    done[worker] += 1
                except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                    continue  # the application's own statement no longer fits the schema: not auditing
                except psycopg.Error as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    return

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    ddl = [
        "alter table orders add column note text",
        "alter table orders add column api_secret text default 'shh'",
        "alter table orders rename column note to remark",
        "alter table orders drop column qty",
        "alter table orders rename to orders_v2",
        "alter table orders_v2 drop column label",
    ]
    for statement in ddl:
        time.sleep(0.3)
        conn.execute(statement)
        if "rename to" in statement:
            table[0] = "orders_v2"
        if "drop column label" in statement:
            has_label[0] = False
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert min(done) > 0
    rows = conn.execute("select count(*) from orders_v2").fetchone()
    logged = entries(conn)
    assert rows is not None and len(logged) == rows[0] == sum(done)
    for e in logged:  # every entry has every column the row had when it was written
        assert {"id"} <= set(e["changes"]) and all(set(c) == {"new"} for c in e["changes"].values())
        if "api_secret" in e["changes"]:
            assert e["changes"]["api_secret"] == {"new": "***"}
    changed = audit_entries(conn, "metadata->>'operation' = 'schema_changed'")
    assert len(changed) == len(ddl)
    (tmp_path / "auditdb.toml").write_text(TOML)
    status = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])
    assert status.exit_code == 1  # the configured table is gone under that name
    doctor = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "doctor"])
    assert doctor.exit_code == 1
    [tracked] = [line for line in doctor.output.splitlines() if "tracked tables" in line]
    assert tracked.startswith("fail") and "public.orders missing (renamed to public.orders_v2" in tracked
