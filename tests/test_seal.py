"""Seals and `auditdb verify`: each way a superuser can alter the log, done here, is found.

The superuser attacks of issue 17: edit, delete (with the AUDIT_CHANGED it caused), insert into a
sealed range, reorder, backdate, rewrite a column's values with ALTER TABLE … TYPE … USING, drop
a partition, alter or remove a seal, rewrite the whole chain (caught by an older checkpoint).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.checkpoint import generate_key
from auditdb.cli import cli
from auditdb.doctor import _seal_check
from auditdb.seal import ENTRY_COLUMNS, _printed, _reading, entry_digest, seal, verify
from tests.fix_db import scalar


def _write(conn: psycopg.Connection[Any], n: int, **values: Any) -> None:
    """n entries as auditdb_owner writes events (the log sets id, time, txid and user)."""
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_id, tenant_id, metadata)
               select 'LOGIN', 'User', 'u' || g, %s, %s, %s, jsonb_build_object('n', g)
                 from generate_series(1, %s) g""",
            (values.get("name", "Ann"), values.get("actor", "ann"), values.get("tenant", "t1"), n),
        )


def _seal_all(conn: psycopg.Connection[Any]) -> int:
    """What the worker does over two rounds: note the range, then seal it."""
    return seal(conn) + seal(conn)


def _findings(conn: psycopg.Connection[Any]) -> list[str]:
    return [f"{f.kind}: {f.message}" for f in verify(conn).findings]


def _partition_of(conn: psycopg.Connection[Any], entry_id: int) -> str:
    return str(scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (entry_id,)))


def _as_superuser_unguarded(conn: psycopg.Connection[Any], table: str, statement: str, params: Any = None) -> None:
    """What an insider with superuser rights does: switch the table's guards off, change it, switch them back.

    statement names the table as {t}.
    """
    names = [
        r[0]
        for r in conn.execute(
            "select tgname from pg_trigger where tgrelid = %s::regclass and not tgisinternal", (table,)
        )
    ]
    with conn.transaction():
        conn.execute(f"alter table {table} disable trigger user")
        conn.execute(statement.replace("{t}", table), params)
        for name in names:
            conn.execute(f"alter table {table} enable always trigger {name}")


@pytest.fixture
def sealed(conn: psycopg.Connection[Any]) -> list[int]:
    """Two seals' worth of entries, sealed; their ids."""
    _write(conn, 30)
    assert _seal_all(conn) > 0
    _write(conn, 20, name="Bob", actor="bob")
    _seal_all(conn)
    assert _findings(conn) == []
    return [r[0] for r in conn.execute("select id from auditdb.log where action = 'LOGIN' order by id")]


