"""What the benchmark scripts share: choosing the server and writing the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from auditdb.embedded import find_bindirs


def add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="which PostgreSQL (default: the system one): " + ", ".join(find_bindirs()))
    parser.add_argument("--output", type=Path, help="also write the report to this Markdown file")


def pick_server(name: str | None) -> tuple[str, Path]:
    """(key, bindir): the named server, else the system one, else the first found."""
    bindirs = find_bindirs()
    key = name or next((k for k in bindirs if k.startswith("system")), next(iter(bindirs)))
    return key, bindirs[key]


def finish(lines: list[str], output: Path | None) -> None:
    """Print the report and, when asked, write it to a file."""
    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        output.write_text(text)
