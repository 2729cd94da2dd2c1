"""`auditdb doctor`: the seed's troubleshooting checklist, executable. One line per check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from auditdb.config import Config, defaults_near_misses, defaults_slips
from auditdb.db import pinned
from auditdb.errors import AuditDBError
from auditdb.install import HEAD_REVISION, definitions_marker, foreign_objects, installed_marker, installed_version
from auditdb.integrity import structure_differences
from auditdb.partitions import unindexed_months
from auditdb.plan import plan_tables
from auditdb.status import State, event_trigger_status, status

__all__ = ["Check", "run_checks"]

MIN_SERVER = 140000
HEARTBEAT_STALE = timedelta(minutes=2)
QUEUE_WARN = timedelta(minutes=1)
QUEUE_FAIL = timedelta(minutes=15)
CHECK_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # "ok", "warn" or "fail"
    detail: str


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


# Entries written this long ago and not sealed yet make the seal check warn.
SEAL_LAG_WARN_SECONDS = 120
# A newest seal whose bound for later entries is this far behind it makes the seal check warn.
SEAL_BOUND_WARN_SECONDS = 600


def _seal_check(conn: psycopg.Connection[Any]) -> Check:
    """How far sealing has come, and, when it lags, the transactions holding it back."""
    check = _seal_progress(conn)
    if check.level != "ok":
        return check
    return _bound_check(conn) or check


def _bound_check(conn: psycopg.Connection[Any]) -> Check | None:
    """A warning when the newest seal's bound for later entries lags far behind it, naming who holds it back.

    The bound cannot pass an event still to be logged: a transaction that emitted and stays open
    (or is prepared) keeps it where it was, and an entry forged with a time in that window would
    not show as backdated.
    """
    lag = _one(
        conn,
        """select case when s.floor_at = '-infinity' then -1
                       else extract(epoch from s.sealed_at - s.floor_at)::bigint end
             from auditdb.seal s order by s.seal_id desc limit 1""",
    )
    if lag is None or 0 <= lag < SEAL_BOUND_WARN_SECONDS:
        return None
    holders = [
        f"pid {pid}" + (f" ({state} since {since:%Y-%m-%d %H:%M:%S})" if since else "")
        if pid
        else "a prepared transaction"
        for pid, state, since in conn.execute(
            """select distinct k.pid, a.state, a.xact_start
                 from pg_catalog.pg_locks k left join pg_catalog.pg_stat_activity a on a.pid = k.pid
                where k.locktype = 'relation' and k.database = (select d.oid from pg_catalog.pg_database d
                                                                 where d.datname = current_database())
                  and k.relation = pg_catalog.pg_get_serial_sequence('auditdb.event_queue', 'id')::regclass
                order by a.xact_start nulls first limit 5"""
        )
    ]
    behind = "no bound yet" if lag < 0 else f"{lag // 60} min behind"
    who = f": held back by {'; '.join(holders)}, which emitted and has not ended" if holders else ""
    return Check(
        "seals",
        "warn",
        f"the newest seal's bound for later entries is {behind}{who} (an entry dated in that window would not "
        "show as backdated)",
    )


def _seal_progress(conn: psycopg.Connection[Any]) -> Check:
    """How far sealing has come, and, when it lags, the transactions holding it back."""
    row = conn.execute("select seal_id, upto_id, age_seconds, newest_id from auditdb.seal_status()").fetchone()
    seal_id, upto, age, newest = row if row else (None, None, None, 0)
    if not newest or (upto is not None and newest <= upto):
        return Check("seals", "ok", f"every entry sealed (seal {seal_id})" if seal_id else "nothing to seal yet")
    waiting = newest - (upto or 0)
    if seal_id is not None and age is not None and age < SEAL_LAG_WARN_SECONDS:
        return Check("seals", "ok", f"sealed up to entry {upto} (seal {seal_id}, {age} s ago); {waiting} id(s) since")
    holders = [
        f"pid {pid} ({state or 'unknown state'} since {since:%Y-%m-%d %H:%M:%S}, {app or 'no application name'})"
        for pid, state, since, app in conn.execute(
            # The sessions of the transactions the next seal waits for: they took log ids.
            """select distinct a.pid, a.state, a.xact_start, a.application_name
                 from auditdb.seal_status() st, pg_catalog.pg_locks k
                 join pg_catalog.pg_stat_activity a on a.pid = k.pid
                where k.virtualtransaction = any(st.waiting_for) and a.xact_start is not null
                order by a.xact_start limit 5"""
        )
    ]
    holders += [
        f"prepared transaction {gid!r} (since {prepared:%Y-%m-%d %H:%M:%S})"
        for gid, prepared in conn.execute(
            # A prepared transaction that took log ids holds sealing back until it is committed or
            # rolled back (its locks show no session; name this database's prepared transactions).
            """select p.gid, p.prepared from pg_catalog.pg_prepared_xacts p
                where p.database = current_database()
                  and exists (select from pg_catalog.pg_locks k
                               where k.pid is null and k.locktype = 'relation'
                                 and k.relation = 'auditdb.log_id_seq'::regclass)
                order by p.prepared limit 5"""
        )
    ]
    where = f"sealed up to entry {upto} (seal {seal_id}, {age} s ago)" if seal_id else "no seal yet"
    if holders:
        return Check("seals", "warn", f"{where}; held back by {'; '.join(holders)}")
    return Check(
        "seals",
        "warn",
        f"{where}; {waiting} id(s) since: start `auditdb worker` (it seals every few seconds) or run `auditdb seal`",
    )


def run_checks(conn: psycopg.Connection[Any], config: Config | None) -> list[Check]:
    """Every check, in the order a person would look; stops early only when nothing else can run."""
    # A check never waits long behind someone else's lock (an application holding one of its
    # partitions, say): it fails with one line instead.
    with pinned(conn, lock_timeout=CHECK_LOCK_TIMEOUT):
        return _checks(conn, config)


def _config_slips(conn: psycopg.Connection[Any], config: Config) -> Check:
    """What apply warns about: [defaults] globs and columns that match nothing (a typo, maybe)."""
    try:
        plans = plan_tables(conn, config)
    except AuditDBError as e:
        return Check("config", "fail", str(e))
    refused = defaults_near_misses(
        config, (c for p in plans for c in p.every_column), (c.name for p in plans for c in p.columns if not c.mask)
    )
    if refused:
        return Check("config", "fail", "; ".join(refused))
    slips = [w for p in plans for w in p.warnings]
    slips += defaults_slips(config, (c for p in plans for c in p.every_column))
    if not slips:
        return Check("config", "ok", "every mask, mask_last4 and ignore glob matches a column")
    more = f" (and {len(slips) - 2} more)" if len(slips) > 2 else ""
    return Check("config", "warn", "; ".join(slips[:2]) + more)


def _checks(conn: psycopg.Connection[Any], config: Config | None) -> list[Check]:
    checks = []
    version = conn.info.server_version
    checks.append(
        Check(
            "connection",
            "ok" if version >= MIN_SERVER else "fail",
            f"{conn.info.host}:{conn.info.port}/{conn.info.dbname} as {conn.info.user}, "
            f"PostgreSQL {version // 10000}.{version % 10000}"
            + ("" if version >= MIN_SERVER else " (auditdb needs 14 or newer)"),
        )
    )
    schema = installed_version(conn)
    if schema is None:
        checks.append(Check("schema", "fail", "auditdb is not installed: run `auditdb install`"))
        return checks
    marker = installed_marker(conn)
    current = schema == HEAD_REVISION and marker == definitions_marker()
    checks.append(
        Check(
            "schema",
            "ok" if current else "fail",
            f"version {schema}"
            + (
                ""
                if current
                else f", need {HEAD_REVISION}: run `auditdb install`"
                if schema != HEAD_REVISION
                else ": its functions are another release's, run `auditdb install`"
            ),
        )
    )
    if not current:
        return checks

    foreign = foreign_objects(conn)
    checks.append(
        Check(
            "schema integrity",
            "fail" if foreign else "ok",
            (
                "; ".join(f"{f.kind} {f.identity}" for f in foreign[:5])
                + (f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else "")
                + ": not auditdb's own; `auditdb install` removes them (superuser)"
            )
            if foreign
            else "only auditdb's own objects and privileges",
        )
    )

    differences = structure_differences(conn)
    checks.append(
        Check(
            "schema shape",
            "fail" if differences else "ok",
            (
                "; ".join(differences[:3])
                + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
                + ": auditdb's tables differ from a fresh install of this release; a superuser restores them"
            )
            if differences
            else "tables, columns, indexes, triggers and sequences as a fresh install has them",
        )
    )

    events = event_trigger_status(conn)
    checks.append(
        Check(
            "event triggers",
            "fail" if events else "ok",
            "; ".join(f"{e.table} {e.state.value}" for e in events) or "present, enabled ALWAYS",
        )
    )

    if config is not None:
        try:
            tables = status(conn, config)
        except AuditDBError as e:  # e.g. a configured table renamed or dropped
            checks.append(Check("tracked tables", "fail", f"{e}; fix auditdb.toml, then `auditdb apply`"))
        else:
            drift = [t for t in tables if t.state is not State.INSTALLED and not t.table.startswith("event trigger")]
            checks.append(
                Check(
                    "tracked tables",
                    "fail" if drift else "ok",
                    "; ".join(f"{t.table} {t.state.value}" + (f" ({t.detail})" if t.detail else "") for t in drift)
                    or f"{len(config.tables)} table(s) match the config",
                )
            )
            checks.append(_config_slips(conn, config))
    else:
        count = _one(conn, "select count(*) from auditdb.tracked_tables")
        checks.append(Check("tracked tables", "warn", f"no config given; {count} table(s) tracked (pass --config)"))

    # A worker runs only while the backend that wrote its heartbeat is still connected: a row alone
    # (written by hand, or left by `worker --once` or a worker that died) is not a running worker.
    beat = conn.execute(
        """select worker, now() - last_seen, backend_alive from auditdb.live_workers()
            order by backend_alive desc, last_seen desc limit 1"""
    ).fetchone()
    if beat is None:
        checks.append(Check("worker", "warn", "no worker has run: start `auditdb worker`"))
    else:
        age: timedelta = beat[1]
        seen = f"{beat[0]} last seen {age.total_seconds():.0f} s ago"
        if age > HEARTBEAT_STALE:
            checks.append(Check("worker", "fail", f"{seen}: is `auditdb worker` running?"))
        elif not beat[2]:
            checks.append(Check("worker", "warn", f"{seen}, not running now (fine for `worker --once` from cron)"))
        else:
            checks.append(Check("worker", "ok", seen))

    queue = conn.execute("select count(*), now() - min(emitted_at) from auditdb.event_queue").fetchone()
    backlog, oldest = (int(queue[0]), queue[1]) if queue else (0, None)
    if not backlog or oldest is None:
        checks.append(Check("event queue", "ok", "empty"))
    else:
        level = "fail" if oldest > QUEUE_FAIL else "warn" if oldest > QUEUE_WARN else "ok"
        checks.append(Check("event queue", level, f"{backlog} waiting, oldest {oldest.total_seconds():.0f} s"))

    dead = conn.execute("select count(*), max(id) from auditdb.event_dead_letter").fetchone()
    if dead and dead[0]:
        checks.append(
            Check(
                "dead letters",
                "fail",
                f"{dead[0]} event(s) could not be logged (newest queue id {dead[1]}): see auditdb.event_dead_letter "
                "and the AUDIT_CHANGED entries naming them",
            )
        )
    else:
        checks.append(Check("dead letters", "ok", "none"))

    missing = conn.execute(
        """select 'log_' || to_char(auditdb.month_start(m) at time zone 'UTC', 'YYYY_MM')
             from generate_series(0, 2) m
            where to_regclass('auditdb.log_'
                              || to_char(auditdb.month_start(m) at time zone 'UTC', 'YYYY_MM')) is null"""
    ).fetchall()
    checks.append(
        Check(
            "partitions",
            "fail" if missing else "ok",
            ("missing " + ", ".join(m[0] for m in missing) + ": run `auditdb partitions ensure`")
            if missing
            else "this month and the next 2 exist",
        )
    )

    checks.append(_seal_check(conn))

    unindexed = unindexed_months(conn)
    checks.append(
        Check(
            "search index",
            "warn" if unindexed else "ok",
            f"{', '.join(unindexed)} not indexed for --search yet (searches read every entry there): "
            "run `auditdb partitions ensure` (the worker does it hourly)"
            if unindexed
            else "every closed month indexed for --search",
        )
    )

    stray = _one(conn, "select count(*) from auditdb.log where tableoid = 'auditdb.log_default'::regclass")
    checks.append(
        Check(
            "default partition",
            "fail" if stray else "ok",
            f"{stray} entries outside monthly partitions" if stray else "empty",
        )
    )
    return checks
