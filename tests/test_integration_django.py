"""Django: AuditContextMiddleware through real requests (the test client and a real HTTP server).

Each entry carries the request's user, address (X-Forwarded-For only from a trusted proxy) and
tenant, with and without ATOMIC_REQUESTS and across reused connections; a failed request leaves
no entry of the changes it rolled back; LOGIN, LOGOUT and LOGIN_FAILED are logged, the last in
a transaction of its own.
"""

from __future__ import annotations

import http.cookiejar
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
import pytest

from auditdb.worker import Worker
from tests.fix_capture import entries

pytest.importorskip("django", minversion="4.2", reason="Django is not installed: pip install auditdb[django]")

PASSWORD = "correct horse battery"


def _user(name: str, email: str | None = None) -> Any:
    from django.contrib.auth.models import User

    user = User.objects.create_user(name, email or f"{name}@example.com", PASSWORD)
    user.first_name, user.last_name = name.capitalize(), "Tester"
    user.save()
    return user


def _client(**defaults: Any) -> Any:
    from django.test import Client

    return Client(raise_request_exception=False, **defaults)


def _notes(conn: psycopg.Connection[Any], text: str) -> list[dict[str, Any]]:
    return entries(conn, "entity_type = 'Note' and entity_name = %s", (text,))


def _events(conn: psycopg.Connection[Any], dsn: str, action: str, entity_id: str) -> list[dict[str, Any]]:
    Worker(dsn, poll_interval=0.1).run(once=True)
    return entries(conn, "action = %s and entity_id = %s", (action, entity_id))


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic-requests"])
def test_a_request_s_change_carries_its_user_address_and_tenant(
    django_site: dict[str, Any], conn: psycopg.Connection[Any], atomic_requests: bool
) -> None:
    django_site["ATOMIC_REQUESTS"] = atomic_requests
    ann = _user("ann")
    client = _client(REMOTE_ADDR="10.9.0.5", HTTP_USER_AGENT="pytest-browser/1.0")
    client.force_login(ann)
    response = client.post(
        "/notes/",
        {"text": "from ann"},
        HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7, 10.9.0.6",
        HTTP_X_TENANT="acme",
        HTTP_X_REQUEST_ID="req-42",
    )
    assert response.status_code == 200
    (entry,) = _notes(conn, "from ann")
    assert entry["action"] == "CREATE"
    assert (entry["actor_id"], entry["actor_email"], entry["actor_name"]) == (
        str(ann.pk),
        "ann@example.com",
        "Ann Tester",
    )
    # The trusted proxy (10.9.0.0/16) passed on 198.51.100.7, which is not one: that is the client.
    assert str(entry["ip"]) == "198.51.100.7"
    assert (entry["tenant_id"], entry["user_agent"], entry["metadata"].get("request_id")) == (
        "acme",
        "pytest-browser/1.0",
        "req-42",
    )
    # Two transactions of the view's own, one after the other: both carry the context.
    assert client.post("/notes/twice/", {"text": "twice"}, HTTP_X_TENANT="acme").status_code == 200
    assert [(e["actor_id"], e["tenant_id"]) for e in _notes(conn, "twice 1") + _notes(conn, "twice 2")] == [
        (str(ann.pk), "acme")
    ] * 2


def test_an_untrusted_peer_s_forwarded_for_is_ignored(
    django_site: dict[str, Any], conn: psycopg.Connection[Any]
) -> None:
    client = _client(REMOTE_ADDR="192.0.2.50")
    assert client.post("/notes/", {"text": "spoofed"}, HTTP_X_FORWARDED_FOR="10.9.0.1, 203.0.113.1").status_code == 200
    (entry,) = _notes(conn, "spoofed")
    assert str(entry["ip"]) == "192.0.2.50"
    assert entry["actor_id"] is None  # anonymous
    assert entry["metadata"]["request_id"]  # one was made for the request


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic-requests"])
def test_a_failed_request_leaves_no_entry_of_what_it_rolled_back(
    django_site: dict[str, Any], conn: psycopg.Connection[Any], atomic_requests: bool
) -> None:
    django_site["ATOMIC_REQUESTS"] = atomic_requests
    client = _client()
    client.force_login(_user("bob"))
    assert client.post("/notes/fail/", {"text": "rolled back"}).status_code == 500
    assert _notes(conn, "rolled back") == []
    assert client.post("/notes/fail-request/", {"text": "written, then the view failed"}).status_code == 500
    kept = _notes(conn, "written, then the view failed")
    if atomic_requests:
        assert kept == []  # the request's transaction rolled back, entry and all
    else:
        # Without ATOMIC_REQUESTS the note was committed before the view failed: it exists, and so does its entry.
        assert [e["actor_email"] for e in kept] == ["bob@example.com"]
        assert (
            scalar_count(
                conn, "select count(*) from public.django_app_note where text = %s", ("written, then the view failed",)
            )
            == 1
        )