def test_the_digest_is_the_same_computed_here_or_by_the_server(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_name, ip, user_agent,
                                        changes, metadata)
               values ('UPDATE', 'Ünïcode', E'line\\nbreak', 'quote '' and "double" \\ back', 'Zoë 😀', '2001:db8::1',
                       null, '{"b": {"new": "é", "old": 1.50}, "a": [1, "x\\"y"]}', '{"k": null}')"""
        )
    with _reading(conn), conn.cursor() as cur:
        _printed(cur)
        rows = cur.execute(
            psycopg.sql.SQL("select {}, encode(auditdb.entry_digest(l), 'hex') from auditdb.log l order by id").format(
                psycopg.sql.SQL(", ").join(psycopg.sql.Identifier("l", c) for c in ENTRY_COLUMNS)
            )
        ).fetchall()
    assert rows
    for row in rows:
        assert entry_digest(row[:-1]).hex() == row[-1], row


def test_a_cast_a_superuser_defines_does_not_fool_verify(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    """verify reads values as their types print them: a cast made to print the old text changes nothing."""
    target = sealed[4]
    before = scalar(conn, "select metadata::text from auditdb.log where id = %s", (target,))
    _as_superuser_unguarded(
        conn, _partition_of(conn, target), "update {t} set metadata = '{\"n\": 999}' where id = %s", (target,)
    )
    conn.execute(
        "create function public.same_as_before(jsonb) returns text language sql immutable "
        f"as $$ select case when $1 = '{{\"n\": 999}}' then '{before}' else $1::varchar end $$"
    )
    conn.execute("create cast (jsonb as text) with function public.same_as_before(jsonb)")
    try:
        found = _findings(conn)
        assert any(f.startswith("entries-altered") for f in found), found
    finally:
        conn.execute("drop cast (jsonb as text)")


def test_an_entry_without_an_id_in_any_range_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute("insert into auditdb.log (id, action, entity_type) values (-5, 'LOGIN', 'User')")
    found = _findings(conn)
    assert any("below 1" in f for f in found), found


def test_sealing_waits_for_a_transaction_that_holds_an_earlier_id(conn: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn) as slow:
        slow.execute("set role auditdb_owner")
        slow.execute(
            "insert into auditdb.log (action, entity_type) values ('LOGIN', 'Slow')"
        )  # id taken, not committed
        _write(conn, 5)  # later ids, committed
        assert seal(conn) == 0  # notes the range
        assert seal(conn) == 0  # the slow transaction may still commit an entry in it: wait
        slow.commit()
    assert seal(conn) > 0
    assert scalar(conn, "select count(*) from auditdb.log where entity_type = 'Slow'") == 1
    assert _findings(conn) == []
    covered = scalar(conn, "select count(*) from auditdb.log l where l.id <= (select max(upto_id) from auditdb.seal)")
    assert covered == scalar(conn, "select sum(entry_count) from auditdb.seal")


def test_a_session_that_took_no_log_id_does_not_hold_sealing_back(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Idle in transaction, with a transaction id, or a prepared transaction that wrote elsewhere: sealing goes on."""
    conn.execute("create table public.elsewhere (x int)")
    with psycopg.connect(dsn) as idle, psycopg.connect(dsn, autocommit=True) as prepared:
        idle.execute("insert into public.elsewhere values (1)")  # a transaction id, left open
        prepared.execute("begin")
        prepared.execute("insert into public.elsewhere values (2)")
        prepared.execute("prepare transaction 'auditdb_test_elsewhere'")
        try:
            _write(conn, 5)
            assert seal(conn) == 0  # notes the range
            assert seal(conn) == 5
            assert _findings(conn) == []
        finally:
            prepared.execute("rollback prepared 'auditdb_test_elsewhere'")


