"""What every framework integration shares: who is acting in this request, held in a contextvar.

A request (Django middleware, Flask's before_request, ASGI middleware) or a block of code
(`acting`) says who is acting; the database hooks (Django's execute wrapper, SQLAlchemy's begin
event) set it with auditdb.set_context at the start of each transaction. The context is
transaction-local in PostgreSQL, so a pooled or reused connection carries nothing to the next
request.

>>> from auditdb.integrations import acting
>>> with acting(actor_id="u42", ip="203.0.113.7"):
...     ...  # every transaction begun here (SQLAlchemy hook installed) is attributed to u42
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from auditdb.context import CONTEXT_BOUNDS, FIELDS, check_known

__all__ = [
    "ContextSource",
    "TrustedProxies",
    "acting",
    "active",
    "clean_fields",
    "client_ip",
    "computing",
    "current_fields",
    "request_id",
    "using",
]

# Something that gives the fields when a transaction begins: a request's user may change while it
# runs (a login view), so a request's source is asked again for each transaction.
ContextSource = Callable[[], Mapping[str, Any]]

_source: ContextVar[ContextSource | None] = ContextVar("auditdb_context_source", default=None)

# What set_context refuses (sql/definitions/context.sql): a framework integration drops such a
# value instead of failing the request it records.
# (PostgreSQL's [[:cntrl:]] in a UTF-8 database includes U+0080-U+009F; Python's $ would match
# before a trailing newline, so the whole text must match.)
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_IDS = ("actor_id", "tenant_id", "project_id", "request_id")
_ACTOR = ("actor_id", "actor_email", "actor_name")


def clean_fields(fields: Mapping[str, Any]) -> dict[str, str | None]:
    """The fields as set_context takes them, with what it would refuse dropped (None).

    An id longer than its bound or with control characters, an e-mail address that is not one,
    an IP address that is not one: a request must not fail because its user's record is odd.
    Unknown keys are a programming error (TypeError), as for auditdb.context.
    """
    check_known(fields)
    out: dict[str, str | None] = {}
    for name in FIELDS:
        value = fields.get(name)
        text = None if value is None or value == "" else str(value)
        if text is not None:
            if name in _IDS and (len(text) > CONTEXT_BOUNDS[name] or _CONTROL.search(text)):
                text = None
            elif name == "actor_email" and (len(text) > CONTEXT_BOUNDS[name] or not _EMAIL.fullmatch(text)):
                text = None
            elif name == "ip":
                text = _address(text)
            elif name in ("actor_name", "user_agent"):
                text = text[: CONTEXT_BOUNDS[name]]
        out[name] = text
    return out


def active() -> bool:
    """Whether a request or block running now says who is acting."""
    return _source.get() is not None


_computing: ContextVar[bool] = ContextVar("auditdb_context_computing", default=False)


def computing() -> bool:
    """Whether the context is being worked out right now (a source loading its user from the
    database): the database hooks let such statements through untouched."""
    return _computing.get()


def current_fields() -> dict[str, str | None] | None:
    """The context fields of the request or block running now, or None outside any."""
    source = _source.get()
    if source is None:
        return None
    token = _computing.set(True)
    try:
        return clean_fields(source())
    finally:
        _computing.reset(token)


@contextmanager
def using(source: ContextSource) -> Iterator[None]:
    """Take the context from source (asked at each transaction's start) for the block."""
    token = _source.set(source)
    try:
        yield
    finally:
        _source.reset(token)


@contextmanager
def acting(**fields: Any) -> Iterator[None]:
    """Act as someone for the transactions begun inside the block (keys as for auditdb.context).

    Inside a request, the fields given replace the request's own and the rest stay (an endpoint
    that authenticates its user itself keeps the request's address, user agent and id); naming
    any actor field drops the request user's other actor fields.
    """
    clean_fields(fields)  # unknown keys fail here, not at the first transaction
    outer = _source.get()
    # Another actor: none of the request's user's fields stay (one entry names one person).
    replaced = dict.fromkeys(_ACTOR, None) if set(fields) & set(_ACTOR) else {}

    def merged() -> Mapping[str, Any]:
        return {**(outer() if outer is not None else {}), **replaced, **fields}

    with using(merged):
        yield


class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed: addresses or networks (`10.0.0.0/8`)."""

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(p, strict=False) for p in proxies]

    def __contains__(self, address: object) -> bool:
        text = _address(str(address))
        return text is not None and any(ipaddress.ip_address(text) in net for net in self.networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str | None:
    """The client's address: the peer, unless it is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right (each proxy appends the address
    it received from) and the first address that is not a trusted proxy is the client. Nothing a
    client writes into the header is taken unless every hop after it is trusted; anything that is
    not an address ends the walk at the last trusted hop.
    """
    if peer is None or peer not in trusted or not forwarded_for:
        return _address(peer)
    hops = [h.strip() for h in forwarded_for.split(",")]
    client = peer
    for hop in reversed(hops):
        if _address(hop) is None:
            break
        client = hop
        if hop not in trusted:
            break
    return _address(client)


def _address(text: str | None) -> str | None:
    """An address as PostgreSQL's inet takes it: no IPv6 zone (fe80::1%eth0), IPv4 for ::ffff:a.b.c.d."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(header: str | None, peer: str | None = None, trusted: TrustedProxies | None = None) -> str:
    """The request id a trusted proxy sent (X-Request-ID) when it looks like one, else a new UUID.

    Like X-Forwarded-For, the header is believed only from a trusted proxy: a client must not give
    its changes another request's id.
    """
    if header and _REQUEST_ID.fullmatch(header) and trusted is not None and peer is not None and peer in trusted:
        return header
    return str(uuid.uuid4())
