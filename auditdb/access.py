"""`auditdb grant` / `revoke`: who reads (admin, viewer per tenant) and who emits (writer)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from auditdb.db import pinned, require_installed
from auditdb.errors import AuditDBError, PermissionDenied
from auditdb.triggers import require_superuser

__all__ = ["ROLES", "check_tenants", "grant", "require_granter", "require_superuser_to", "revoke"]

ROLES = {"admin": "auditdb_admin", "viewer": "auditdb_viewer", "writer": "auditdb_writer"}


def _quoted(role: str) -> str:
    """The role's name as regrole reads it (quoted where it needs to be)."""
    return sql.Identifier(role).as_string()


def require_superuser_to(conn: psycopg.Connection[Any], command: str, why: str) -> None:
    """Refuse `auditdb <command>`, before anything is read or changed, unless the session's role is a superuser."""
    try:
        require_superuser(conn)
    except PermissionDenied as e:
        row = conn.execute("select current_user").fetchone()
        role = row[0] if row else "?"
        raise PermissionDenied(
            f"permission denied: `auditdb {command}` needs a superuser ({why}); role {role} is not one"
        ) from e


def require_granter(conn: psycopg.Connection[Any], verb: str) -> None:
    """Refuse grant and revoke unless a superuser runs them, then require auditdb installed.

    Granting membership in auditdb's roles needs ADMIN OPTION on them, and an admin holding that
    could grant auditdb_admin at will, past the grants recorded (and logged) here.
    """
    require_superuser_to(conn, verb, "granting auditdb's roles needs ADMIN OPTION on them, which admins do not hold")
    require_installed(conn)


def check_tenants(kind: str, tenants: tuple[str, ...], tenant_from_context: bool) -> None:
    """Refuse tenants and modes that do not go with kind, or an empty tenant (misuse: raises ValueError)."""
    if (tenants or tenant_from_context) and kind != "viewer":
        raise ValueError("--tenant and --tenant-from-context go with --viewer only")
    if tenants and tenant_from_context:
        raise ValueError("a viewer is bound to --tenant T … or reads --tenant-from-context, not both")
    if any(not t.strip() for t in tenants):
        raise ValueError("an empty tenant: name one (--tenant T)")


def _check_role(conn: psycopg.Connection[Any], role: str, *, creating: bool = True) -> None:
    if conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone() is None:
        if not creating:
            raise AuditDBError(f"role {role!r} does not exist")
        raise AuditDBError(f"role {role!r} does not exist: create it first (create role … login)")
    if role in ROLES.values() or role in ("auditdb_owner", "auditdb_capture"):
        raise AuditDBError(f"{role} is one of auditdb's own roles: grant it to a login role instead")


def grant(
    conn: psycopg.Connection[Any],
    role: str,
    kind: str,
    tenants: tuple[str, ...] = (),
    *,
    tenant_from_context: bool = False,
) -> None:
    """Grant auditdb_<kind> to role; logged as PERMISSION_GRANT.

    A viewer is bound to tenants when given (it and its members then see only those, whatever
    they set or become), or with tenant_from_context reads the tenant its session names in
    auditdb.tenant_id (for one application role serving many tenants) while bound to none.
    """
    try:
        check_tenants(kind, tenants, tenant_from_context)
    except ValueError as e:
        raise AuditDBError(str(e)) from None
    require_granter(conn, "grant")
    _check_role(conn, role)
    with pinned(conn):
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(ROLES[kind]), sql.Identifier(role)))
        for tenant in tenants:
            conn.execute(
                """insert into auditdb.tenant_roles (role_name, tenant_id, roleid)
                   values (%s, %s, %s::regrole) on conflict do nothing""",
                (role, tenant, _quoted(role)),
            )
        if tenant_from_context:
            conn.execute(
                """insert into auditdb.tenant_from_context_roles (roleid, role_name)
                   values (%s::regrole, %s) on conflict do nothing""",
                (_quoted(role), role),
            )
        if kind == "admin":
            # auditdb_admin is cluster-wide; this database's log is read by the admins listed here.
            conn.execute(
                "insert into auditdb.admin_roles (roleid, role_name) values (%s::regrole, %s) on conflict do nothing",
                (_quoted(role), role),
            )
        conn.execute(
            "select auditdb.log_access_change('PERMISSION_GRANT', %s, %s, %s, %s)",
            (role, ROLES[kind], list(tenants), tenant_from_context),
        )