def test_doctor_names_a_session_idle_in_transaction_that_holds_sealing_back(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as idle:
        idle.execute("set application_name = 'forgotten-session'")
        idle.execute("begin")
        idle.execute("set local role auditdb_owner")
        idle.execute("insert into auditdb.log (action, entity_type) values ('LOGIN', 'Idle')")  # then nothing
        try:
            _write(conn, 3)
            assert seal(conn) == 0  # notes the range
            assert seal(conn) == 0  # the idle transaction holds an id in it
            check = _seal_check(conn)  # no seal yet: doctor names what holds sealing back
            pid = idle.info.backend_pid
            assert check.level == "warn" and f"held back by pid {pid} (idle in transaction since" in check.detail
            assert "forgotten-session" in check.detail, check
        finally:
            idle.execute("rollback")
    assert seal(conn) == 3


def test_a_prepared_transaction_that_took_an_id_holds_sealing_until_it_ends(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as slow:
        slow.execute("begin")
        slow.execute("set local role auditdb_owner")
        slow.execute("insert into auditdb.log (action, entity_type) values ('LOGIN', 'Prepared')")
        _write(conn, 5)
        assert seal(conn) == 0  # notes the range: the open transaction holds an id in it
        slow.execute("prepare transaction 'auditdb_test_seal'")  # its locks move to no session
        try:
            assert seal(conn) == 0
            check = _seal_check(conn)  # no seal yet: doctor names what holds sealing back
            assert check.level == "warn" and "prepared transaction 'auditdb_test_seal'" in check.detail, check
        finally:
            slow.execute("commit prepared 'auditdb_test_seal'")
    assert seal(conn) == 6
    assert scalar(conn, "select count(*) from auditdb.log where entity_type = 'Prepared'") == 1
    assert _findings(conn) == []


def test_an_edited_entry_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    target = sealed[3]
    _as_superuser_unguarded(
        conn, _partition_of(conn, target), "update {t} set actor_id = 'mallory' where id = %s", (target,)
    )
    found = _findings(conn)
    assert any(f.startswith("entries-altered") and "same number" in f for f in found), found


def test_a_deleted_entry_and_the_audit_change_it_caused_are_found(
    conn: psycopg.Connection[Any], sealed: list[int]
) -> None:
    target = sealed[5]
    partition = _partition_of(conn, target)
    _as_superuser_unguarded(conn, partition, "delete from {t} where id = %s", (target,))
    _as_superuser_unguarded(
        conn, partition, "delete from {t} where action = 'AUDIT_CHANGED' and id > %s", (sealed[-1],)
    )
    found = _findings(conn)
    assert any(f.startswith("entries-altered") and "sealed" in f and "there now" in f for f in found), found


def test_an_entry_inserted_into_a_sealed_range_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (id, action, entity_type, actor_id) values (%s, 'LOGIN', 'User', 'forged')",
            (sealed[3],),  # an id inside the sealed range (ids need not be unique to PostgreSQL)
        )
    found = _findings(conn)
    assert any(f.startswith("entries-altered") for f in found), found
    assert any("appear more than once" in f for f in found), found


def test_reordered_entries_are_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    a, b = sealed[1], sealed[2]
    partition = _partition_of(conn, a)
    _as_superuser_unguarded(
        conn,
        partition,
        "update {t} set id = -1 where id = %s",
        (a,),
    )
    _as_superuser_unguarded(conn, partition, "update {t} set id = %s where id = %s", (a, b))
    _as_superuser_unguarded(conn, partition, "update {t} set id = %s where id = -1", (b,))
    found = _findings(conn)
    assert any(f.startswith("entries-altered") for f in found), found


def test_a_rewrite_by_alter_column_type_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    with conn.transaction():
        conn.execute("alter table auditdb.log alter column actor_id type text using upper(actor_id)")
    found = _findings(conn)
    assert any(f.startswith("entries-altered") for f in found), found


def test_a_dropped_partition_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    partition = _partition_of(conn, sealed[0])
    with conn.transaction():
        conn.execute("select auditdb.begin_maintenance()")
        conn.execute(f"alter table auditdb.log detach partition {partition}")
        conn.execute(f"drop table {partition}")
    found = _findings(conn)
    assert any(f.startswith("entries-altered") and "0 there now" in f for f in found), found


def test_a_backdated_entry_is_found_before_and_after_it_is_sealed(
    conn: psycopg.Connection[Any], sealed: list[int]
) -> None:
    floor = scalar(conn, "select max(floor_at) from auditdb.seal")
    assert floor is not None
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (occurred_at, action, entity_type, actor_id) "
            "values (now() - interval '2 days', 'LOGIN', 'User', 'backdated')"
        )
    assert any(f.startswith("backdated") and "not yet sealed" in f for f in _findings(conn))
    _seal_all(conn)
    found = _findings(conn)
    assert any(f.startswith("backdated") and "(seal" in f for f in found), found


@pytest.mark.slow  # waits out seconds between seals: `./run test -m slow`
def test_an_event_committed_long_after_it_was_emitted_is_not_backdated(conn: psycopg.Connection[Any], dsn: str) -> None:
    """An event is dated when emitted; its transaction may commit seals later: the bound allows for it.

    The bound comes from who holds the event queue's id sequence (pg_locks), noted at each seal:
    an emitter new since the last note emitted after it; one already there is bounded as then.
    """
    from auditdb.worker import Worker

    _write(conn, 3)
    _seal_all(conn)  # a note with no emitter
    with psycopg.connect(dsn) as emitter:
        emitter.execute("select auditdb.emit('LOGIN', entity_type => 'User', entity_id => 'late')")
        time.sleep(1.5)  # now less a second is past the event's time
        for _ in range(3):  # seals made while it is in flight, each with a bound
            _write(conn, 2)
            _seal_all(conn)
            time.sleep(0.6)
        last_sealed = scalar(conn, "select max(sealed_at) - interval '1 second' from auditdb.seal")
        emitter.commit()
    Worker(dsn).run(once=True)
    occurred = scalar(conn, "select occurred_at from auditdb.log where entity_id = 'late'")
    # a bound of "a second before the seal" would have called it backdated
    assert occurred < last_sealed
    _seal_all(conn)
    report = verify(conn)
    assert report.ok, report.findings
    assert report.unsealed == 0
    # and the bound is not left at -infinity meanwhile: entries forged before it are still found
    assert scalar(conn, "select max(floor_at) from auditdb.seal") > scalar(conn, "select now() - interval '1 hour'")


