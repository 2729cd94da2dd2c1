"""Test configuration: fixture modules live in tests/fix_*.py."""

import pytest

pytest_plugins = [
    "tests.fix_server",
    "tests.fix_db",
    "tests.fix_capture",
    "tests.fix_roles",
    "tests.fix_hostile",
    "tests.fix_django",
    "tests.fix_pgbouncer",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist, run each server's tests on one worker, so each worker starts one server."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        server = callspec.params.get("pg_server") if callspec else None
        item.add_marker(pytest.mark.xdist_group(str(server or "none")))
