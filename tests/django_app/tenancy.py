"""The tenant resolver the README's Django recipe names (myapp.tenancy.tenant_of): the tests' own."""

from __future__ import annotations

from django.http import HttpRequest


def tenant_of(request: HttpRequest) -> str | None:
    """The tenant a request names (a real app would read its host name or its user)."""
    return request.headers.get("X-Tenant")
