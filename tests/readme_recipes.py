"""The README's integration recipes (a fenced block after `<!-- recipe: NAME -->`), for the tests to run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def recipe(name: str) -> str:
    """The code of the README's recipe `name`."""
    match = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w*\n(.*?)\n```", README.read_text(), re.S)
    assert match, f"README.md has no recipe {name!r}"
    return match.group(1)


def run_recipe(name: str) -> dict[str, Any]:
    """Run the recipe as a module would; its globals."""
    namespace: dict[str, Any] = {"__name__": f"readme_recipe_{name}"}
    exec(compile(recipe(name), f"README.md recipe {name}", "exec"), namespace)
    return namespace
