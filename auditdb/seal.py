"""Seals and their proof: `auditdb seal` runs the sealer, `auditdb verify` recomputes the chain here.

verify never trusts the server's hash functions (a superuser can replace them): it reads each
entry's values as their types print them (no cast, which a superuser could define) and hashes them
in Python, in canonical form 1 (sql/definitions/seal.sql describes it; ENTRY_COLUMNS below is this
side's own list of the same fields, and a test checks that both sides agree). A role that does
not read every entry cannot verify (exit 3). What it reports, with exit 1: a seal missing,
altered or out of the chain; the
entries of a seal's range edited, deleted, added or reordered (a dropped or detached partition
shows as its entries missing); an entry dated before the bound an earlier seal set (backdated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from auditdb.db import SAFE_SEARCH_PATH, pinned
from auditdb.errors import AuditDBError

__all__ = ["ENTRY_COLUMNS", "Finding", "Report", "canonical", "entry_digest", "seal", "seal_digest", "verify"]

# The columns an entry's digest is made of, in order (canonical form 1). They are read as their
# types print them (text loaders below), never through a cast: a superuser can define a cast.
ENTRY_COLUMNS = (
    "id",
    "occurred_at",
    "txid",
    "action",
    "entity_type",
    "entity_id",
    "entity_name",
    "project_id",
    "tenant_id",
    "actor_id",
    "actor_email",
    "actor_name",
    "ip",
    "user_agent",
    "db_user",
    "table_name",
    "changes",
    "metadata",
)
ENTRY_PREFIX = b"auditdb-entry-v1\n"
SEAL_PREFIX = b"auditdb-seal-v1\n"
# Types read as the server prints them.
PRINTED_TYPES = ("int2", "int8", "timestamptz", "inet", "json", "jsonb")
# The settings the printed texts depend on, as sql/definitions/seal.sql fixes them.
READ_SETTINGS = {"timezone": "UTC", "datestyle": "ISO, YMD", "search_path": SAFE_SEARCH_PATH}
FETCH = 5_000


def canonical(values: Iterator[str | None] | tuple[str | None, ...], prefix: bytes) -> bytes:
    """The canonical form: each field N (null) or S<byte length>:<text>, after the prefix."""
    out = [prefix]
    for value in values:
        if value is None:
            out.append(b"N")
        else:
            raw = value.encode("utf-8")
            out.append(b"S%d:%s" % (len(raw), raw))
    return b"".join(out)


def entry_digest(texts: tuple[str | None, ...]) -> bytes:
    """SHA-256 of an entry given its ENTRY_COLUMNS values as printed."""
    return hashlib.sha256(canonical(texts, ENTRY_PREFIX)).digest()


def seal_digest(row: dict[str, Any], prev_sha256: bytes | None) -> bytes:
    """SHA-256 of a seal (its fields as SEALS_SQL reads them), chained to prev_sha256."""
    texts = (
        row["seal_id"],
        row["sealed_at"],
        row["format"],
        row["prev_upto_id"],
        row["upto_id"],
        row["entry_count"],
        bytes(row["entries_sha256"]).hex(),
        row["floor_at"],
        None if prev_sha256 is None else prev_sha256.hex(),
    )
    return hashlib.sha256(canonical(texts, SEAL_PREFIX)).digest()


SEALS_SQL = """
select s.seal_id, s.sealed_at, s.format, s.prev_upto_id, s.upto_id, s.entry_count, s.entries_sha256,
       s.floor_at, s.prev_sha256, s.seal_sha256
  from auditdb.seal s order by s.seal_id"""

ENTRIES_SQL = sql.SQL(
    "select {}, l.occurred_at < (select max(f.floor_at) from auditdb.seal f where f.seal_id < %s)"
    " from auditdb.log l where l.id > %s and l.id <= %s order by l.id"
).format(sql.SQL(", ").join(sql.Identifier("l", c) for c in ENTRY_COLUMNS))


@dataclass(frozen=True)
class Finding:
    """One thing verify found wrong."""

    kind: str  # seal-missing, seal-altered, chain-broken, entries-altered, backdated, partition-missing
    message: str


@dataclass
class Report:
    seals: int = 0
    entries: int = 0
    unsealed: int = 0
    findings: list[Finding] = field(default_factory=list)
    # seal id -> its hash as recomputed here, chained from the first seal
    chain: dict[int, bytes] = field(default_factory=dict)
    seals_last_id: int | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def seal(conn: psycopg.Connection[Any], max_entries: int = 100_000, *, rounds: int = 1000) -> int:
    """Seal what can be sealed now, a seal per transaction; returns the entries sealed.

    The first call after new entries only notes their range: it is sealed at a later call, once
    every transaction that could still add an entry in it has ended.
    """
    total = 0
    with pinned(conn):
        for _ in range(rounds):
            with conn.transaction():
                row = conn.execute("select auditdb.seal(%s)", (max_entries,)).fetchone()
            sealed = int(row[0]) if row else 0
            total += sealed
            if sealed < max_entries:
                break
    return total


@contextmanager
def _reading(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A short transaction reading values as their types print them, every row in view.

    A superuser or BYPASSRLS role reads with row_security off (no policy can hide a row from it);
    an admin who reads every tenant reads under auditdb's policies, whose shape `doctor` checks;
    anyone else cannot verify (AuditDBError: exit 3), since it proves nothing about rows it cannot see.
    """
    with conn.transaction():
        for name, value in READ_SETTINGS.items():
            conn.execute("select pg_catalog.set_config(%s, %s, true)", (name, value))
        row = conn.execute(
            "select r.rolsuper or r.rolbypassrls, auditdb.reader_sees_all() from pg_catalog.pg_roles r"
            " where r.rolname = current_user"
        ).fetchone()
        if row and row[0]:
            conn.execute("select pg_catalog.set_config('row_security', 'off', true)")
        elif not (row and row[1]):
            raise AuditDBError(
                f"{conn.info.user} does not read every entry (a viewer, or an admin bound to tenants): "
                "verify needs an admin of every tenant, a superuser or a BYPASSRLS role"
            )
        yield conn


