"""Django: who is acting in each request, set at the start of each of its transactions; auth events.

settings.py:

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "auditdb.integrations.django.AuditContextMiddleware",  # after authentication
        ...,
    ]
    AUDITDB_TRUSTED_PROXIES = ["10.0.0.0/8"]          # whose X-Forwarded-For to believe (default none)
    AUDITDB_TENANT_RESOLVER = "myapp.tenancy.tenant_of"  # optional: request -> tenant id or None
    AUDITDB_EVENTS = True                             # LOGIN, LOGOUT, LOGIN_FAILED (default on)
    AUDITDB_DATABASES = ["default"]                   # the aliases whose databases have auditdb

For each request the middleware wraps the database connections' execution (Django's
execute_wrapper). When one of the request's transactions begins, it sends
auditdb.set_context with the request's user (id, e-mail, full name), client address, user agent,
request id and tenant, so every change the transaction makes is attributed to them:

* inside atomic() (ATOMIC_REQUESTS or the view's own): once, before the transaction's first
  statement;
* outside (Django's autocommit): a statement that may write is run inside a transaction of its
  own with the context set first (a single SELECT is sent as it is: a function it calls that
  writes is logged without the request's context unless called inside atomic()).

The context lives only as long as the transaction, so a connection reused by the next request
(CONN_MAX_AGE, a pooler) carries nothing over. The middleware never opens a request-wide
transaction itself: whether a failed request's changes roll back is ATOMIC_REQUESTS' business.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import signals as auth_signals
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from psycopg import pq

from auditdb.context import set_context
from auditdb.events import emit
from auditdb.integrations import (
    TrustedProxies,
    active,
    clean_fields,
    client_ip,
    computing,
    current_fields,
    request_id,
    using,
)

__all__ = ["AuditContextMiddleware", "request_fields"]

log = logging.getLogger("auditdb.django")

# Statements that cannot change a tracked table, sent as they are outside atomic() (a single one:
# "select 1; insert …" is two).
_READS = ("select", "show", "set ", "reset", "savepoint", "release", "rollback", "begin", "commit", "values")
# Statements after which the transaction's context may be undone (ROLLBACK TO SAVEPOINT undoes a
# set_context made since the savepoint).
_SAVEPOINTS = ("rollback", "release", "savepoint")


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


@functools.lru_cache(maxsize=8)
def _trusted(proxies: tuple[str, ...]) -> TrustedProxies:
    return TrustedProxies(proxies)


def request_fields(request: HttpRequest) -> dict[str, Any]:
    """The context of a request as it stands now: its user, address, user agent, id and tenant."""
    fields: dict[str, Any] = {
        "ip": client_ip(
            request.META.get("REMOTE_ADDR"),
            request.META.get("HTTP_X_FORWARDED_FOR"),
            _trusted(_proxies()),
        ),
        "user_agent": request.META.get("HTTP_USER_AGENT"),
        "request_id": getattr(request, "auditdb_request_id", None),
    }
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        fields["actor_id"] = str(user.pk)
        fields["actor_email"] = getattr(user, "email", None) or None
        full_name = user.get_full_name() if hasattr(user, "get_full_name") else ""
        fields["actor_name"] = full_name or user.get_username()
    resolver = _setting("AUDITDB_TENANT_RESOLVER", None)
    if resolver:
        tenant = (import_string(resolver) if isinstance(resolver, str) else resolver)(request)
        fields["tenant_id"] = None if tenant is None else str(tenant)
    return fields


def _may_write(sql: str) -> bool:
    text = sql.strip(" \t\r\n;")
    return ";" in text or not text.lstrip("(").lower().startswith(_READS)


def _inject(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Django execute_wrapper: set the request's context when one of its transactions begins."""
    wrapper = context["connection"]
    raw = wrapper.connection
    if computing() or not active() or raw is None:
        return execute(sql, params, many, context)
    status = raw.info.transaction_status
    if status == pq.TransactionStatus.IDLE:
        wrapper.auditdb_context = None
        if wrapper.get_autocommit():
            if not _may_write(sql):
                return execute(sql, params, many, context)
            fields = current_fields() or {}
            with transaction.atomic(using=wrapper.alias):
                set_context(raw, **fields)
                return execute(sql, params, many, context)
    elif status != pq.TransactionStatus.INTRANS:
        return execute(sql, params, many, context)
    if sql.lstrip().lower().startswith(_SAVEPOINTS):
        try:
            return execute(sql, params, many, context)
        finally:
            wrapper.auditdb_context = None  # set it again before the next statement
    fields = current_fields() or {}
    if getattr(wrapper, "auditdb_context", None) != fields:
        # Without autocommit psycopg begins the transaction with this call.
        set_context(raw, **fields)
        wrapper.auditdb_context = fields
    return execute(sql, params, many, context)


