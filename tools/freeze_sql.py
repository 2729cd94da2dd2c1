"""Print the digests of released revision files, for FROZEN_SQL in tests/test_install.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

for path in sorted((Path(__file__).resolve().parent.parent / "sql").glob("[0-9][0-9][0-9][0-9]_*.sql")):
    print(f'    "{path.name}": "{hashlib.sha256(path.read_bytes()).hexdigest()}",')
