"""Django edge cases a review tried (tests/test_integration_django.py has the main cases); each failed once, or held."""
# ruff: noqa: E402  (Django is configured before its models and views are imported)

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fix_django import configure_django

configure_django()

from django.contrib.auth import authenticate, login, logout
from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from auditdb.integrations import acting
from tests.django_app import views
from tests.django_app.models import Note
from tests.fix_capture import entries
from tests.test_integration_django import PASSWORD, _client, _events, _notes, _user

# --- views -------------------------------------------------------------------------------------


@csrf_exempt
def plain_write(request: HttpRequest) -> HttpResponse:
    Note.objects.create(text=request.POST["text"])
    return HttpResponse("ok")


@csrf_exempt
def call_function(request: HttpRequest) -> HttpResponse:
    """A stored procedure called as Django's docs show: cursor.execute("SELECT f(%s)")."""
    with connection.cursor() as cur:
        cur.execute("select public.add_note(%s)", [request.POST["text"]])
    return HttpResponse("ok")


@csrf_exempt
def multi_statement(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cur:
        cur.execute("select 1; insert into django_app_note (text) values ('multi statement')")
    return HttpResponse("ok")


@csrf_exempt
def switch_user_in_failed_savepoint(request: HttpRequest) -> HttpResponse:
    """ATOMIC_REQUESTS view: ann 'logs in as' bob in a step that fails and is rolled back to its savepoint;
    the view goes on (as bob, in Python) and writes."""
    from django.contrib.auth.models import User

    Note.objects.create(text="before switch")  # context: ann, in the request's transaction
    bob = User.objects.get(username="bob")
    try:
        with transaction.atomic():
            login(request, bob)  # LOGIN emitted; context set to bob inside the savepoint
            Note.objects.create(text="inside savepoint")
            raise ValueError("a later step of the switch failed")
    except ValueError:
        pass
    Note.objects.create(text="after switch")  # request.user is bob: who does the log say?
    return HttpResponse("ok")


@csrf_exempt
def acting_inside_request(request: HttpRequest) -> HttpResponse:
    """An endpoint that authenticated another principal itself (an API key for 'svc-bob')."""
    with acting(actor_id="svc-bob"):
        Note.objects.create(text="as svc-bob")
    return HttpResponse("ok")


@csrf_exempt
def other_db_write(request: HttpRequest) -> HttpResponse:
    Note.objects.using("other").create(text="on the other database")
    return HttpResponse("ok")


@csrf_exempt
def orm_variants(request: HttpRequest) -> HttpResponse:
    Note.objects.bulk_create([Note(text="bulk 1"), Note(text="bulk 2")])
    Note.objects.filter(text="bulk 1").update(tenant_id="upd-outside")
    with transaction.atomic():
        Note.objects.filter(text="bulk 2").select_for_update().update(tenant_id="upd-inside")
    with transaction.atomic(durable=True):
        Note.objects.create(text="durable")
    with transaction.atomic():
        Note.objects.create(text="outer kept")
        try:
            with transaction.atomic():
                Note.objects.create(text="savepoint rolled back")
                raise ValueError
        except ValueError:
            pass
        transaction.on_commit(lambda: Note.objects.create(text="on commit"))
    with connection.cursor() as cur:
        cur.execute(
            "with u as (update django_app_note set tenant_id = 'cte' where text = 'durable' returning id) "
            "select count(*) from u"
        )
        cur.executemany("insert into django_app_note (text) values (%s)", [("many 1",), ("many 2",)])
    return HttpResponse("ok")


@csrf_exempt
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("bye")


@csrf_exempt
def pin_login(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST["username"], pin=request.POST["pin"])
    return HttpResponse("ok" if user else "no", status=200 if user else 401)


async def async_write(request: HttpRequest) -> HttpResponse:
    await Note.objects.acreate(text="async view")
    return HttpResponse("ok")


urlpatterns = [
    path("plain/", plain_write),
    path("function/", call_function),
    path("multi/", multi_statement),
    path("switch/", switch_user_in_failed_savepoint),
    path("acting/", acting_inside_request),
    path("other/", other_db_write),
    path("orm/", orm_variants),
    path("logout/", logout_view),
    path("pin-login/", pin_login),
    path("async/", async_write),
    path("login/", views.sign_in),
]


class PinBackend:
    """A custom backend taking a PIN (Django masks only api|token|key|secret|password|signature)."""

    def authenticate(self, request: Any, username: str | None = None, pin: str | None = None) -> Any:
        return None

    def get_user(self, user_id: Any) -> Any:
        return None


@pytest.fixture
def site(django_site: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with override_settings(ROOT_URLCONF=__name__):
        yield django_site


def _note(conn: psycopg.Connection[Any], text: str) -> dict[str, Any]:
    (entry,) = _notes(conn, text)
    return entry


# --- what failed once ---------------------------------------------------------------------------


def test_an_email_with_a_trailing_newline_is_dropped_not_fatal(site: dict[str, Any], conn: Any) -> None:
    """Python's `$` matches before a trailing newline; PostgreSQL's does not: set_context raises, 500."""
    ann = _user("ann")
    ann.email = "ann@example.com\n"  # an imported record: model fields are not validated on save()
    ann.save()
    client = _client()
    client.force_login(ann)
    assert client.post("/plain/", {"text": "odd email"}).status_code == 200
    assert _note(conn, "odd email")["actor_id"] == str(ann.pk)


def test_a_scoped_ipv6_peer_is_recorded_without_its_zone(site: dict[str, Any], conn: Any) -> None:
    """ipaddress accepts a zone id (fe80::1%eth0, what getpeername gives for link-local peers); inet does not."""
    assert _client(REMOTE_ADDR="fe80::1%eth0").post("/plain/", {"text": "link local"}).status_code == 200


@pytest.mark.parametrize("url", ["/multi/"])
def test_a_multi_statement_select_that_writes_is_attributed(site: dict[str, Any], conn: Any, url: str) -> None:
    conn.execute(
        "create function public.add_note(t text) returns int language sql"
        " as $$ insert into django_app_note (text) values (t) returning id $$"
    )
    conn.execute("grant all on django_app_note, django_app_note_id_seq to auditdb_test_app")
    client = _client()
    client.force_login(_user("ann"))
    assert client.post(url, {"text": "via function"}).status_code == 200
    text = "via function" if url == "/function/" else "multi statement"
    assert _note(conn, text)["actor_email"] == "ann@example.com"


def test_a_rolled_back_savepoint_does_not_leave_the_old_actor(site: dict[str, Any], conn: Any) -> None:
    site["ATOMIC_REQUESTS"] = True
    ann, bob = _user("ann"), _user("bob")
    client = _client()
    client.force_login(ann)
    assert client.post("/switch/", {}).status_code == 200
    assert _note(conn, "before switch")["actor_id"] == str(ann.pk)
    # Written after request.user became bob: the log must not blame ann.
    assert _note(conn, "after switch")["actor_id"] == str(bob.pk)


def test_acting_inside_a_request_names_one_person(site: dict[str, Any], conn: Any) -> None:
    client = _client()
    client.force_login(_user("ann"))
    assert client.post("/acting/", {}).status_code == 200
    entry = _note(conn, "as svc-bob")
    assert entry["actor_id"] == "svc-bob"
    # actor_id is svc-bob but e-mail and name are still ann's: one entry naming two people.
    assert (entry["actor_email"], entry["actor_name"]) == (None, None)


def test_a_database_not_in_auditdb_databases_is_left_alone(site: dict[str, Any], conn: Any, empty_db: str) -> None:
    from django.core.management import call_command

    info = psycopg.conninfo.conninfo_to_dict(empty_db)
    other = {**site, "NAME": info["dbname"], "USER": info["user"]}
    connections.close_all()
    connections.settings = connections.configure_settings({"default": site, "other": other})
    call_command("migrate", database="other", run_syncdb=True, verbosity=0)
    # Works without the middleware (the database has no auditdb, and does not need it) ...
    Note.objects.using("other").create(text="no request")
    # ... and fails inside any request.
    assert _client().post("/other/", {}).status_code == 200


def test_login_failed_connects_as_django_does_assume_role_included(site: dict[str, Any], conn: Any, dsn: str) -> None:
    """Django 5.2 OPTIONS assume_role: the request's connections SET ROLE, LOGIN_FAILED's does not."""
    from click.testing import CliRunner

    from auditdb.cli import cli

    conn.execute("drop role if exists rev_login; drop role if exists rev_app")
    conn.execute("create role rev_app nologin; create role rev_login login in role rev_app noinherit")
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", "rev_app", "--writer"]).exit_code == 0
    conn.execute(
        "grant all on all tables in schema public to rev_app; grant all on all sequences in schema public to rev_app"
    )
    try:
        site.update(USER="rev_login", OPTIONS={"assume_role": "rev_app"})
        connections.close_all()
        _user("dave")
        connections.close_all()
        response = _client().post("/login/", {"username": "dave", "password": "wrong"})
        assert response.status_code != 500
        assert _events(conn, dsn, "LOGIN_FAILED", "dave")
    finally:
        connections.close_all()
        conn.execute("drop owned by rev_login; drop owned by rev_app; drop role rev_login; drop role rev_app")


@override_settings(AUTHENTICATION_BACKENDS=[f"{__name__}.PinBackend"])
def test_login_failed_keeps_only_the_name_tried(site: dict[str, Any], conn: Any, dsn: str) -> None:
    assert _client().post("/pin-login/", {"username": "erin", "pin": "4921"}).status_code == 401
    (failed,) = _events(conn, dsn, "LOGIN_FAILED", "erin")
    assert "4921" not in str(failed["metadata"])


# --- what held ---------------------------------------------------------------------------------


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic-requests"])
def test_orm_variants_are_attributed(site: dict[str, Any], conn: Any, atomic_requests: bool) -> None:
    site["ATOMIC_REQUESTS"] = atomic_requests
    ann = _user("ann")
    client = _client()
    client.force_login(ann)
    if atomic_requests:
        # durable=True inside ATOMIC_REQUESTS is Django's own error
        with pytest.raises(RuntimeError):
            client.raise_request_exception = True
            client.post("/orm/", {})
        return
    assert client.post("/orm/", {}).status_code == 200
    rows = entries(conn, "entity_type = 'Note'")
    assert rows and all(r["actor_id"] == str(ann.pk) for r in rows), [
        (r["action"], r["entity_name"], r["actor_id"]) for r in rows
    ]
    assert _notes(conn, "savepoint rolled back") == []
    assert _notes(conn, "on commit") and _notes(conn, "many 2")


def test_logout_without_a_user(site: dict[str, Any], conn: Any, dsn: str) -> None:
    assert _client().post("/logout/", {}).status_code == 200


def test_huge_pk_and_invalid_email_do_not_fail(site: dict[str, Any], conn: Any) -> None:
    ann = _user("ann", "not-an-email")
    client = _client()
    client.force_login(ann)
    assert client.post("/plain/", {"text": "invalid email"}).status_code == 200
    assert _note(conn, "invalid email")["actor_email"] is None


def test_async_view_under_asgi(site: dict[str, Any], conn: Any) -> None:
    import asyncio

    from django.test import AsyncClient

    ann = _user("ann")
    client = AsyncClient()
    client.force_login(ann)
    response = asyncio.run(client.post("/async/", {}, headers={"X-Tenant": "async-t"}))
    assert response.status_code == 200
    entry = _note(conn, "async view")
    assert (entry["actor_id"], entry["tenant_id"]) == (str(ann.pk), "async-t")


def test_reused_connection_after_atomic_request(site: dict[str, Any], conn: Any) -> None:
    site["ATOMIC_REQUESTS"] = True
    site["CONN_MAX_AGE"] = None
    ann = _user("ann")
    a = _client()
    a.force_login(ann)
    assert a.post("/plain/", {"text": "ann persistent"}).status_code == 200
    assert _client().post("/plain/", {"text": "anon persistent"}).status_code == 200
    assert _note(conn, "anon persistent")["actor_id"] is None


def test_x_request_id_is_believed_only_from_a_trusted_proxy(site: dict[str, Any], conn: Any) -> None:
    """X-Forwarded-For is believed only from trusted proxies; X-Request-ID from anyone."""
    response = _client(REMOTE_ADDR="192.0.2.50").post("/plain/", {"text": "rid"}, HTTP_X_REQUEST_ID="req-of-victim")
    assert response.status_code == 200
    assert _note(conn, "rid")["metadata"]["request_id"] != "req-of-victim"


def test_an_ipv4_mapped_proxy_address_is_trusted() -> None:
    """A dual-stack listener (bind ::) sees the IPv4 load balancer as ::ffff:10.9.0.5."""
    from auditdb.integrations import TrustedProxies, client_ip

    assert client_ip("::ffff:10.9.0.5", "198.51.100.7", TrustedProxies(["10.9.0.0/16"])) == "198.51.100.7"


def test_login_failed_with_django_options(site: dict[str, Any], conn: Any, dsn: str) -> None:
    from psycopg import IsolationLevel

    connections.close_all()
    site["OPTIONS"] = {
        "prepare_threshold": 0,
        "server_side_binding": True,
        "pool": {"min_size": 1, "max_size": 2},
        "isolation_level": IsolationLevel.SERIALIZABLE,
        "options": "-c statement_timeout=5000",
    }
    connections.settings = connections.configure_settings({"default": site})
    del connections["default"]
    _user("dave")
    assert _client(REMOTE_ADDR="198.51.100.5").post("/login/", {"username": "dave", "password": "x"}).status_code == 401
    (failed,) = _events(conn, dsn, "LOGIN_FAILED", "dave")
    assert str(failed["ip"]) == "198.51.100.5" and "x" not in failed["metadata"]["credentials"].values()
    client = _client()
    assert client.post("/login/", {"username": "dave", "password": PASSWORD}).status_code == 200
    assert client.post("/plain/", {"text": "pooled"}).status_code == 200
    assert _note(conn, "pooled")["actor_email"] == "dave@example.com"
    connections.close_all()
    connections["default"].close_pool()
    site["OPTIONS"] = {}
