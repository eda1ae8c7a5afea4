"""Runs every benchmark of bench/ in its quick form and prints each figure as `name=value`.

Each bench_*.py script accepts `--quick` and prints its figures as `name=value` lines (other
lines are
progress and tables). The whole run is bounded: 10 minutes at most in all (`--budget-s`).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FIGURE = re.compile(r"^[a-z][a-z0-9_]*=\S+$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget-s", type=float, default=600.0, help="time for all benchmarks")
    ap.add_argument("--full", action="store_true", help="run the full forms, not the quick ones")
    ap.add_argument("only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    args = ap.parse_args()
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 50))
    deadline = time.monotonic() + args.budget_s
    figures, failed = [], []
    for script in scripts:
        left = deadline - time.monotonic()
        if left <= 5:
            failed.append(f"{script.name} (no time left)")
            continue
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        print(f"# {script.name}", flush=True)
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            failed.append(f"{script.name} (timed out)")
            continue
        sys.stderr.write(res.stderr[-2000:] if res.returncode else "")
        for line in res.stdout.splitlines():
            (figures.append(line) if FIGURE.match(line.strip()) else print("  " + line))
        if res.returncode:
            failed.append(f"{script.name} (exit {res.returncode})")
    for fig in figures:
        print(fig)
    results = here / "results"
    results.mkdir(exist_ok=True)
    (results / ("system.json" if args.full else "system_quick.json")).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
        "figures": dict(f.strip().split("=", 1) for f in figures), "failed": failed},
        indent=1) + "\n")
    for f in failed:
        print(f"# FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
