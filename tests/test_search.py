"""`log --search` through auditdb.search_log: the closed months' search indexes, within the reader's scope.

Every search is checked against the plain query under row-level security (ILIKE over the three
columns): same entries, same order, for each kind of reader.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from auditdb.partitions import index_closed_month, unindexed_months
from auditdb.query import Filters, fetch, where_clause
from tests.fix_db import scalar
from tests.fix_roles import MakeRole
from tests.fix_server import Server

NAMES = ["Invoice 1234", "invoice 12345", "ÄRGER Straße", "50% off_sale", "back\\slash", "Entity 12", "x", None]
TENANTS = ["t1", "t2", None]
SEARCHES = ["invoice 1234", "INVOICE", "nvo", "ärger", "straße", "50%", "f_s", "k\\s", "12", "x", "u1@", "zzz", "e 1"]


def _month(conn: psycopg.Connection[Any], back: int) -> tuple[str, Any, Any]:
    name = scalar(conn, "select 'log_' || to_char(auditdb.month_start(%s) at time zone 'UTC', 'YYYY_MM')", (-back,))
    lo = scalar(conn, "select auditdb.month_start(%s)", (-back,))
    hi = scalar(conn, "select auditdb.month_start(%s)", (-back + 1,))
    return name, lo, hi


def _fill(conn: psycopg.Connection[Any], start: Any) -> None:
    """One entry per name and tenant, a minute apart from start, as auditdb_owner writes them."""
    conn.execute(
        """insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, actor_email, tenant_id)
           select %s::timestamptz + make_interval(mins => (n.i * 10 + t.j)::int),
                  case when n.i %% 2 = 0 then 'LOGIN' else 'UPDATE' end, 'Thing',
                  'id-' || n.i || '-' || coalesce(t.tenant, 'none'), n.name, 'u' || n.i || '@example.com', t.tenant
             from unnest(%s::text[]) with ordinality n(name, i), unnest(%s::text[]) with ordinality t(tenant, j)""",
        (start, NAMES, TENANTS),
    )


@pytest.fixture
def months(conn: psycopg.Connection[Any]) -> list[str]:
    """Two closed months (as auditdb made them) and the open one, each with the same entries."""
    made = []
    for back in (2, 1):
        name, lo, hi = _month(conn, back)
        with conn.transaction():
            conn.execute("select auditdb.begin_maintenance()")
            conn.execute("set local role auditdb_owner")
            conn.execute(
                sql.SQL("create table auditdb.{} partition of auditdb.log for values from ({}) to ({})").format(
                    sql.Identifier(name), sql.Literal(lo), sql.Literal(hi)
                )
            )
            conn.execute("select auditdb.guard_log_table(%s::regclass)", (f"auditdb.{name}",))
            conn.execute("select auditdb.protect_log_table(%s::regclass)", (f"auditdb.{name}",))
            _fill(conn, lo)
        made.append(name)
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        _fill(conn, scalar(conn, "select now() - interval '2 hours'"))
    return made


def _plain(conn: psycopg.Connection[Any], filters: Filters, limit: int, before_id: int | None = None) -> list[int]:
    """The entries the plain query finds under row-level security (what --search read before)."""
    where, params = where_clause(filters, before_id)
    query = sql.SQL("select l.id from auditdb.log l where {} order by l.occurred_at desc, l.id desc limit %s")
    return [r[0] for r in conn.execute(query.format(where), [*params, limit])]


def _searched(conn: psycopg.Connection[Any], filters: Filters, limit: int, before_id: int | None = None) -> list[int]:
    return [r["id"] for r in fetch(conn, filters, limit=limit, before_id=before_id)]


def _index_all(conn: psycopg.Connection[Any]) -> list[str]:
    built = []
    while (name := index_closed_month(conn)) is not None:
        built.append(name)
    return built


def _same_everywhere(c: psycopg.Connection[Any], bounds: tuple[Any, Any]) -> int:
    """Every search, alone and with other filters and paging, finds what the plain query finds; how many it found."""
    since, until = bounds
    found = 0
    for text in SEARCHES:
        for filters in (
            Filters(search=text),
            Filters(search=text, tenant="t1"),
            Filters(search=text, tenant="t2", actions=("LOGIN",)),
            Filters(search=text, since=since),
            Filters(search=text, until=until),
        ):
            for limit in (3, 100):
                want = _plain(c, filters, limit)
                assert _searched(c, filters, limit) == want, (filters, limit)
                found += len(want)
                if want:
                    after = want[-1]
                    assert _searched(c, filters, limit, after) == _plain(c, filters, limit, after), (filters, limit)
    return found


def test_closed_months_are_indexed_one_at_a_time_newest_first(conn: psycopg.Connection[Any], months: list[str]) -> None:
    assert unindexed_months(conn) == months[::-1]
    assert _index_all(conn) == [f"{m}_search" for m in months[::-1]]
    assert unindexed_months(conn) == []
    this_month = scalar(conn, "select 'log_' || to_char(auditdb.month_start(0) at time zone 'UTC', 'YYYY_MM')")
    assert scalar(conn, "select to_regclass(%s)", (f"auditdb.{this_month}_search",)) is None
    # Building them is auditdb's upkeep, not a change to the log.
    assert scalar(conn, "select count(*) from auditdb.log where action = 'AUDIT_CHANGED'") == 0


def test_search_finds_what_the_plain_query_finds_for_every_reader(
    conn: psycopg.Connection[Any], months: list[str], dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    bounds = (
        scalar(conn, "select auditdb.month_start(-1) + interval '5 minutes'"),
        scalar(conn, "select auditdb.month_start(0)"),
    )
    before = _same_everywhere(conn, bounds)  # before the indexes: every month read in full
    assert before > 0
    _index_all(conn)
    assert _same_everywhere(conn, bounds) == before
    admin, bound, from_context = make_role(), make_role(), make_role()
    runner = CliRunner()
    dsn = pg_server.dsn(dbname)
    assert runner.invoke(cli, ["--dsn", dsn, "grant", admin, "--admin"]).exit_code == 0
    assert runner.invoke(cli, ["--dsn", dsn, "grant", bound, "--viewer", "--tenant", "t1"]).exit_code == 0
    assert runner.invoke(cli, ["--dsn", dsn, "grant", from_context, "--viewer", "--tenant-from-context"]).exit_code == 0
    sets_t2 = "set auditdb.tenant_id = 't2'"
    for role, setup in ((admin, ""), (bound, sets_t2), (from_context, sets_t2)):
        with psycopg.connect(pg_server.dsn(dbname, user=role), autocommit=True) as c:
            if setup:
                c.execute(setup)
            assert _same_everywhere(c, bounds) > 0
            rows = c.execute('select distinct tenant_id from auditdb.search_log(\'{"search": "invoice"}\')')
            tenants = {r[0] for r in rows}
            assert tenants == ({"t1", "t2", None} if role == admin else {"t1"} if role == bound else {"t2"})


def test_search_reads_the_index_of_a_closed_month(conn: psycopg.Connection[Any], months: list[str]) -> None:
    _, lo, _ = _month(conn, 2)
    with conn.transaction():  # a month big enough that reading it all costs more than the index
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, tenant_id)
               select %s::timestamptz + make_interval(secs => g), 'UPDATE', 'Thing', g::text, 'Entity ' || g,
                      't' || g %% 5
                 from generate_series(1, 20000) g""",
            (lo,),
        )
    _index_all(conn)
    index = f"{months[0]}_search"
    condition = scalar(conn, "select auditdb.search_text_condition('t1', 'invoice')")
    query = sql.SQL("explain select * from auditdb.{} l where {}").format(sql.Identifier(months[0]), sql.SQL(condition))
    plan = "\n".join(r[0] for r in conn.execute(query))
    assert index in plan
    # search_log's own reads: the index is scanned when a search runs (statistics of this backend).
    scans = "select idx_scan from pg_stat_user_indexes where indexrelname = %s"
    conn.execute("select pg_stat_clear_snapshot()")
    first = scalar(conn, scans, (index,))
    assert _searched(conn, Filters(search="invoice", tenant="t1"), 50)
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")
    conn.execute("select pg_stat_clear_snapshot()")
    assert scalar(conn, scans, (index,)) > first


