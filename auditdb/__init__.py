"""auditdb: a PostgreSQL-trigger-centric audit log with a thin Python layer."""

from __future__ import annotations

from auditdb.context import context, current_context, set_context
from auditdb.errors import (
    AuditDBError,
    ConfigError,
    ConnectionFailed,
    NotAuditableError,
    NotInstalledError,
    PermissionDenied,
)
from auditdb.events import EventSender, emit

__all__ = [
    "AuditDBError",
    "ConfigError",
    "ConnectionFailed",
    "EventSender",
    "NotAuditableError",
    "NotInstalledError",
    "PermissionDenied",
    "context",
    "current_context",
    "emit",
    "set_context",
]

__version__ = "0.1.0"
