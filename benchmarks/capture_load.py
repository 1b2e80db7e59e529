"""Capture service under load: concurrent clients sending batches of interactions over loopback.

Starts PostgreSQL (fsync off, as in the tests) and `pulse serve-capture` on it, then N client
threads (one keep-alive HTTP connection each) post batches of interactions as fast as the
service answers, for a fixed time. Reports interactions/s and request latency, and checks that
nothing was lost: the records acknowledged with a 2xx equal the rows stored plus quarantined.
The baseline is the same records written by `pulse ingest`'s code path straight into the same
PostgreSQL (no HTTP): the service's rate reads as a share of it.

    .venv/bin/python benchmarks/capture_load.py [--clients 8] [--batch 100] [--seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson

PROJECT = Path(__file__).resolve().parent.parent
FAMILY = "intent-router"


def records(n: int, bad_every: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        rec = {
            "kind": "interaction",
            "family": FAMILY,
            "id": uuid.uuid4().hex,
            "input": f"please freeze my account number {i} right away",
            "output": "freeze_account",
            "predicted_label": "freeze_account",
            "confidence": 0.9,
            "model_version": "intent-router-20261101-0900",
            "latency_ms": 11.5,
            "created_at": "2026-12-05T10:00:00.000000+00:00",
        }
        if bad_every and i % bad_every == bad_every - 1:
            rec["confidence"] = 7  # quarantined: out of 0..1
        out.append(rec)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(url: str, token_grants: str, home: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "PULSE_DATABASE_URL": url,
        "PULSE_CAPTURE_TOKENS": token_grants,
        "PULSE_HOME": home,
        "PULSE_CONFIG": str(PROJECT / "pulse.yaml"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse_pipeline.cli", "serve-capture", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not start: {proc.stderr.read().decode()[-2000:]}")


def load(
    port: int, token: str, clients: int, batch: int, seconds: float, bad_every: int, rate: float
) -> dict:
    """`rate`: interactions/s offered by all clients together, each sending on a fixed schedule
    (latency counted from the scheduled time, so a late answer delays no measurement); 0: each
    client sends its next batch as soon as the last is answered (the most the service takes)."""
    stop = time.monotonic() + seconds
    interval = clients * batch / rate if rate else 0.0
    latencies: list[float] = []
    acked = {"accepted": 0, "duplicates": 0, "quarantined": 0, "records": 0}
    errors: dict[int, int] = {}
    lock = threading.Lock()

    def client(offset: float) -> None:
        mine: list[float] = []
        counts = {"accepted": 0, "duplicates": 0, "quarantined": 0, "records": 0}
        due = time.perf_counter() + offset
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            while time.monotonic() < stop:
                body = orjson.dumps({"records": records(batch, bad_every)})
                if interval:
                    time.sleep(max(0.0, due - time.perf_counter()))
                    t0, due = due, due + interval
                else:
                    t0 = time.perf_counter()
                r = http.post("/v1/interactions", content=body, headers={"content-type": "application/json"})
                mine.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    out = r.json()
                    counts["accepted"] += out["accepted"]
                    counts["duplicates"] += out["duplicates"]
                    counts["quarantined"] += len(out["quarantined"])
                    counts["records"] += batch
                else:
                    with lock:
                        errors[r.status_code] = errors.get(r.status_code, 0) + 1
        with lock:
            latencies.extend(mine)
            for k, v in counts.items():
                acked[k] += v

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i * interval / clients,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "seconds": elapsed,
        "requests": len(latencies),
        "interactions_per_s": acked["records"] / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_ms": 1000 * latencies[-1],
        "offered_per_s": rate or None,
        "errors": errors,
        **acked,
    }


def direct_baseline(url: str, n: int) -> float:
    """Records/s of the same records through `ingest_lines` into the same PostgreSQL."""
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.store import Store

    config = load_config(PROJECT / "pulse.yaml")
    lines = [orjson.dumps(r) for r in records(n)]
    with Store(url) as store:
        t0 = time.perf_counter()
        result = ingest_lines(store, lines, config, source="baseline")
        elapsed = time.perf_counter() - t0
    assert result.accepted == n, result
    return n / elapsed


def stored_counts(url: str) -> tuple[int, int]:
    import sqlalchemy as sa

    from pulse_pipeline.core.store import Store, annotations, quarantine

    with Store(url) as store, store.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(annotations)).scalar_one()
        bad = conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar_one()
    return rows, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument(
        "--rates", default="2000,0", help="interactions/s offered in each phase; 0: as fast as it answers"
    )
    parser.add_argument("--bad-every", type=int, default=50, help="one record in N is invalid (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    from pulse_pipeline.core.capture import hash_token, new_token
    from pulse_pipeline_tests.postgres_server import PostgresServer

    token = new_token()
    grants = json.dumps([{"name": "bench", "sha256": hash_token(token), "families": ["*"]}])
    phases = []
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        baseline = direct_baseline(pg.create_database("direct"), 20_000)
        url = pg.create_database("capture")
        port = free_port()
        service = start_service(url, grants, tmp, port)
        try:
            # warm-up, not reported: connections, the writer's ingestion, first validations
            warm = load(port, token, args.clients, args.batch, 2.0, args.bad_every, 0)
            for rate in (float(r) for r in args.rates.split(",")):
                phases.append(load(port, token, args.clients, args.batch, args.seconds, args.bad_every, rate))
        finally:
            service.terminate()
            service.wait(30)
        rows, bad = stored_counts(url)
    acked = {k: sum(p[k] for p in [warm, *phases]) for k in ("accepted", "duplicates", "quarantined")}
    report = {
        "clients": args.clients,
        "batch": args.batch,
        "bad_every": args.bad_every,
        "direct_ingest_per_s": baseline,
        "phases": [p | {"vs_direct": p["interactions_per_s"] / baseline} for p in phases],
        "acknowledged": acked,
        "stored_rows": rows,
        "stored_quarantined": bad,
        "nothing_lost": acked["accepted"] + acked["duplicates"] == rows and acked["quarantined"] == bad,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{args.clients} clients, batches of {args.batch}, {args.seconds:.0f} s a phase, one record in "
        f"{args.bad_every} invalid; direct ingest into the same PostgreSQL (baseline): {baseline:,.0f} records/s\n"
    )
    print(
        "| offered (interactions/s) | acknowledged/s | vs direct | requests | p50 ms | p99 ms | max ms | non-2xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in report["phases"]:
        offered = f"{p['offered_per_s']:,.0f}" if p["offered_per_s"] else "as fast as answered"
        print(
            f"| {offered} | {p['interactions_per_s']:,.0f} | {p['vs_direct']:.2f} | {p['requests']:,} | "
            f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['max_ms']:.1f} | {sum(p['errors'].values())} |"
        )
    print(
        f"\nacknowledged: {acked['accepted']:,} stored + {acked['duplicates']:,} duplicates = {rows:,} rows; "
        f"{acked['quarantined']:,} quarantined = {bad:,} quarantine rows; nothing lost: "
        f"{'yes' if report['nothing_lost'] else 'NO'}"
    )


if __name__ == "__main__":
    main()
