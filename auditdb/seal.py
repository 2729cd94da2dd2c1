"""Seals and their proof: `auditdb seal` runs the sealer, `auditdb verify` recomputes the chain here.

verify never trusts the server's hash functions (a superuser can replace them): it reads each
entry's values as text and hashes them in Python, in canonical form 1 (sql/definitions/seal.sql
describes it; ENTRY_TEXTS below is this side's own list of the same fields, and a test checks that
both sides agree). What it reports, with exit 1: a seal missing, altered or out of the chain; the
entries of a seal's range edited, deleted, added or reordered (a dropped or detached partition
shows as its entries missing); an entry dated before the bound an earlier seal set (backdated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from auditdb.db import SAFE_SEARCH_PATH, pinned

__all__ = ["ENTRY_TEXTS", "Finding", "Report", "canonical", "entry_digest", "seal", "seal_digest", "verify"]

# The texts an entry's digest is made of, in order (canonical form 1).
TIME_TEXT = "to_char({} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
ENTRY_TEXTS = (
    "l.id::text",
    TIME_TEXT.format("l.occurred_at"),
    "l.txid::text",
    "l.action",
    "l.entity_type",
    "l.entity_id",
    "l.entity_name",
    "l.project_id",
    "l.tenant_id",
    "l.actor_id",
    "l.actor_email",
    "l.actor_name",
    "l.ip::text",
    "l.user_agent",
    "l.db_user",
    "l.table_name",
    "l.changes::text",
    "l.metadata::text",
)
ENTRY_PREFIX = b"auditdb-entry-v1\n"
SEAL_PREFIX = b"auditdb-seal-v1\n"
BATCH = 20_000


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
    """SHA-256 of an entry given its ENTRY_TEXTS values."""
    return hashlib.sha256(canonical(texts, ENTRY_PREFIX)).digest()


def seal_digest(row: dict[str, Any], prev_sha256: bytes | None) -> bytes:
    """SHA-256 of a seal (its fields as SEALS_SQL reads them), chained to prev_sha256."""
    texts = (
        str(row["seal_id"]),
        row["sealed_at_text"],
        str(row["format"]),
        str(row["prev_upto_id"]),
        str(row["upto_id"]),
        str(row["entry_count"]),
        bytes(row["entries_sha256"]).hex(),
        row["floor_at_text"],
        None if prev_sha256 is None else prev_sha256.hex(),
    )
    return hashlib.sha256(canonical(texts, SEAL_PREFIX)).digest()


# Constant texts only (no value is formatted into these).
SEALS_SQL = f"""
select s.seal_id, s.format, s.prev_upto_id, s.upto_id, s.entry_count, s.entries_sha256, s.prev_sha256, s.seal_sha256,
       {TIME_TEXT.format("s.sealed_at")} as sealed_at_text,
       case when s.floor_at = '-infinity' then '-infinity' else {TIME_TEXT.format("s.floor_at")} end as floor_at_text,
       case when s.floor_at = '-infinity' then null else s.floor_at end as floor_value
  from auditdb.seal s order by s.seal_id"""  # noqa: S608

ENTRIES_SQL = sql.SQL(
    "select {}, l.occurred_at < %s::timestamptz from auditdb.log l"
    " where l.id > %s and l.id <= %s order by l.id limit %s"
).format(sql.SQL(", ").join(sql.SQL(text) for text in ENTRY_TEXTS))


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


def _entries(conn: psycopg.Connection[Any], after: int, upto: int, floor: datetime | None) -> Iterator[tuple[Any, ...]]:
    """The entries after..upto in id order: ENTRY_TEXTS values, then whether each is dated before floor."""
    last = after
    while True:
        rows = conn.execute(ENTRIES_SQL, (floor, last, upto, BATCH)).fetchall()
        yield from rows
        if len(rows) < BATCH:
            return
        last = int(rows[-1][0])


def _shown(moment: datetime | None) -> str:
    return "-infinity" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def verify(conn: psycopg.Connection[Any], progress: Callable[[int], None] | None = None) -> Report:
    """Recompute every seal and the entries it covers; what does not match is a finding."""
    report = Report()
    found = report.findings.append
    # One snapshot for the whole check: seals and entries as they stood at one moment.
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        conn.execute("select pg_catalog.set_config('search_path', %s, true)", (SAFE_SEARCH_PATH,))
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            seals = cur.execute(SEALS_SQL).fetchall()
        expected_id, prev_upto, prev_hash = 1, 0, None
        floor: datetime | None = None
        for s in seals:
            report.seals += 1
            sid = s["seal_id"]
            if sid != expected_id:
                found(
                    Finding("seal-missing", f"seals {expected_id} to {sid - 1} are missing (removed from auditdb.seal)")
                )
            if s["prev_upto_id"] != prev_upto:
                found(
                    Finding(
                        "chain-broken",
                        f"seal {sid} starts after entry {s['prev_upto_id']}, "
                        f"but the seal before it ended at {prev_upto}",
                    )
                )
            stored_prev = None if s["prev_sha256"] is None else bytes(s["prev_sha256"])
            if stored_prev != prev_hash:
                found(
                    Finding(
                        "chain-broken", f"seal {sid} does not follow the seal before it (its previous hash differs)"
                    )
                )
            recomputed = seal_digest(s, stored_prev)
            if recomputed != bytes(s["seal_sha256"]):
                found(Finding("seal-altered", f"seal {sid} was altered: its fields do not hash to its recorded hash"))
            count, running = 0, hashlib.sha256()
            backdated: list[str] = []
            for row in _entries(conn, s["prev_upto_id"], s["upto_id"], floor):
                count += 1
                running.update(entry_digest(row[:-1]))
                if row[-1] and len(backdated) < 10:
                    backdated.append(str(row[0]))
            report.entries += count
            if backdated:
                found(
                    Finding(
                        "backdated",
                        f"entries {', '.join(backdated)} (seal {sid}) are dated before {_shown(floor)}, "
                        "the bound an earlier seal set: written later than their time says",
                    )
                )
            if count != s["entry_count"] or running.digest() != bytes(s["entries_sha256"]):
                what = (
                    f"{s['entry_count']} sealed, {count} there now"
                    if count != s["entry_count"]
                    else "the same number, different content or order"
                )
                found(
                    Finding(
                        "entries-altered",
                        f"entries {s['prev_upto_id'] + 1} to {s['upto_id']} (seal {sid}) were changed "
                        f"since sealed: {what}",
                    )
                )
            if progress is not None:
                progress(report.entries)
            if s["floor_value"] is not None and (floor is None or s["floor_value"] > floor):
                floor = s["floor_value"]
            report.chain[sid] = seal_digest(s, prev_hash) if stored_prev != prev_hash else recomputed
            expected_id, prev_upto, prev_hash = sid + 1, s["upto_id"], report.chain[sid]
            report.seals_last_id = sid
        # Entries after the last seal: not yet provable, but none may be dated before the bound.
        tail = conn.execute(
            "select count(*), count(*) filter (where l.occurred_at < %s::timestamptz) "
            "from auditdb.log l where l.id > %s",
            (floor, prev_upto),
        ).fetchone()
        if tail:
            report.unsealed = int(tail[0])
            if floor is not None and tail[1]:
                found(
                    Finding(
                        "backdated",
                        f"{tail[1]} entries not yet sealed are dated before {_shown(floor)}, "
                        "the bound the last seal set: written later than their time says",
                    )
                )
    return report
