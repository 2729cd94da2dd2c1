"""The access commands of the CLI: grant and revoke (who reads, who emits)."""

from __future__ import annotations

from collections.abc import Callable

import click

from auditdb.cli_common import connection as _connection

__all__ = ["COMMANDS"]


_KINDS = ("admin", "viewer", "writer")
_ACCESS_HELP = {
    "grant": {
        "admin": "Read every tenant's entries here, export, manage partitions and run the worker (grant and revoke "
        "need a superuser).",
        "viewer": "Read the entries of its tenant(s): bound with --tenant, or --tenant-from-context.",
        "writer": "Set the session context and emit events.",
        "tenant": "With --viewer: bind to a tenant (repeatable); the role and its members see only these.",
        "context": "With --viewer, for a role bound to no tenant: read the tenant its session sets in "
        "auditdb.tenant_id (one application serving many tenants). Never given without asking.",
    },
    "revoke": {
        "admin": "Take back reading every tenant and managing (auditdb_admin, and this database's admin list).",
        "viewer": "Take back reading: with --tenant, only those tenants (the last one takes the role too).",
        "writer": "Take back setting the context and emitting events.",
        "tenant": "With --viewer: unbind this tenant (repeatable); other bindings stay.",
        "context": "With --viewer: take back reading the tenant its session names; other bindings stay.",
    },
}


def _access_options(verb: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    texts = _ACCESS_HELP[verb]

    def decorate(f: Callable[..., None]) -> Callable[..., None]:
        f = click.option("--tenant-from-context", is_flag=True, help=texts["context"])(f)
        f = click.option("--tenant", "tenants", multiple=True, metavar="T", help=texts["tenant"])(f)
        for kind in reversed(_KINDS):
            f = click.option(f"--{kind}", f"as_{kind}", is_flag=True, help=texts[kind])(f)
        return click.argument("role")(f)

    return decorate


def _one_kind(verb: str, kinds: dict[str, bool]) -> str:
    given = [k for k in _KINDS if kinds[f"as_{k}"]]
    if not given:
        choices = "--admin, --viewer [--tenant T … | --tenant-from-context] or --writer"
        raise click.UsageError(f"say what to {verb}: {choices}")
    if len(given) > 1:
        both = " and ".join("--" + k for k in given)
        raise click.UsageError(f"{verb} one at a time: {both} were given (run {verb} once for each)")
    return given[0]


def _usage(kind: str, tenants: tuple[str, ...], tenant_from_context: bool) -> None:
    from auditdb.access import check_tenants

    try:
        check_tenants(kind, tenants, tenant_from_context)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command(name="grant")
@_access_options("grant")
@click.pass_context
def grant_cmd(
    ctx: click.Context, /, role: str, tenants: tuple[str, ...], tenant_from_context: bool, **kinds: bool
) -> None:
    """Let ROLE read (--admin, or --viewer bound to --tenant T…) or emit (--writer); logged as PERMISSION_GRANT.

    Needs a superuser (granting auditdb's roles needs ADMIN OPTION on them).
    """
    from auditdb.access import grant

    kind = _one_kind("grant", kinds)
    _usage(kind, tenants, tenant_from_context)
    with _connection(ctx, installed=False) as conn:
        grant(conn, role, kind, tenants, tenant_from_context=tenant_from_context)
    click.echo(f"granted auditdb_{kind} to {role}" + _scope(tenants, tenant_from_context))


def _scope(tenants: tuple[str, ...], tenant_from_context: bool) -> str:
    if tenants:
        return f" for tenant(s) {', '.join(tenants)}"
    return " for the tenant its session names" if tenant_from_context else ""


@click.command(name="revoke")
@_access_options("revoke")
@click.pass_context
def revoke_cmd(
    ctx: click.Context, /, role: str, tenants: tuple[str, ...], tenant_from_context: bool, **kinds: bool
) -> None:
    """Take back what grant gave ROLE (--viewer --tenant T: only those tenants); logged as PERMISSION_REVOKE.

    Refuses, changing nothing, when ROLE does not hold what is named (or holds it only through
    another role, which is named). Needs a superuser.
    """
    from auditdb.access import revoke

    kind = _one_kind("revoke", kinds)
    _usage(kind, tenants, tenant_from_context)
    with _connection(ctx, installed=False) as conn:
        revoke(conn, role, kind, tenants, tenant_from_context=tenant_from_context)
    click.echo(f"revoked auditdb_{kind} from {role}" + _scope(tenants, tenant_from_context))


# Registered by auditdb.cli, which gives each its global options.
COMMANDS = (grant_cmd, revoke_cmd)