def test_the_owner_reads_no_other_sessions_activity(conn: psycopg.Connection[Any]) -> None:
    """Revision 0010: sealing needs pg_locks only; auditdb_owner is no member of pg_read_all_stats."""
    assert scalar(conn, "select pg_has_role('auditdb_owner', 'pg_read_all_stats', 'member')") is False


def test_an_altered_seal_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    _as_superuser_unguarded(conn, "auditdb.seal", "update {t} set entry_count = entry_count - 1 where seal_id = 1")
    found = _findings(conn)
    assert any(f.startswith("seal-altered") and "seal 1" in f for f in found), found


def test_a_removed_seal_is_found(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    assert scalar(conn, "select count(*) from auditdb.seal") >= 2
    _as_superuser_unguarded(conn, "auditdb.seal", "delete from {t} where seal_id = 1")
    found = _findings(conn)
    assert any(f.startswith("seal-missing") for f in found), found
    assert any(f.startswith("chain-broken") for f in found), found


def test_seals_refuse_plain_changes_even_from_a_superuser(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    for statement in ("update auditdb.seal set entry_count = 0", "delete from auditdb.seal", "truncate auditdb.seal"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"written only by auditdb\.seal"):
            conn.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("update auditdb.seal_state set pending_upto = 0")


def test_vacuum_full_keeps_it_verifying(conn: psycopg.Connection[Any], sealed: list[int]) -> None:
    conn.execute(f"vacuum full {_partition_of(conn, sealed[0])}")
    assert _findings(conn) == []


def test_a_rewritten_chain_is_caught_by_an_older_checkpoint(
    conn: psycopg.Connection[Any], dsn: str, sealed: list[int], tmp_path: Path
) -> None:
    key, checkpoint = tmp_path / "operator.key", tmp_path / "checkpoint.json"
    runner = CliRunner()
    made = runner.invoke(
        cli, ["--dsn", dsn, "checkpoint", "--key", str(key), "--generate-key", "--output", str(checkpoint)]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(checkpoint.read_text())["seal_id"] >= 2
    public = f"{key}.pub"
    unpinned = runner.invoke(cli, ["--dsn", dsn, "verify", "--checkpoint", str(checkpoint)])
    assert unpinned.exit_code == 2 and "needs --public-key" in unpinned.output
    ok = runner.invoke(cli, ["--dsn", dsn, "verify", "--checkpoint", str(checkpoint), "--public-key", public])
    assert ok.exit_code == 0, ok.output
    assert "extends checkpoint at seal" in ok.output
    # The insider edits an entry, then throws the seals away and seals everything again: the chain
    # verifies on its own, but no longer extends what the operator signed.
    target = sealed[0]
    _as_superuser_unguarded(
        conn, _partition_of(conn, target), "update {t} set actor_id = 'mallory' where id = %s", (target,)
    )
    _as_superuser_unguarded(conn, "auditdb.seal", "delete from {t}")
    _as_superuser_unguarded(
        conn,
        "auditdb.seal_state",
        "update {t} set pending_upto = null, pending_vxids = null, pending_xmax = null",
    )
    _seal_all(conn)
    _seal_all(conn)
    alone = runner.invoke(cli, ["--dsn", dsn, "verify"])
    assert alone.exit_code == 0, alone.output
    caught = runner.invoke(cli, ["--dsn", dsn, "verify", "--checkpoint", str(checkpoint), "--public-key", public])
    assert caught.exit_code == 1, caught.output
    assert "rewritten" in caught.output or "gone" in caught.output


def test_checkpoint_signs_only_a_chain_it_recomputed(
    conn: psycopg.Connection[Any], dsn: str, sealed: list[int], tmp_path: Path
) -> None:
    """A seal's hash edited in the table is not signed: checkpoint recomputes the chain first."""
    _as_superuser_unguarded(
        conn,
        "auditdb.seal",
        "update {t} set seal_sha256 = sha256('forged') where seal_id = (select max(seal_id) from {t})",
    )
    key = tmp_path / "operator.key"
    made = CliRunner().invoke(cli, ["--dsn", dsn, "checkpoint", "--key", str(key), "--generate-key"])
    assert made.exit_code == 1, made.output
    assert "the seal chain does not verify, so there is nothing to sign" in made.output
    assert "{" not in made.output  # nothing was written


def test_an_altered_checkpoint_or_another_key_is_refused(
    conn: psycopg.Connection[Any], dsn: str, sealed: list[int], tmp_path: Path
) -> None:
    key, other, checkpoint = tmp_path / "k", tmp_path / "other", tmp_path / "c.json"
    runner = CliRunner()
    assert (
        runner.invoke(
            cli, ["--dsn", dsn, "checkpoint", "--key", str(key), "--generate-key", "-o", str(checkpoint)]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            cli, ["--dsn", dsn, "checkpoint", "--key", str(other), "--generate-key", "-o", str(tmp_path / "x")]
        ).exit_code
        == 0
    )
    wrong_key = runner.invoke(
        cli, ["--dsn", dsn, "verify", "--checkpoint", str(checkpoint), "--public-key", f"{other}.pub"]
    )
    assert wrong_key.exit_code == 1 and "FOUND" in wrong_key.output and "not signed with the key" in wrong_key.output
    data = json.loads(checkpoint.read_text())
    data["seal_sha256"] = "0" * 64
    checkpoint.write_text(json.dumps(data))
    altered = runner.invoke(
        cli, ["--dsn", dsn, "verify", "--checkpoint", str(checkpoint), "--public-key", f"{key}.pub"]
    )
    assert altered.exit_code == 1 and "signature does not match" in altered.output, altered.output


def test_the_cli_seals_and_verifies(conn: psycopg.Connection[Any], dsn: str) -> None:
    _write(conn, 10)
    runner = CliRunner()
    first = runner.invoke(cli, ["--dsn", dsn, "seal"])
    assert first.exit_code == 0 and "nothing to seal yet" in first.output, first.output
    second = runner.invoke(cli, ["--dsn", dsn, "seal"])
    assert second.exit_code == 0 and "sealed" in second.output, second.output
    result = runner.invoke(cli, ["--dsn", dsn, "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 1 seals")


def test_who_may_verify(
    conn: psycopg.Connection[Any], dsn: str, sealed: list[int], make_role: Any, pg_server: Any, dbname: str
) -> None:
    admin, viewer = make_role(), make_role()
    runner = CliRunner()
    assert runner.invoke(cli, ["--dsn", dsn, "grant", admin, "--admin"]).exit_code == 0
    assert runner.invoke(cli, ["--dsn", dsn, "grant", viewer, "--viewer", "--tenant", "t1"]).exit_code == 0
    as_admin = runner.invoke(cli, ["--dsn", pg_server.dsn(dbname, user=admin), "verify"])
    assert as_admin.exit_code == 0, as_admin.output
    as_viewer = runner.invoke(cli, ["--dsn", pg_server.dsn(dbname, user=viewer), "verify"])
    assert as_viewer.exit_code == 3 and "does not read every entry" in as_viewer.output, as_viewer.output


def test_the_application_role_can_neither_seal_nor_read_or_write_seals(
    conn: psycopg.Connection[Any], sealed: list[int], app_conn: psycopg.Connection[Any]
) -> None:
    for statement in (
        "select auditdb.seal()",
        "select * from auditdb.seal_status()",
        "select auditdb.entry_digest(l) from auditdb.log l limit 1",
        "select * from auditdb.seal",
        "insert into auditdb.seal_state default values",
        "update auditdb.seal_state set pending_upto = 0",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute(statement)
        app_conn.rollback()
    # A cast it defines on its own type changes nothing in what seals hash (values print through
    # their types' output functions) and sealing goes on.
    app_conn.execute("create type public.mine as (v text)")
    app_conn.execute("create function public.mine_text(public.mine) returns text language sql as $$ select 'x' $$")
    app_conn.execute("create cast (public.mine as text) with function public.mine_text(public.mine)")
    _write(conn, 3)
    _seal_all(conn)
    assert _findings(conn) == []


@pytest.mark.slow  # waits out two sealing rounds: `./run test -m slow`
def test_the_worker_seals_at_its_pace_whatever_its_poll_interval(conn: psycopg.Connection[Any], dsn: str) -> None:
    """An entry is sealed within about two sealing rounds (5 s each), with a poll interval of a minute too."""
    from auditdb.worker import Worker

    worker = Worker(dsn, poll_interval=60.0)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.5)
        _write(conn, 5)
        written = time.monotonic()
        while time.monotonic() - written < 20 and not scalar(conn, "select count(*) from auditdb.seal"):
            time.sleep(0.2)
        assert scalar(conn, "select coalesce(max(upto_id), 0) from auditdb.seal") >= scalar(
            conn, "select max(id) from auditdb.log"
        )
        assert time.monotonic() - written < 15
    finally:
        worker.stop()
        thread.join(30)


def test_doctor_names_an_emitter_holding_the_bound_back(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emitter that stays open keeps the bound for later entries where it was: doctor says so, and who."""
    from auditdb import doctor

    _write(conn, 3)
    _seal_all(conn)
    with psycopg.connect(dsn, autocommit=True) as emitter:
        emitter.execute("begin")
        emitter.execute("select auditdb.emit('LOGIN', entity_type => 'User', entity_id => 'held')")
        emitter.execute("prepare transaction 'auditdb_test_bound'")
        try:
            _write(conn, 2)
            _seal_all(conn)
            _write(conn, 2)
            _seal_all(conn)
            assert _seal_check(conn).level == "ok"  # a bound seconds behind: nothing to say
            monkeypatch.setattr(doctor, "SEAL_BOUND_WARN_SECONDS", 0)
            check = _seal_check(conn)
            assert check.level == "warn", check
            assert "bound for later entries is 0 min behind: held back by a prepared transaction" in check.detail
        finally:
            emitter.execute("rollback prepared 'auditdb_test_bound'")


def test_proof_commands_refuse_bad_input_as_usage_errors(
    conn: psycopg.Connection[Any],
    dsn: str,
    sealed: list[int],
    tmp_path: Path,
    make_role: Any,
    pg_server: Any,
    dbname: str,
) -> None:
    runner = CliRunner()
    for since in ("abc", "", "999999d"):
        result = runner.invoke(cli, ["--dsn", dsn, "verify", "--since", since])
        assert result.exit_code == 2 and "--since" in result.output, (since, result.output)
    lonely_key = runner.invoke(cli, ["--dsn", dsn, "verify", "--public-key", __file__])
    assert lonely_key.exit_code == 2 and "give --checkpoint FILE too" in lonely_key.output
    key, out = tmp_path / "k", tmp_path / "c.json"
    out.write_text("an earlier checkpoint")
    kept = runner.invoke(cli, ["--dsn", dsn, "checkpoint", "--key", str(key), "--generate-key", "-o", str(out)])
    assert kept.exit_code == 2 and "never replaces a file" in kept.output and out.read_text() == "an earlier checkpoint"
    assert not key.exists()  # the refused command generated nothing
    generate_key(key)
    own = runner.invoke(cli, ["--dsn", dsn, "checkpoint", "--key", str(key), "-o", str(key)])
    assert own.exit_code == 2 and "never replaces a file" in own.output
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    fresh = tmp_path / "fresh"
    into_key = runner.invoke(
        cli, ["--dsn", dsn, "checkpoint", "--key", str(fresh), "--generate-key", "-o", f"{fresh}.pub"]
    )
    assert into_key.exit_code == 2 and "that is the key's own file" in into_key.output and not fresh.exists()
    printed = runner.invoke(cli, ["--dsn", dsn, "checkpoint", "--key", str(key)])
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    assert document["seal_id"] == 2 and document["signature"]
    assert runner.invoke(cli, ["--dsn", dsn, "seal"]).output.startswith("every entry is sealed (seal 2")
    viewer = make_role()
    assert runner.invoke(cli, ["--dsn", dsn, "grant", viewer, "--viewer", "--tenant", "t1"]).exit_code == 0
    as_viewer = runner.invoke(cli, ["--dsn", pg_server.dsn(dbname, user=viewer), "seal"])
    assert as_viewer.exit_code == 1 and "may not seal: sealing needs an admin" in as_viewer.output, as_viewer.output