def scalar_count(conn: psycopg.Connection[Any], query: str, params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def test_a_reused_connection_carries_nothing_to_the_next_request(
    django_site: dict[str, Any], conn: psycopg.Connection[Any]
) -> None:
    django_site["CONN_MAX_AGE"] = None  # persistent: every request below runs on one connection
    first = _client(REMOTE_ADDR="198.51.100.1")
    first.force_login(_user("carol"))
    pid_1 = first.post("/notes/", {"text": "carol's"}, HTTP_X_TENANT="t-carol").json()["pid"]
    pid_2 = _client(REMOTE_ADDR="198.51.100.2").post("/notes/", {"text": "anonymous"}).json()["pid"]
    assert pid_1 == pid_2
    (carols,) = _notes(conn, "carol's")
    (anonymous,) = _notes(conn, "anonymous")
    assert carols["actor_email"] == "carol@example.com" and carols["tenant_id"] == "t-carol"
    assert (anonymous["actor_id"], anonymous["actor_email"], anonymous["tenant_id"]) == (None, None, None)
    assert str(anonymous["ip"]) == "198.51.100.2"


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic-requests"])
def test_login_logout_and_failed_login_are_logged(
    django_site: dict[str, Any], conn: psycopg.Connection[Any], dsn: str, atomic_requests: bool
) -> None:
    django_site["ATOMIC_REQUESTS"] = atomic_requests
    dave = _user("dave")
    client = _client(REMOTE_ADDR="198.51.100.20")
    assert client.post("/login/", {"username": "dave", "password": PASSWORD}).status_code == 200
    assert client.post("/notes/", {"text": "after login"}).status_code == 200
    assert client.post("/logout/").status_code == 200
    (login,) = _events(conn, dsn, "LOGIN", str(dave.pk))
    (logout,) = _events(conn, dsn, "LOGOUT", str(dave.pk))
    for event in (login, logout):
        assert (event["actor_id"], event["actor_email"], str(event["ip"])) == (
            str(dave.pk),
            "dave@example.com",
            "198.51.100.20",
        )
    # The login changed who acts: the note written after it in the same session is dave's.
    assert [e["actor_id"] for e in _notes(conn, "after login")] == [str(dave.pk)]
    # A failed login in a request that then fails: the request rolls back, LOGIN_FAILED stays.
    failing = _client(REMOTE_ADDR="198.51.100.66")
    response = failing.post("/login/", {"username": "dave", "password": "wrong", "then_fail": "1"})
    assert response.status_code == 500
    (failed,) = _events(conn, dsn, "LOGIN_FAILED", "dave")
    assert (failed["actor_id"], str(failed["ip"])) == (None, "198.51.100.66")
    assert "wrong" not in str(failed["metadata"])


@pytest.fixture
def http_server(django_site: dict[str, Any]) -> Iterator[str]:
    """Django's WSGI application behind a real HTTP server (wsgiref) in a thread."""
    from django.core.handlers.wsgi import WSGIHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        from django.db import connections

        connections.close_all()


def test_through_a_real_http_server(
    http_server: str, conn: psycopg.Connection[Any], django_site: dict[str, Any]
) -> None:
    from django.db import connections

    _user("erin")
    connections.close_all()  # the server's thread has its own connection
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def post(path: str, data: dict[str, str]) -> int:
        request = urllib.request.Request(
            http_server + path,
            data=urllib.parse.urlencode(data).encode(),
            headers={"X-Tenant": "globex", "User-Agent": "urllib-test"},
        )
        try:
            with opener.open(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    assert post("/login/", {"username": "erin", "password": PASSWORD}) == 200
    assert post("/notes/", {"text": "over http"}) == 200
    assert post("/notes/fail/", {"text": "over http, failed"}) == 500
    (entry,) = _notes(conn, "over http")
    assert (entry["actor_email"], str(entry["ip"]), entry["tenant_id"], entry["user_agent"]) == (
        "erin@example.com",
        "127.0.0.1",
        "globex",
        "urllib-test",
    )
    assert _notes(conn, "over http, failed") == []
