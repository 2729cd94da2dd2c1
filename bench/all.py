"""Every benchmark, one after another, into bench/RESULTS.md (and each script's own report).

    python bench/all.py [--server system-15] [--quick] [--only events,export]

Runs capture.py (W1-W4 with floors, log bytes per entry), query.py (10,000,000 entries), export.py
(1,000,000 entries), events.py, seal.py (sealing and verify, 1,000,000 entries) and seal_lag.py
(the seal lag beside capture's workloads), each on a server it starts itself, never two at once,
so one does not slow another. --quick runs smaller sizes to check the scripts, not to report figures;
--only reruns some and rebuilds RESULTS.md with the others' latest reports.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import pick_server

HERE = Path(__file__).resolve().parent

FULL = {
    "capture": ["--rounds", "3", "--seconds", "30", "--rows", "200000"],
    "query": ["--rows", "10000000"],
    "export": ["--rows", "1000000"],
    "events": ["--synchronous-commit", "on,off"],
    "seal": ["--rows", "1000000"],
    "seal_lag": ["--seconds", "60", "--rows", "200000"],
}
QUICK = {
    "capture": ["--rounds", "1", "--seconds", "3", "--rows", "20000"],
    "query": ["--rows", "200000", "--repeat", "5"],
    "export": ["--rows", "50000"],
    "events": ["--seconds", "5"],
    "seal": ["--rows", "50000"],
    "seal_lag": ["--seconds", "3", "--rows", "20000"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", help="which PostgreSQL (default: the system one)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the scripts, report nothing")
    parser.add_argument("--only", help="comma-separated benchmarks to rerun (" + ", ".join(FULL) + ")")
    args = parser.parse_args()
    key, _ = pick_server(args.server)
    plan = QUICK if args.quick else FULL
    sections = []
    started = time.monotonic()
    only = set(args.only.split(",")) if args.only else set(plan)
    for name, extra in plan.items():
        report = HERE / f"{name.upper()}.md"
        if name not in only:
            if not args.quick:
                sections.append(report.read_text().replace("\n# ", "\n## ").replace("# ", "## ", 1))
            continue
        command = [sys.executable, str(HERE / f"{name}.py"), "--server", key, *extra]
        if not args.quick:
            command += ["--output", str(report)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True)
        if not args.quick:
            sections.append(report.read_text().replace("\n# ", "\n## ").replace("# ", "## ", 1))
    if args.quick:
        return
    header = [
        "# Benchmark results",
        "",
        f"- command: `python bench/all.py --server {key}{' --only ' + args.only if args.only else ''}`"
        + (" (rerunning those; the other sections are their latest reports)" if args.only else "")
        + f", {(time.monotonic() - started) / 60:.0f} minutes; each section also comes alone from the command it names",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
