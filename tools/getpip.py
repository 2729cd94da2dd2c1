"""Give a venv made with --without-pip its pip, from the pip wheel on PyPI (no get-pip.py host)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/pypi/pip/json"


def main(venv: str) -> None:
    with urllib.request.urlopen(INDEX, timeout=60) as response:
        release = json.load(response)
    wheel = next(u for u in release["urls"] if u["packagetype"] == "bdist_wheel")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / wheel["filename"]
        # Mirrors may answer with addresses relative to the JSON document.
        urllib.request.urlretrieve(urllib.parse.urljoin(INDEX, wheel["url"]), path)
        python = Path(venv) / "bin" / "python"
        # A pip wheel can run itself: python pip.whl/pip install pip
        subprocess.run([str(python), f"{path}/pip", "install", "--quiet", str(path)], check=True)


if __name__ == "__main__":
    main(sys.argv[1])