def _printed(cur: psycopg.Cursor[Any]) -> None:
    for name in PRINTED_TYPES:
        cur.adapters.register_loader(name, TextLoader)


def verify(conn: psycopg.Connection[Any], progress: Callable[[int], None] | None = None) -> Report:
    """Recompute every seal and the entries it covers; what does not match is a finding."""
    report = Report()
    found = report.findings.append
    with _reading(conn), conn.cursor(row_factory=dict_row) as cur:
        _printed(cur)
        seals = cur.execute(SEALS_SQL).fetchall()
    expected_id, prev_upto, prev_hash = 1, 0, None
    for s in seals:
        report.seals += 1
        sid, upto, after = int(s["seal_id"]), int(s["upto_id"]), int(s["prev_upto_id"])
        if sid != expected_id:
            found(Finding("seal-missing", f"seals {expected_id} to {sid - 1} are missing (removed from auditdb.seal)"))
        if after != prev_upto:
            found(
                Finding(
                    "chain-broken",
                    f"seal {sid} starts after entry {after}, but the seal before it ended at {prev_upto}",
                )
            )
        stored_prev = None if s["prev_sha256"] is None else bytes(s["prev_sha256"])
        if stored_prev != prev_hash:
            found(Finding("chain-broken", f"seal {sid} does not follow the seal before it (its previous hash differs)"))
        recomputed = seal_digest(s, stored_prev)
        if recomputed != bytes(s["seal_sha256"]):
            found(Finding("seal-altered", f"seal {sid} was altered: its fields do not hash to its recorded hash"))
        count, running, last_id = 0, hashlib.sha256(), None
        backdated: list[str] = []
        repeated: list[str] = []
        with _reading(conn), conn.cursor(name="auditdb_verify") as cur:
            _printed(cur)
            cur.itersize = FETCH
            cur.execute(ENTRIES_SQL, (sid, after, upto))
            for row in cur:
                count += 1
                running.update(entry_digest(row[:-1]))
                if row[-1] and len(backdated) < 10:
                    backdated.append(row[0])
                if last_id is not None and int(row[0]) <= last_id and len(repeated) < 10:
                    repeated.append(row[0])
                last_id = int(row[0])
        report.entries += count
        if repeated:
            found(Finding("entries-altered", f"entry ids {', '.join(repeated)} (seal {sid}) appear more than once"))
        if backdated:
            found(
                Finding(
                    "backdated",
                    f"entries {', '.join(backdated)} (seal {sid}) are dated before the bound an earlier seal set: "
                    "written later than their time says",
                )
            )
        if count != int(s["entry_count"]) or running.digest() != bytes(s["entries_sha256"]):
            what = (
                f"{s['entry_count']} sealed, {count} there now"
                if count != int(s["entry_count"])
                else "the same number, different content or order"
            )
            found(
                Finding(
                    "entries-altered", f"entries {after + 1} to {upto} (seal {sid}) were changed since sealed: {what}"
                )
            )
        if progress is not None:
            progress(report.entries)
        report.chain[sid] = seal_digest(s, prev_hash) if stored_prev != prev_hash else recomputed
        expected_id, prev_upto, prev_hash = sid + 1, upto, report.chain[sid]
        report.seals_last_id = sid
    with _reading(conn):
        tail = conn.execute(
            """select count(*) filter (where l.id > %s),
                      count(*) filter (where l.id > %s
                                         and l.occurred_at < (select max(f.floor_at) from auditdb.seal f)),
                      count(*) filter (where l.id is null or l.id <= 0)
                 from auditdb.log l where l.id > %s or l.id is null or l.id <= 0""",
            (prev_upto, prev_upto, prev_upto),
        ).fetchone()
    if tail:
        report.unsealed = int(tail[0])
        if tail[1]:
            found(
                Finding(
                    "backdated",
                    f"{tail[1]} entries not yet sealed are dated before the bound the last seal set: "
                    "written later than their time says",
                )
            )
        if tail[2]:
            found(Finding("entries-altered", f"{tail[2]} entries have no id or one below 1: no seal can cover them"))
    return report