def test_a_late_entry_of_a_closed_month_is_found(conn: psycopg.Connection[Any], months: list[str]) -> None:
    _index_all(conn)
    _, lo, _ = _month(conn, 1)
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (occurred_at, action, entity_type, entity_name, tenant_id)
               values (%s::timestamptz + interval '3 days', 'LOGIN', 'Thing', 'Quarterly Report', 't2')""",
            (lo,),
        )
    with conn.transaction():  # capture may write late entries too (a transaction open across midnight)
        conn.execute("set local role auditdb_capture")
        assert scalar(conn, "select cardinality(auditdb.search_keys('t1', 'abcd', null, null))") == 2
        # A long column: its first 200 characters give keys, and the tenant's overflow key stands for the rest.
        assert (
            scalar(conn, "select cardinality(auditdb.search_keys(repeat('t', 100000), repeat('x', 5000), null, null))")
            == 199
        )
    found = fetch(conn, Filters(search="quarterly rep", tenant="t2"))
    assert [r["entity_name"] for r in found] == ["Quarterly Report"]


def test_a_bound_viewer_calling_search_log_itself_sees_only_its_tenants(
    conn: psycopg.Connection[Any], months: list[str], dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    _index_all(conn)
    viewer = make_role()
    granted = CliRunner().invoke(cli, ["--dsn", pg_server.dsn(dbname), "grant", viewer, "--viewer", "--tenant", "t1"])
    assert granted.exit_code == 0
    hidden = scalar(conn, "select max(id) from auditdb.log where tenant_id = 't2'")
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        c.execute("set auditdb.tenant_id = 't2'")
        for filters in ('{"search": "invoice", "tenant": "t2"}', '{"search": "invoice"}', '{"search": "t2"}'):
            rows = c.execute("select tenant_id from auditdb.search_log(%s::jsonb, null, 1000)", (filters,)).fetchall()
            assert {r[0] for r in rows} <= {"t1"}
        # Paging from an entry it may not see gives nothing (not even where that entry sits in time).
        paged = c.execute('select count(*) from auditdb.search_log(\'{"search": "invoice"}\', %s)', (hidden,))
        assert paged.fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select auditdb.index_closed_month()")


def test_the_application_role_cannot_search_or_index(
    conn: psycopg.Connection[Any], months: list[str], app_conn: psycopg.Connection[Any]
) -> None:
    for call in (
        'select * from auditdb.search_log(\'{"search": "invoice"}\')',
        "select auditdb.index_closed_month()",
        "select * from auditdb.closed_months()",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute(call)
        app_conn.rollback()


def test_search_log_refuses_bad_arguments(conn: psycopg.Connection[Any], months: list[str]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_rows"):
        conn.execute('select * from auditdb.search_log(\'{"search": "x"}\', null, 0)')
    conn.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown filter"):
        conn.execute('select * from auditdb.search_log(\'{"search": "x", "sql": "true"}\')')
    conn.rollback()


def test_partitions_ensure_and_doctor_tell_about_the_indexes(
    dsn: str, conn: psycopg.Connection[Any], months: list[str]
) -> None:
    runner = CliRunner()
    doctor = runner.invoke(cli, ["--dsn", dsn, "doctor"])
    assert f"{months[1]}, {months[0]} not indexed for --search yet" in doctor.output
    result = runner.invoke(cli, ["--dsn", dsn, "partitions", "ensure"])
    assert result.exit_code == 0, result.output
    assert f"indexed auditdb.{months[1]} for --search" in result.output
    assert f"indexed auditdb.{months[0]} for --search" in result.output
    assert "every closed month indexed for --search" in runner.invoke(cli, ["--dsn", dsn, "doctor"]).output
    assert "indexed" not in runner.invoke(cli, ["--dsn", dsn, "partitions", "ensure"]).output


def test_the_cli_search_pages_through_the_index(dsn: str, conn: psycopg.Connection[Any], months: list[str]) -> None:
    _index_all(conn)
    want = _plain(conn, Filters(search="invoice", tenant="t1"), 100)
    assert len(want) > 4
    base = ["--dsn", dsn, "log", "--search", "invoice", "--tenant", "t1", "--limit", "2", "--format", "json"]
    first = CliRunner().invoke(cli, base)
    assert first.exit_code == 0, first.output
    ids = [e["id"] for e in json.loads(first.stdout)]
    assert ids == want[:2]
    following = CliRunner().invoke(cli, [*base, "--before-id", str(ids[-1])])
    assert [e["id"] for e in json.loads(following.stdout)] == want[2:4]


# --- what a review found (each was a failure before it was fixed) -----------------------------------


def _owner_insert(conn: psycopg.Connection[Any], query: str, params: Any = None) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(query, params)


def test_entries_of_the_default_partition_keep_the_page_to_its_size(
    conn: psycopg.Connection[Any], months: list[str], dsn: str
) -> None:
    _index_all(conn)
    _owner_insert(  # entries of a time no month covers land in log_default
        conn,
        """insert into auditdb.log (occurred_at, action, entity_type, entity_name, tenant_id)
           values ('2001-01-01', 'LOGIN', 'Thing', 'Invoice ancient', 't1'),
                  ('2001-01-02', 'LOGIN', 'Thing', 'Invoice ancient 2', 't1')""",
    )
    f = Filters(search="invoice", tenant="t1")
    want = _plain(conn, f, 1000)
    pages, before = [], None
    while page := [r["id"] for r in fetch(conn, f, limit=2, before_id=before)]:
        assert len(page) <= 2
        pages += page
        before = page[-1]
    assert pages == want
    assert scalar(conn, 'select count(*) from auditdb.search_log(\'{"search": "invoice"}\', null, 1)') == 1


def test_a_tenant_outside_the_readers_is_never_looked_up(
    conn: psycopg.Connection[Any], months: list[str], dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    name, lo, _ = _month(conn, 1)
    _owner_insert(
        conn,
        """insert into auditdb.log (occurred_at, action, entity_type, entity_name, tenant_id)
           select %s::timestamptz + make_interval(hours => g), 'UPDATE', 'Deal', 'Project Bluebird merger', 't2'
             from generate_series(1, 7) g""",
        (lo,),
    )
    _index_all(conn)
    viewer = make_role()
    granted = CliRunner().invoke(cli, ["--dsn", pg_server.dsn(dbname), "grant", viewer, "--viewer", "--tenant", "t1"])
    assert granted.exit_code == 0
    count = (
        "select coalesce(sum(idx_tup_fetch), 0) + coalesce(sum(seq_tup_read), 0) from pg_stat_xact_user_tables "
        "where schemaname = 'auditdb' and relname = %s"
    )
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c, c.transaction():
        before = int(scalar(c, count, (name,)))
        assert (
            c.execute('select id from auditdb.search_log(\'{"tenant": "t2", "search": "bluebird"}\')').fetchall() == []
        )
        assert int(scalar(c, count, (name,))) == before  # t2's entries were not even read


def test_long_values_from_the_application_keep_the_index_small(
    conn: psycopg.Connection[Any], months: list[str]
) -> None:
    _, lo, _ = _month(conn, 1)
    tenant, long_name = "x" * 10_000, "abcdefghij" * 600 + " needle at the end"
    _owner_insert(
        conn,
        "insert into auditdb.log (occurred_at, action, entity_type, entity_name, tenant_id) "
        "values (%s::timestamptz + interval '1 day', 'CREATE', 'Item', %s, %s)",
        (lo, long_name, tenant),
    )
    assert len(_index_all(conn)) == 2
    # Past the first 200 characters the overflow key stands in, and ILIKE decides.
    found = fetch(conn, Filters(search="needle at the end", tenant=tenant))
    assert [r["entity_name"] for r in found] == [long_name]


def test_a_busy_month_does_not_hold_back_the_others(
    conn: psycopg.Connection[Any], months: list[str], dsn: str, pg_server: Server, dbname: str
) -> None:
    _, lo, _ = _month(conn, 1)
    with psycopg.connect(pg_server.dsn(dbname)) as holder:  # a late entry of the newer month, not committed
        holder.execute("set role auditdb_owner")
        holder.execute("insert into auditdb.log (occurred_at, action, entity_type) values (%s, 'LOGIN', 'X')", (lo,))
        result = CliRunner().invoke(cli, ["--dsn", dsn, "partitions", "ensure"])
        assert f"indexed auditdb.{months[0]} for --search" in result.output
        assert f"{months[1]} busy" in result.output
        holder.rollback()
    assert index_closed_month(conn) == f"{months[1]}_search"


def test_the_filters_limit_counts_what_they_say_not_how_they_compress(
    conn: psycopg.Connection[Any], months: list[str]
) -> None:
    conn.execute("create temp table f as select jsonb_build_object('search', repeat('abcdefgh', 125000)) as f")
    assert scalar(conn, "select pg_column_size(f) from f") < 16384
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        conn.execute("select count(*) from f, auditdb.search_log(f.f)")


def test_an_index_of_another_version_of_the_keys_is_not_used_and_is_rebuilt(
    conn: psycopg.Connection[Any], months: list[str]
) -> None:
    _index_all(conn)
    conn.execute(
        sql.SQL("comment on index auditdb.{} is 'auditdb search keys 1'").format(sql.Identifier(f"{months[0]}_search"))
    )
    assert unindexed_months(conn) == [months[0]]
    assert _searched(conn, Filters(search="invoice", tenant="t1"), 100) == _plain(
        conn, Filters(search="invoice", tenant="t1"), 100
    )
    assert index_closed_month(conn) == f"{months[0]}_search"
    assert unindexed_months(conn) == []
