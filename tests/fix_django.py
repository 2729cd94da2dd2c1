"""Fixtures: Django configured once per process, and a site (database, tables, tracking) per test."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_capture import Track
from tests.fix_db import APP_ROLE
from tests.readme_recipes import run_recipe

NOTES_TOML = '[tables."public.django_app_note"]\nentity_type = "Note"\nname = "text"\n'


def configure_django() -> None:
    """Django's settings for every test of this process (skipped when Django is not installed)."""
    django = pytest.importorskip(
        "django", minversion="4.2", reason="Django is not installed: pip install auditdb[django]"
    )
    from django.conf import settings

    if settings.configured:
        return
    from tests.django_app.tenancy import tenant_of

    # The README's recipe, as written; the tenant resolver it names is this test app's.
    recipe = run_recipe("django")
    sys.modules.setdefault("myapp", types.ModuleType("myapp"))
    tenancy = types.ModuleType("myapp.tenancy")
    tenancy.tenant_of = tenant_of  # type: ignore[attr-defined]
    sys.modules["myapp.tenancy"] = tenancy
    settings.configure(
        DATABASES={},
        USE_TZ=True,
        SECRET_KEY="auditdb tests",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "tests.django_app",
        ],
        ROOT_URLCONF="tests.django_app.urls",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        **{k: v for k, v in recipe.items() if k.isupper()},
    )
    django.setup()


@pytest.fixture
def django_site(dsn: str, conn: psycopg.Connection[Any], track: Track) -> Iterator[dict[str, Any]]:
    """The test's database as Django's default, connected as the application role; notes tracked.

    Yields the default database's settings: a test may set ATOMIC_REQUESTS or CONN_MAX_AGE.
    """
    configure_django()
    from django.core.management import call_command
    from django.db import connections

    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", APP_ROLE, "--writer"]).exit_code == 0
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": info["dbname"],
        "HOST": info["host"],
        "PORT": str(info["port"]),
        "USER": APP_ROLE,
        "CONN_MAX_AGE": 0,
        "ATOMIC_REQUESTS": False,
    }
    connections.close_all()
    connections.settings = connections.configure_settings({"default": database})
    _forget_connections(connections)
    call_command("migrate", run_syncdb=True, verbosity=0)
    track("", NOTES_TOML)
    try:
        yield connections["default"].settings_dict
    finally:
        _forget_connections(connections)
        # auditdb_writer is a cluster-wide role: take it back for the tests that expect it missing.
        CliRunner().invoke(cli, ["--dsn", dsn, "revoke", APP_ROLE, "--writer"])


def _forget_connections(connections: Any) -> None:
    """Close and drop this thread's connections and those of the thread async views run their
    queries in (asgiref's thread-sensitive executor): it keeps its own, made for the previous
    test's database, on a server that may have stopped since."""
    import asyncio

    from asgiref.sync import sync_to_async

    def drop() -> None:
        connections.close_all()
        for alias in ("default", "other"):
            with contextlib.suppress(AttributeError):
                del connections[alias]

    drop()
    asyncio.run(sync_to_async(drop)())
