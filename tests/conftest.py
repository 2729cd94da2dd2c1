"""Test configuration: fixture modules live in tests/fix_*.py."""

pytest_plugins = ["tests.fix_server", "tests.fix_db", "tests.fix_capture", "tests.fix_roles", "tests.fix_hostile"]
