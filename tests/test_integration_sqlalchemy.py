"""SQLAlchemy 2 with Flask and ASGI (Starlette, FastAPI): the context set at each transaction's start.

Real requests through each framework's test client, against a real PostgreSQL: each entry carries
the request's actor, address and tenant; a failed request leaves no entry; a pooled connection
carries nothing to the next request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from auditdb.integrations import acting
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE

sqlalchemy = pytest.importorskip(
    "sqlalchemy", minversion="2.0", reason="SQLAlchemy 2 is not installed: pip install auditdb[sqlalchemy]"
)

from sqlalchemy import String, create_engine, text  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session, sessionmaker  # noqa: E402  # noqa: E402

import auditdb  # noqa: E402
from auditdb.install import install  # noqa: E402
from auditdb.integrations import active, clean_fields  # noqa: E402
from auditdb.integrations.sqlalchemy import track_context  # noqa: E402
from tests.fix_server import Server  # noqa: E402

ORDERS = "create table public.orders (id serial primary key, item text not null); alter table public.orders owner to {}"
ORDERS_TOML = '[tables."public.orders"]\nentity_type = "Order"\nname = "item"\n'


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String)


@pytest.fixture
def engine(dsn: str, app_dsn: str, track: Track) -> Iterator[Any]:
    """An engine as the application role (one pooled connection, so requests share it), hooked."""
    track(ORDERS.format(APP_ROLE), ORDERS_TOML)
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", APP_ROLE, "--writer"]).exit_code == 0
    info = psycopg.conninfo.conninfo_to_dict(app_dsn)
    url = f"postgresql+psycopg://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"
    engine = create_engine(url, pool_size=1, max_overflow=0)
    track_context(engine)
    track_context(engine)  # idempotent
    try:
        yield engine
    finally:
        engine.dispose()
        CliRunner().invoke(cli, ["--dsn", dsn, "revoke", APP_ROLE, "--writer"])  # a cluster-wide role


def _orders(conn: psycopg.Connection[Any], item: str) -> list[dict[str, Any]]:
    return entries(conn, "entity_type = 'Order' and entity_name = %s", (item,))


def test_the_hook_sets_the_context_at_each_transaction_start(engine: Any, conn: psycopg.Connection[Any]) -> None:
    with acting(actor_id="u1", ip="203.0.113.1", tenant_id="t1"), Session(engine) as session, session.begin():
        session.add(Order(item="first"))
    with acting(actor_id="u2"), Session(engine) as session:
        with session.begin():
            session.add(Order(item="second"))
        with session.begin():  # a second transaction on the same session: set again
            session.add(Order(item="third"))
    with Session(engine) as session, session.begin():  # outside any: nothing set, nothing carried over
        session.add(Order(item="fourth"))
        assert session.execute(text("select auditdb.current_context()->>'actor_id'")).scalar() is None
    got = {item: _orders(conn, item)[0] for item in ("first", "second", "third", "fourth")}
    assert (got["first"]["actor_id"], str(got["first"]["ip"]), got["first"]["tenant_id"]) == ("u1", "203.0.113.1", "t1")
    assert [got[i]["actor_id"] for i in ("second", "third", "fourth")] == ["u2", "u2", None]


def test_a_value_set_context_would_refuse_is_dropped_not_fatal(engine: Any, conn: psycopg.Connection[Any]) -> None:
    with acting(actor_id="u3", actor_email="not an address", ip="nowhere"), Session(engine) as session, session.begin():
        session.add(Order(item="odd user"))
    (entry,) = _orders(conn, "odd user")
    assert (entry["actor_id"], entry["actor_email"], entry["ip"]) == ("u3", None, None)
    with pytest.raises(TypeError, match="unknown context field"):
        with acting(actor="u3"):
            pass


# --- Flask -----------------------------------------------------------------------------------------


@pytest.fixture
def flask_app(engine: Any) -> Any:
    flask = pytest.importorskip("flask", reason="Flask is not installed: pip install auditdb[flask]")
    from auditdb.integrations.flask import AuditContext

    app = flask.Flask("auditdb_test")

    @app.post("/orders")
    def create() -> Any:
        with Session(engine) as session, session.begin():
            session.add(Order(item=flask.request.form["item"]))
            if flask.request.form.get("fail"):
                raise RuntimeError("the view failed after writing")
        return {"ok": True}

    AuditContext(
        app,
        actor=lambda: {"actor_id": flask.request.headers["X-User"]} if "X-User" in flask.request.headers else None,
        tenant=lambda: flask.request.headers.get("X-Tenant"),
        trusted_proxies=["10.9.0.0/16"],
    )
    return app


def test_flask_teardown_leaves_no_context_behind(flask_app: Any) -> None:
    """before_request sets the request's context in this very context; teardown takes it away again.

    (The test client runs each request in a copy of the context, so a check after client calls
    could not fail; this one drives the hooks in the test's own context.)
    """
    with flask_app.test_request_context("/orders", method="POST", headers={"X-User": "ann"}):
        flask_app.preprocess_request()
        assert active()
        flask_app.do_teardown_request()
        assert not active()
    assert not active()


def test_flask_requests(flask_app: Any, conn: psycopg.Connection[Any]) -> None:
    client = flask_app.test_client()
    environ = {"REMOTE_ADDR": "10.9.0.4"}
    headers = {"X-User": "ann", "X-Tenant": "acme", "X-Forwarded-For": "198.51.100.8", "User-Agent": "flask-test"}
    assert (
        client.post("/orders", data={"item": "flask order"}, headers=headers, environ_base=environ).status_code == 200
    )
    flask_app.config["PROPAGATE_EXCEPTIONS"] = False
    failed = client.post("/orders", data={"item": "flask failed", "fail": "1"}, headers=headers, environ_base=environ)
    assert failed.status_code == 500
    # The next request, on the same pooled connection, names nobody.
    assert (
        client.post("/orders", data={"item": "flask anonymous"}, environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code
        == 200
    )
    (entry,) = _orders(conn, "flask order")
    assert (entry["actor_id"], str(entry["ip"]), entry["tenant_id"], entry["user_agent"]) == (
        "ann",
        "198.51.100.8",
        "acme",
        "flask-test",
    )
    assert _orders(conn, "flask failed") == []
    (anonymous,) = _orders(conn, "flask anonymous")
    assert (anonymous["actor_id"], anonymous["tenant_id"], str(anonymous["ip"])) == (None, None, "192.0.2.9")


# --- ASGI: Starlette and FastAPI ---------------------------------------------------------------------


def _actor(scope: Any) -> dict[str, str] | None:
    for key, value in scope["headers"]:
        if key == b"x-user":
            return {"actor_id": value.decode()}
    return None


def _tenant(scope: Any) -> str | None:
    return next((v.decode() for k, v in scope["headers"] if k == b"x-tenant"), None)


def _write(engine: Any, item: str, fail: bool) -> dict[str, bool]:
    with Session(engine) as session, session.begin():
        session.add(Order(item=item))
        if fail:
            raise RuntimeError("the endpoint failed after writing")
    return {"ok": True}


def _starlette(engine: Any) -> Any:
    pytest.importorskip("starlette", reason="Starlette is not installed: pip install auditdb[asgi]")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from auditdb.integrations.asgi import AuditContextMiddleware

    async def create(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse(await run_in_threadpool(_write, engine, str(form["item"]), bool(form.get("fail"))))

    middleware = [Middleware(AuditContextMiddleware, actor=_actor, tenant=_tenant, trusted_proxies=["10.9.0.0/16"])]
    return Starlette(routes=[Route("/orders", create, methods=["POST"])], middleware=middleware)


def _fastapi(engine: Any) -> Any:
    fastapi = pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install fastapi")
    pytest.importorskip("multipart", reason="python-multipart is not installed (FastAPI forms)")
    from auditdb.integrations.asgi import AuditContextMiddleware

    app = fastapi.FastAPI()

    @app.post("/orders")
    def create(item: str = fastapi.Form(), fail: str = fastapi.Form("")) -> dict[str, bool]:
        return _write(engine, item, bool(fail))  # a sync endpoint: FastAPI runs it in a thread

    app.add_middleware(AuditContextMiddleware, actor=_actor, tenant=_tenant, trusted_proxies=["10.9.0.0/16"])
    return app


@pytest.mark.parametrize("make_app", [_starlette, _fastapi], ids=["starlette", "fastapi"])
def test_asgi_requests(make_app: Any, engine: Any, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip("httpx", reason="httpx is not installed (Starlette's TestClient needs it)")
    from starlette.testclient import TestClient

    app = make_app(engine)
    name = make_app.__name__.strip("_")
    with TestClient(app, raise_server_exceptions=False, client=("10.9.0.7", 5000)) as client:
        headers = {"X-User": "ann", "X-Tenant": "acme", "X-Forwarded-For": "198.51.100.9", "User-Agent": f"{name}-test"}
        assert client.post("/orders", data={"item": f"{name} order"}, headers=headers).status_code == 200
        assert client.post("/orders", data={"item": f"{name} failed", "fail": "1"}, headers=headers).status_code == 500
    with TestClient(app, client=("192.0.2.10", 5000)) as client:
        assert client.post("/orders", data={"item": f"{name} anonymous"}).status_code == 200
    (entry,) = _orders(conn, f"{name} order")
    assert (entry["actor_id"], str(entry["ip"]), entry["tenant_id"], entry["user_agent"]) == (
        "ann",
        "198.51.100.9",
        "acme",
        f"{name}-test",
    )
    assert _orders(conn, f"{name} failed") == []
    (anonymous,) = _orders(conn, f"{name} anonymous")
    assert (anonymous["actor_id"], anonymous["tenant_id"], str(anonymous["ip"])) == (None, None, "192.0.2.10")


# === Edge cases a review tried: each failed once, or held ==================================

# --- what failed once ---------------------------------------------------------------------------


def test_a_transaction_carried_from_one_actor_to_the_next_attributes_each(engine: Any, conn: Any) -> None:
    """A worker loop with one Session: job 1 only reads (autobegin, context ann, no commit);
    job 2's writes commit in that same transaction and are logged as ann's."""
    session = Session(engine)
    with acting(actor_id="ann"):
        session.execute(text("select 1"))
    with acting(actor_id="bob"):
        session.add(Order(item="bob's job"))
        session.commit()
    session.close()
    assert _orders(conn, "bob's job")[0]["actor_id"] == "bob"


def test_a_transaction_begun_before_acting_is_attributed_from_then_on(engine: Any, conn: Any) -> None:
    with engine.connect() as c:
        c.execute(text("select 1"))  # autobegin outside any block
        with acting(actor_id="carol"):
            c.execute(text("insert into orders (item) values ('carol via connect')"))
            c.commit()
    assert _orders(conn, "carol via connect")[0]["actor_id"] == "carol"


def test_a_flask_actor_loaded_through_the_tracked_engine(engine: Any, conn: Any) -> None:
    """Flask-Login + Flask-SQLAlchemy, as the README suggests: current_user is loaded lazily by a
    user_loader querying the same scoped session. The begin hook asks actor(), which loads the user,
    which begins a transaction on the same session: re-entrancy, no guard (Django has _loading)."""
    import flask

    from auditdb.integrations.flask import AuditContext

    db = scoped_session(sessionmaker(engine))
    app = flask.Flask("review")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def current_user() -> str | None:  # flask_login.current_user, cached per request in g
        if "_login_user" not in flask.g:
            uid = flask.request.headers.get("X-Session-User")
            flask.g._login_user = (
                db.execute(text("select cast(:u as text)"), {"u": uid}).scalar() if uid else None
            )  # user_loader: db.session.get(User, uid)
        return flask.g._login_user

    AuditContext(app, actor=lambda: {"actor_id": current_user()} if current_user() else None)

    @app.post("/orders")
    def create() -> Any:
        db.add(Order(item=flask.request.form["item"]))
        db.commit()
        return {"ok": True}

    @app.teardown_appcontext
    def remove(exc: Any) -> None:
        db.remove()

    client = app.test_client()
    response = client.post("/orders", data={"item": "flask-login user"}, headers={"X-Session-User": "ann"})
    assert response.status_code == 200
    assert _orders(conn, "flask-login user")[0]["actor_id"] == "ann"


@pytest.fixture
def utf8_dsn(pg_server: Server) -> Iterator[str]:
    """A database in a UTF-8 locale (the usual production initdb), with auditdb installed."""
    name = f"utf8_{os.getpid()}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create database {} template template0 encoding 'UTF8' locale 'C.utf8'").format(
                sql.Identifier(name)
            )
        )
    try:
        install(pg_server.dsn(name))
        yield pg_server.dsn(name)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    "fields",
    [{"actor_id": "ann\x85"}, {"tenant_id": "t\x9b1"}, {"actor_email": "ann\x80@example.com"}],
    ids=["actor_id-C1", "tenant_id-C1", "email-C1"],
)
def test_clean_fields_drops_what_a_utf8_database_refuses(utf8_dsn: str, fields: dict[str, str]) -> None:
    cleaned = clean_fields(fields)
    with psycopg.connect(utf8_dsn) as c, c.transaction():
        auditdb.set_context(c, **cleaned)  # AuditDBError: ... contains control characters


# --- what held ---------------------------------------------------------------------------------


def test_sqlalchemy_variants(engine: Any, conn: Any) -> None:
    with acting(actor_id="ann"), Session(engine) as s:
        s.add(Order(item="autobegin"))
        with s.begin_nested():
            s.add(Order(item="nested kept"))
        try:
            with s.begin_nested():
                s.add(Order(item="nested rolled back"))
                s.flush()
                raise ValueError
        except ValueError:
            pass
        s.commit()
    with acting(actor_id="bob"), engine.connect() as c:
        c.execute(text("insert into orders (item) values ('cayg 1')"))
        c.commit()
        c.execute(text("insert into orders (item) values ('cayg 2')"))
        c.commit()
    assert [_orders(conn, i)[0]["actor_id"] for i in ("autobegin", "nested kept", "cayg 1", "cayg 2")] == [
        "ann",
        "ann",
        "bob",
        "bob",
    ]
    assert _orders(conn, "nested rolled back") == []


def test_pre_ping_engine(app_dsn: str, conn: Any, engine: Any) -> None:
    info = psycopg.conninfo.conninfo_to_dict(app_dsn)
    e = create_engine(
        f"postgresql+psycopg://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}", pool_pre_ping=True
    )
    track_context(e)
    for who in ("ann", "bob"):
        with acting(actor_id=who), e.begin() as c:
            c.execute(text("insert into orders (item) values (:i)"), {"i": f"ping {who}"})
    e.dispose()
    assert [_orders(conn, f"ping {w}")[0]["actor_id"] for w in ("ann", "bob")] == ["ann", "bob"]


def test_autocommit_isolation_is_refused_loudly(engine: Any) -> None:
    with acting(actor_id="ann"), engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        with pytest.raises(Exception, match="needs a transaction"):
            c.execute(text("select 1"))


def test_starlette_base_http_middleware_and_background_tasks(engine: Any, conn: Any) -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from auditdb.integrations.asgi import AuditContextMiddleware

    def write(item: str) -> None:
        with Session(engine) as s, s.begin():
            s.add(Order(item=item))

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(write, "from background"))

    async def passthrough(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    def actor(scope: Any) -> dict[str, str] | None:
        user = dict(scope["headers"]).get(b"x-user")
        return {"actor_id": user.decode()} if user else None

    for outer_base in (True, False):
        mws = [Middleware(AuditContextMiddleware, actor=actor), Middleware(BaseHTTPMiddleware, dispatch=passthrough)]
        app = Starlette(routes=[Route("/", endpoint, methods=["POST"])], middleware=mws[::-1] if outer_base else mws)
        with TestClient(app) as client:
            assert client.post("/", headers={"X-User": f"u{outer_base}"}).status_code == 200
            assert client.post("/").status_code == 200  # the next, anonymous, request
    rows = _orders(conn, "from background")
    assert [r["actor_id"] for r in rows] == ["uTrue", None, "uFalse", None]