class AuditContextMiddleware:
    """Attribute each request's database changes to its user, address and tenant (see the module)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        if _setting("AUDITDB_EVENTS", True):
            _connect_auth_signals()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.auditdb_request_id = request_id(
            request.META.get("HTTP_X_REQUEST_ID"), request.META.get("REMOTE_ADDR"), _trusted(_proxies())
        )
        with using(lambda: request_fields(request)), contextlib.ExitStack() as stack:
            for alias in _databases():
                stack.enter_context(connections[alias].execute_wrapper(_inject))
            return self.get_response(request)


def _proxies() -> tuple[str, ...]:
    return tuple(_setting("AUDITDB_TRUSTED_PROXIES", ()))


def _databases() -> list[str]:
    """The aliases whose databases have auditdb (AUDITDB_DATABASES, default ["default"])."""
    aliases = list(_setting("AUDITDB_DATABASES", ["default"]))
    for alias in aliases:
        if connections[alias].vendor != "postgresql":
            raise ImproperlyConfigured(f"AUDITDB_DATABASES names {alias!r}, which is not a PostgreSQL database")
    return aliases


# --- auth events --------------------------------------------------------------------------------


def _user_alias(user: Any) -> str:
    """The database the user model is written to (where its LOGIN and LOGOUT go)."""
    alias = getattr(getattr(user, "_state", None), "db", None) or router.db_for_write(get_user_model())
    return str(alias or "default")


def _emit_in_request(action: str, request: HttpRequest | None, user: Any) -> None:
    """LOGIN / LOGOUT on the request's own connection, in its transaction (a savepoint if open)."""
    alias = _user_alias(user)
    if alias not in _databases():
        return
    wrapper = connections[alias]
    fields = clean_fields(request_fields(request)) if request is not None else clean_fields({})
    if user is not None and getattr(user, "pk", None) is not None and fields["actor_id"] is None:
        fields["actor_id"] = str(user.pk)
    with transaction.atomic(using=alias):
        wrapper.ensure_connection()
        set_context(wrapper.connection, **fields)
        wrapper.auditdb_context = fields
        emit(
            wrapper.connection,
            action,
            entity_type="User",
            entity_id=None if user is None else str(user.pk),
            entity_name=None if user is None else user.get_username(),
        )


def _logged_in(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    _emit_in_request("LOGIN", request, user)


def _logged_out(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    _emit_in_request("LOGOUT", request, user)


def _login_failed(
    sender: Any, credentials: Mapping[str, Any] | None = None, request: Any = None, **kwargs: Any
) -> None:
    """LOGIN_FAILED in a transaction of its own: it stays whatever becomes of the request.

    On a connection of its own, opened as Django opens the alias's (its OPTIONS, assume_role and
    pool included). Only the name tried is kept from the credentials (never a password, PIN or key).
    """
    request = getattr(request, "_request", request)  # Django REST framework's Request
    fields = clean_fields(request_fields(request)) if isinstance(request, HttpRequest) else clean_fields({})
    fields.update(actor_id=None, actor_email=None, actor_name=None)
    names = {"username", "email", getattr(get_user_model(), "USERNAME_FIELD", "username")}
    tried = {k: str(v)[:256] for k, v in (credentials or {}).items() if k in names}
    alias = _user_alias(None)
    if alias not in _databases():
        return
    own = connections.create_connection(alias)
    try:
        own.ensure_connection()
        own.set_autocommit(True)
        with own.connection.transaction():
            set_context(own.connection, **fields)
            emit(
                own.connection,
                "LOGIN_FAILED",
                entity_type="User",
                entity_id=next(iter(tried.values()), None),
                metadata={"credentials": tried},
            )
    finally:
        own.close()


_connected = False


def _connect_auth_signals() -> None:
    global _connected
    if _connected:
        return
    auth_signals.user_logged_in.connect(_logged_in, dispatch_uid="auditdb.login")
    auth_signals.user_logged_out.connect(_logged_out, dispatch_uid="auditdb.logout")
    auth_signals.user_login_failed.connect(_login_failed, dispatch_uid="auditdb.login_failed")
    _connected = True
