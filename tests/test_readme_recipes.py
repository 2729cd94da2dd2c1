"""The README's integration recipes, run as written against a real PostgreSQL (Django's is the
settings every Django test runs with, tests/fix_django.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE
from tests.readme_recipes import run_recipe

ORDERS = "create table public.orders (id serial primary key, item text not null); alter table public.orders owner to {}"
ORDERS_TOML = '[tables."public.orders"]\nentity_type = "Order"\nname = "item"\n'


@pytest.fixture
def orders(dsn: str, app_dsn: str, track: Track, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The recipes' table, tracked; DATABASE_URL and AUDITDB_DSN name the database as the application."""
    track(ORDERS.format(APP_ROLE), ORDERS_TOML)
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", APP_ROLE, "--writer"]).exit_code == 0
    info = psycopg.conninfo.conninfo_to_dict(app_dsn)
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql+psycopg://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"
    )
    monkeypatch.setenv("AUDITDB_DSN", app_dsn)
    yield
    CliRunner().invoke(cli, ["--dsn", dsn, "revoke", APP_ROLE, "--writer"])  # a cluster-wide role


def _order(conn: psycopg.Connection[Any], item: str) -> dict[str, Any]:
    (entry,) = entries(conn, "entity_type = 'Order' and entity_name = %s", (item,))
    return entry


def test_the_sqlalchemy_recipe(orders: None, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip(
        "sqlalchemy", minversion="2.0", reason="SQLAlchemy 2 is not installed: pip install auditdb[sqlalchemy]"
    )
    run_recipe("sqlalchemy")["engine"].dispose()
    entry = _order(conn, "imported")
    assert (entry["actor_id"], entry["tenant_id"]) == ("nightly-import", "t1")


def test_the_flask_recipe(orders: None, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip("flask", reason="Flask is not installed: pip install auditdb[flask]")
    recipe = run_recipe("flask")
    client = recipe["app"].test_client()
    response = client.post(
        "/orders",
        data={"item": "from the flask recipe"},
        headers={
            "Authorization": "Basic " + base64.b64encode(b"ann:secret").decode(),
            "X-Tenant": "acme",
            "X-Forwarded-For": "198.51.100.30",
        },
        environ_base={"REMOTE_ADDR": "10.9.0.2"},
    )
    assert response.status_code == 200, response.text
    recipe["engine"].dispose()
    entry = _order(conn, "from the flask recipe")
    assert (entry["actor_id"], entry["tenant_id"], str(entry["ip"])) == ("ann", "acme", "198.51.100.30")


def test_the_fastapi_recipe(orders: None, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    pytest.importorskip("multipart", reason="python-multipart is not installed (FastAPI forms)")
    from starlette.testclient import TestClient

    recipe = run_recipe("fastapi")
    with TestClient(recipe["app"], client=("10.9.0.3", 4000)) as client:
        response = client.post(
            "/orders",
            data={"item": "from the fastapi recipe"},
            auth=("bob", "secret"),
            headers={"X-Tenant": "globex", "X-Forwarded-For": "198.51.100.31", "User-Agent": "recipe"},
        )
    assert response.status_code == 200, response.text
    recipe["engine"].dispose()
    entry = _order(conn, "from the fastapi recipe")
    assert (entry["actor_id"], entry["tenant_id"], str(entry["ip"]), entry["user_agent"]) == (
        "bob",
        "globex",
        "198.51.100.31",
        "recipe",
    )


def test_the_pool_recipe(orders: None, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed: pip install auditdb[pool]")
    run_recipe("pool")
    entry = _order(conn, "pooled")
    assert (entry["actor_id"], str(entry["ip"])) == ("u42", "203.0.113.7")
