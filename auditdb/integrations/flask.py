"""Flask: who is acting in each request, for the database hooks (SQLAlchemy's track_context).

    from auditdb.integrations.flask import AuditContext

    AuditContext(app, actor=lambda: {"actor_id": str(current_user.id), "actor_email": current_user.email}
                 if current_user.is_authenticated else None,
                 tenant=lambda: g.get("tenant_id"), trusted_proxies=["10.0.0.0/8"])

For each request it sets the context source (auditdb.integrations): the client address (the peer,
or X-Forwarded-For behind trusted proxies), user agent, request id (X-Request-ID or a new one),
and what `actor` and `tenant` return, asked again at each transaction's start (a login during
the request changes the actor for the transactions after it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from typing import Any

from flask import Flask, g, request

from auditdb.integrations import TrustedProxies, client_ip, request_id, using

__all__ = ["AuditContext"]


class AuditContext:
    """Flask extension: the request's context for auditdb's database hooks."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        actor: Callable[[], Mapping[str, Any] | None] | None = None,
        tenant: Callable[[], str | None] | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.actor = actor
        self.tenant = tenant
        self.trusted = TrustedProxies(trusted_proxies)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.before_request(self._begin)
        app.teardown_request(self._end)

    def fields(self) -> dict[str, Any]:
        """The context of the current request as it stands now."""
        out: dict[str, Any] = {
            "ip": client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), self.trusted),
            "user_agent": request.headers.get("User-Agent"),
            "request_id": g.auditdb_request_id,
        }
        if self.actor is not None:
            out.update(self.actor() or {})
        if self.tenant is not None:
            out["tenant_id"] = self.tenant()
        return out

    def _begin(self) -> None:
        g.auditdb_request_id = request_id(request.headers.get("X-Request-ID"), request.remote_addr, self.trusted)
        stack = ExitStack()
        stack.enter_context(using(self.fields))
        g.auditdb_stack = stack

    def _end(self, exc: BaseException | None) -> None:
        stack = g.pop("auditdb_stack", None)
        if stack is not None:
            stack.close()
