"""ASGI (Starlette, FastAPI): who is acting in each request, for the database hooks.

    from auditdb.integrations.asgi import AuditContextMiddleware

    app.add_middleware(AuditContextMiddleware, actor=actor_of, tenant=tenant_of, trusted_proxies=["10.0.0.0/8"])

`actor(scope)` returns the actor's fields (`{"actor_id": …, "actor_email": …}`) or None, and
`tenant(scope)` the tenant id; both are asked at each transaction's start (Starlette's
AuthenticationMiddleware puts the user in scope["user"]). An endpoint that learns the user
itself (a FastAPI dependency) says so with `auditdb.integrations.acting(...)` around its work.
The middleware is plain ASGI, so the context reaches the endpoint, sync endpoints run in a
thread pool included (they copy the context).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from auditdb.integrations import TrustedProxies, client_ip, request_id, using

__all__ = ["AuditContextMiddleware"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class AuditContextMiddleware:
    """Sets the request's context source (auditdb.integrations) around each HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Scope], Mapping[str, Any] | None] | None = None,
        tenant: Callable[[Scope], str | None] | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.actor = actor
        self.tenant = tenant
        self.trusted = TrustedProxies(trusted_proxies)

    def fields(self, scope: Scope, rid: str) -> dict[str, Any]:
        peer = scope.get("client")
        out: dict[str, Any] = {
            "ip": client_ip(peer[0] if peer else None, _header(scope, b"x-forwarded-for"), self.trusted),
            "user_agent": _header(scope, b"user-agent"),
            "request_id": rid,
        }
        if self.actor is not None:
            out.update(self.actor(scope) or {})
        if self.tenant is not None:
            out["tenant_id"] = self.tenant(scope)
        return out

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        rid = request_id(_header(scope, b"x-request-id"), peer[0] if peer else None, self.trusted)
        with using(lambda: self.fields(scope, rid)):
            await self.app(scope, receive, send)
