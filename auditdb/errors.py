"""The exceptions auditdb raises; all derive from AuditDBError."""

from __future__ import annotations

__all__ = [
    "AuditDBError",
    "ConfigError",
    "ConnectionFailed",
    "NotAuditableError",
    "NotInstalledError",
    "PermissionDenied",
]


class AuditDBError(Exception):
    """Root of auditdb's errors; the message is one line a user can act on."""


class SignatureMismatch(AuditDBError):
    """A signed file was not signed with the key given, or was altered after: a finding, not a failure to check."""


class ConfigError(AuditDBError):
    """auditdb.toml is missing, malformed or names something that does not exist."""


class ConnectionFailed(AuditDBError):
    """The database could not be reached."""


class NotInstalledError(AuditDBError):
    """Schema auditdb is missing or older than this version of auditdb."""


class NotAuditableError(AuditDBError):
    """A table cannot be audited (no key, not a table, …)."""


class PermissionDenied(AuditDBError):
    """The database role lacks a privilege or an auditdb role."""
