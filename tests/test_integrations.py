"""What every framework integration shares: the client's address behind proxies, fields set_context takes."""

from __future__ import annotations

import pytest

from auditdb.integrations import TrustedProxies, acting, clean_fields, client_ip, current_fields, request_id

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        (
            "198.51.100.1",
            "203.0.113.5",
            "198.51.100.1",
        ),  # the peer is no proxy of ours: its header is the client's word
        ("10.0.0.2", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.2", "203.0.113.66, 203.0.113.5, 10.0.0.3", "203.0.113.5"),  # the first untrusted hop from the right
        ("10.0.0.2", "10.0.0.4, 10.0.0.3", "10.0.0.4"),  # trusted all the way: the leftmost
        ("10.0.0.2", "203.0.113.5, not-an-address", "10.0.0.2"),  # garbage ends the walk at the last trusted hop
        ("192.0.2.1", " 2001:db8::9 , 2001:DB8::1 ", "2001:db8::9"),
        ("10.0.0.2", "", "10.0.0.2"),
        ("::ffff:10.0.0.2", "203.0.113.5", "203.0.113.5"),  # a dual-stack listener's view of the proxy
        ("fe80::1%eth0", None, "fe80::1"),
        (None, "203.0.113.5", None),
        ("bogus", None, None),
    ],
)
def test_client_ip_believes_only_trusted_proxies(peer: str | None, forwarded: str | None, client: str | None) -> None:
    assert client_ip(peer, forwarded, TRUSTED) == client


def test_clean_fields_drops_what_set_context_would_refuse() -> None:
    cleaned = clean_fields(
        {
            "actor_id": "x" * 257,
            "actor_email": "not an address",
            "ip": "999.1.1.1",
            "tenant_id": "t\n1",
            "request_id": "req-1",
            "user_agent": "u" * 2000,
            "actor_name": "",
        }
    )
    assert cleaned["actor_id"] is None and cleaned["actor_email"] is None and cleaned["ip"] is None
    assert cleaned["tenant_id"] is None and cleaned["actor_name"] is None
    assert cleaned["request_id"] == "req-1" and cleaned["user_agent"] == "u" * 1024
    assert clean_fields({"ip": "2001:DB8::1", "actor_email": "a@b.example"})["ip"] == "2001:db8::1"
    with pytest.raises(TypeError, match="unknown context field"):
        clean_fields({"user": "ann"})


def test_request_id_takes_a_sane_header_from_a_trusted_proxy_or_makes_one() -> None:
    assert request_id("abc-123_x.y", "10.0.0.2", TRUSTED) == "abc-123_x.y"
    made = {
        request_id("abc-123_x.y", "198.51.100.1", TRUSTED),  # a client names no request id
        request_id("abc-123_x.y"),
        request_id(None, "10.0.0.2", TRUSTED),
        request_id("has space", "10.0.0.2", TRUSTED),
        request_id("x" * 200, "10.0.0.2", TRUSTED),
        request_id("ok\n", "10.0.0.2", TRUSTED),
    }
    assert len(made) == 6 and all(len(r) == 36 for r in made)


def test_acting_holds_for_its_block_only() -> None:
    assert current_fields() is None
    with acting(actor_id="ann"):
        assert current_fields()["actor_id"] == "ann"  # type: ignore[index]
        with acting(actor_id="bob", tenant_id="t2"):
            assert current_fields()["tenant_id"] == "t2"  # type: ignore[index]
        assert current_fields()["tenant_id"] is None  # type: ignore[index]
    assert current_fields() is None
