"""Shared by the benchmark scripts: run a measurement in a fresh process of the same script."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def run_worker(script: str, *args: str) -> dict:
    """Run `script --worker ARGS...` and return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{script} worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
