"""Names of the objects auditdb generates: prefixes, the 63-byte limit, hashing."""

from __future__ import annotations

import hashlib
import re

from pglast import keywords

__all__ = [
    "CAPTURE_TRIGGERS",
    "MAX_IDENTIFIER_BYTES",
    "TRIGGER_PREFIX",
    "capture_function_name",
    "fits",
    "qualified",
    "quote_ident",
]

MAX_IDENTIFIER_BYTES = 63
TRIGGER_PREFIX = "auditdb_"
# One trigger per event; the names only need to be unique per table.
CAPTURE_TRIGGERS = {
    "INSERT": "auditdb_capture_ins",
    "UPDATE": "auditdb_capture_upd",
    "DELETE": "auditdb_capture_del",
    "TRUNCATE": "auditdb_capture_trunc",
}


def fits(name: str) -> bool:
    return len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES


def capture_function_name(schema: str, table: str) -> str:
    """auditdb_capture_<readable part of the table name>_<hash of schema and table>, ≤ 63 bytes.

    The hash keeps names of long or non-ASCII tables unique; the readable part is only a hint.
    """
    digest = hashlib.sha256(f"{schema}\x00{table}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9_]+", "_", table.lower()).strip("_")
    head = "auditdb_capture_"
    room = MAX_IDENTIFIER_BYTES - len(head) - 1 - len(digest)
    readable = readable[:room].rstrip("_")
    name = f"{head}{readable}_{digest}" if readable else f"{head}{digest}"
    assert fits(name)
    return name


_NEEDS_QUOTES = keywords.RESERVED_KEYWORDS | keywords.COL_NAME_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS


def quote_ident(name: str) -> str:
    """Quote a name only where SQL needs it, as PostgreSQL's quote_ident does (for display)."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in _NEEDS_QUOTES:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    """schema.table as users write it: the form used in auditdb.log.table_name and messages."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"