_HELD_SQL = """
select exists (select from pg_catalog.pg_auth_members m
                where m.roleid = %(group)s::regrole and m.member = %(role)s::regrole),
       array(select g.rolname::text
               from pg_catalog.pg_auth_members m join pg_catalog.pg_roles g on g.oid = m.roleid
              where m.member = %(role)s::regrole
                and pg_catalog.pg_has_role(g.oid, %(group)s::regrole, 'MEMBER')
              order by 1),
       exists (select from auditdb.admin_roles where roleid = %(role)s::regrole),
       array(select tenant_id from auditdb.tenant_roles where roleid = %(role)s::regrole order by 1),
       exists (select from auditdb.tenant_from_context_roles where roleid = %(role)s::regrole)
"""


def _check_held(
    conn: psycopg.Connection[Any], role: str, kind: str, tenants: tuple[str, ...], *, tenant_from_context: bool
) -> None:
    """Refuse to revoke what role does not hold here (a typo in a role or a tenant would be logged as done)."""
    row = conn.execute(_HELD_SQL, {"group": ROLES[kind], "role": _quoted(role)}).fetchone()
    assert row is not None
    direct, through, listed_admin, bound, from_context = row
    if kind == "viewer" and tenants:
        missing = [t for t in tenants if t not in bound]
        if missing:
            raise AuditDBError(
                f"{role} is not bound to tenant(s) {', '.join(missing)}"
                + (f" (it is bound to {', '.join(bound)})" if bound else "")
                + ": nothing was revoked"
            )
        return
    if kind == "viewer" and tenant_from_context:
        if not from_context:
            raise AuditDBError(f"{role} does not read the tenant its session names: nothing was revoked")
        return
    if direct or (kind == "admin" and listed_admin) or (kind == "viewer" and (bound or from_context)):
        return
    if through:
        raise AuditDBError(
            f"{role} holds {ROLES[kind]} only through {', '.join(through)}: revoke it from that role; "
            "nothing was revoked"
        )
    raise AuditDBError(f"{role} does not hold {ROLES[kind]}: nothing was revoked")


def revoke(
    conn: psycopg.Connection[Any],
    role: str,
    kind: str,
    tenants: tuple[str, ...] = (),
    *,
    tenant_from_context: bool = False,
) -> None:
    """Revoke auditdb_<kind> (a viewer: maybe only some tenants, or the context mode); logged as PERMISSION_REVOKE.

    Refuses, changing and logging nothing, when role does not hold what is named.
    """
    try:
        check_tenants(kind, tenants, tenant_from_context)
    except ValueError as e:
        raise AuditDBError(str(e)) from None
    require_granter(conn, "revoke")
    _check_role(conn, role, creating=False)
    with pinned(conn):
        roleid = _quoted(role)
        _check_held(conn, role, kind, tenants, tenant_from_context=tenant_from_context)
        if kind == "viewer" and tenant_from_context and not tenants:
            conn.execute("delete from auditdb.tenant_from_context_roles where roleid = %s::regrole", (roleid,))
        elif kind == "viewer" and tenants:
            conn.execute(
                "delete from auditdb.tenant_roles where roleid = %s::regrole and tenant_id = any(%s)",
                (roleid, list(tenants)),
            )
            left = conn.execute(
                "select count(*) from auditdb.tenant_roles where roleid = %s::regrole", (roleid,)
            ).fetchone()
            if left and left[0] == 0:
                # A bound viewer that loses its last tenant loses the role too: an unlisted viewer
                # reads nothing, but the grant would still say it reads the log.
                conn.execute(sql.SQL("revoke auditdb_viewer from {}").format(sql.Identifier(role)))
        else:
            conn.execute(sql.SQL("revoke {} from {}").format(sql.Identifier(ROLES[kind]), sql.Identifier(role)))
            if kind == "viewer":
                conn.execute("delete from auditdb.tenant_roles where roleid = %s::regrole", (roleid,))
                conn.execute("delete from auditdb.tenant_from_context_roles where roleid = %s::regrole", (roleid,))
            if kind == "admin":
                conn.execute("delete from auditdb.admin_roles where roleid = %s::regrole", (roleid,))
        conn.execute(
            "select auditdb.log_access_change('PERMISSION_REVOKE', %s, %s, %s, %s)",
            (role, ROLES[kind], list(tenants), tenant_from_context),
        )
