"""Canonical form 1: the bytes an entry's digest is made of, the same here as in sql/definitions/seal.sql.

Each field is N (null) or S<byte length>:<text>, the text being what the column's type prints
(TimeZone UTC, DateStyle ISO), after a prefix; ENTRY_COLUMNS is this side's own list of the
columns, in order (a test checks that both sides agree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "ENTRY_COLUMNS",
    "ENTRY_PREFIX",
    "SEAL_PREFIX",
    "canonical",
    "encode",
    "entry_digest",
    "field_digest",
    "time_key",
]

# The columns an entry's digest is made of, in order (canonical form 1). They are read as their
# types print them (auditdb/seal.py reads them so), never through a cast: a superuser can define one.
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
# "S<length>:" for the lengths most values have, made once.
_HEADS = [b"S%d:" % n for n in range(1 << 12)]


def encode(values: Iterable[bytes | None], prefix: bytes) -> bytes:
    """The canonical form of fields already in UTF-8: each N (null) or S<byte length>:<bytes>, after the prefix."""
    out = [prefix]
    for v in values:
        if v is None:
            out.append(b"N")
        else:
            n = len(v)
            out.append(_HEADS[n] if n < 4096 else b"S%d:" % n)
            out.append(v)
    return b"".join(out)


def canonical(values: Iterator[str | None] | tuple[str | None, ...], prefix: bytes) -> bytes:
    """The canonical form of texts (encoded to UTF-8 here)."""
    return encode((None if v is None else v.encode("utf-8") for v in values), prefix)


def entry_digest(texts: tuple[str | None, ...]) -> bytes:
    """SHA-256 of an entry given its ENTRY_COLUMNS values as printed."""
    return hashlib.sha256(canonical(texts, ENTRY_PREFIX)).digest()


def field_digest(values: Iterable[bytes | None]) -> bytes:
    """An entry's digest from its ENTRY_COLUMNS values as printed, in UTF-8 (None: null)."""
    return hashlib.sha256(encode(values, ENTRY_PREFIX)).digest()


def time_key(printed: str | bytes) -> tuple[Any, ...]:
    """A key that orders timestamptz values printed in UTC, ISO (BC years, infinity included)."""
    t = printed.decode() if isinstance(printed, bytes) else printed
    if t == "infinity":
        return (3,)
    if t == "-infinity":
        return (-3,)
    bc = t.endswith(" BC")
    year, _, rest = (t[:-3] if bc else t).partition("-")
    # After the year, the printed text orders as the time does: fixed-width fields, the fraction's
    # trailing zeros dropped ('+' sorts before '.' and the digits).
    return (0, -int(year), rest) if bc else (1, int(year), rest)
