"""`auditdb export` and `log --format csv/json`: streamed with COPY, constant memory, spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from auditdb.query import COLUMNS, Filters, where_clause

__all__ = ["CSV_HEADER", "csv_rows", "export", "json_ready", "neutralise"]

CSV_HEADER = [
    "Timestamp",
    "Action",
    "Entity Type",
    "Entity ID",
    "Entity Name",
    "User",
    "Email",
    "Project",
    "IP Address",
    "User Agent",
    "Metadata",
]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """Prefix a cell a spreadsheet would run as a formula (also after leading spaces) with '."""
    return "'" + cell if cell.lstrip(" ").startswith(_FORMULA_START) else cell


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(entry: dict[str, Any]) -> str:
    meta = dict(entry["metadata"] or {})
    if entry.get("changes"):
        meta["changes"] = entry["changes"]
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


def csv_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The SPEC's CSV columns for entries (as fetched by auditdb.query), neutralised."""
    rows = []
    for e in entries:
        cells = [
            _utc(e["occurred_at"]),
            e["action"],
            e["entity_type"] or "",
            e["entity_id"] or "",
            e["entity_name"] or "",
            e["actor_name"] or e["actor_id"] or "",
            e["actor_email"] or "",
            e["project_id"] or "",
            str(e["ip"]) if e["ip"] else "",
            e["user_agent"] or "",
            _metadata(e),
        ]
        rows.append([neutralise(c) for c in cells])
    return rows


def json_ready(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry with JSON-native values (UTC ISO time, IP as text)."""
    out = dict(entry)
    out["occurred_at"] = _utc(entry["occurred_at"])
    out["ip"] = str(entry["ip"]) if entry["ip"] is not None else None
    return out


def _sql_cell(expr: sql.Composable) -> sql.Composable:
    """The SQL twin of neutralise(): computed by the server so export streams straight from COPY."""
    return sql.SQL("case when {e} ~ '^ *[-=+@\t\r]' then '''' || {e} else {e} end").format(e=expr)


def _csv_select(where: sql.Composable) -> sql.Composable:
    text = {
        "ts": sql.SQL("""to_char(l.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""),
        "action": sql.SQL("l.action"),
        "entity_type": sql.SQL("coalesce(l.entity_type, '')"),
        "entity_id": sql.SQL("coalesce(l.entity_id, '')"),
        "entity_name": sql.SQL("coalesce(l.entity_name, '')"),
        "user": sql.SQL("coalesce(l.actor_name, l.actor_id, '')"),
        "email": sql.SQL("coalesce(l.actor_email, '')"),
        "project": sql.SQL("coalesce(l.project_id, '')"),
        "ip": sql.SQL("coalesce(host(l.ip), '')"),
        "ua": sql.SQL("coalesce(l.user_agent, '')"),
        "meta": sql.SQL("""(case when l.changes is null then l.metadata
                                 else l.metadata || jsonb_build_object('changes', l.changes) end)::text"""),
    }
    return sql.SQL("select {} from auditdb.log l where {} order by l.occurred_at desc, l.id desc").format(
        sql.SQL(", ").join(_sql_cell(e) for e in text.values()), where
    )


def _jsonl_select(where: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "select json_build_object({}) ::text from auditdb.log l where {} order by l.occurred_at desc, l.id desc"
    ).format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}").format(
                sql.Literal(c),
                sql.SQL("""to_char(l.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""")
                if c == "occurred_at"
                else sql.SQL("host(l.ip)")
                if c == "ip"
                else sql.Identifier("l", c),
            )
            for c in COLUMNS
        ),
        where,
    )


def export(
    conn: psycopg.Connection[Any],
    filters: Filters,
    output: str,
    *,
    fmt: str = "csv",
    actor: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Stream matching entries to output (a path, or - for stdout); log DATA_EXPORTED; return the row count.

    COPY streams from the server, so memory stays flat however many rows. A file is written
    under a temporary name and renamed only when complete: a failed export leaves nothing
    under the target name.
    """
    where, params = where_clause(filters)
    select = _csv_select(where) if fmt == "csv" else _jsonl_select(where)
    options = (
        sql.SQL("(format csv)")
        if fmt == "csv"
        # CSV with a quote and delimiter JSON never contains raw: the text passes unchanged.
        else sql.SQL("(format csv, quote e'\\x01', delimiter e'\\x02')")
    )
    copy_sql = sql.SQL("copy ({}) to stdout {}").format(select, options)
    target = None if output == "-" else Path(output)
    partial = None if target is None else target.with_name(f".{target.name}.partial")
    out: IO[bytes]
    out = sys.stdout.buffer if target is None else open(partial, "wb")  # type: ignore[arg-type]
    rows = 0
    try:
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            if fmt == "csv":
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerow(CSV_HEADER)
                out.write(buf.getvalue().encode())
            with conn.cursor() as cur:
                with cur.copy(copy_sql, params) as copy:
                    written = 0
                    for block in copy:
                        out.write(block)
                        written += bytes(block).count(b"\n")
                        if progress and written - rows >= 100_000:
                            rows = written
                            progress(rows)
                rows = cur.rowcount
        out.flush()
        if target is not None:
            out.close()
            os.replace(partial, target)  # type: ignore[arg-type]
    except BaseException:
        if target is not None:
            out.close()
            partial.unlink(missing_ok=True)  # type: ignore[union-attr]
        raise
    with conn.transaction():
        email = actor if actor and "@" in actor else None
        conn.execute(
            "select auditdb.log_export(%s, %s, %s, %s, %s)", (json.dumps(filters.describe()), fmt, rows, actor, email)
        )
    return rows
