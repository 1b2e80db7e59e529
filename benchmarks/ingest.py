"""Ingestion throughput and peak memory: 200k annotation records into SQLite and PostgreSQL.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/ingest.py [--rows 200000] [--json]

Each measurement runs in its own process (so peak RSS is its own). The baseline is the same
file parsed and validated without a database, in the same script; the ratio column shows
how much of the parse-only speed each backend keeps. PostgreSQL is a real local server
started for the run (Debian's binaries), as in the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workers import peak_rss_mib, run_worker  # noqa: E402


def make_file(path: Path, rows: int) -> dict[str, int]:
    """The demo's record mix, repeated with a distinct annotator so every record is new."""
    import orjson

    from pulse_pipeline.demo.data import DemoScale, generate

    clinc = ROOT.parent / "shared" / "data" / "clinc150"
    base = list(
        generate(
            seed=7,
            anchor=dt.date(2026, 11, 1),
            scale=DemoScale(),
            clinc150_dir=clinc if clinc.is_dir() else None,
        )
    )
    kinds: dict[str, int] = {}
    with path.open("wb") as fh:
        for i in range(rows):
            record = dict(base[i % len(base)], annotator=f"bench-{i // len(base)}")
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
            fh.write(orjson.dumps(record) + b"\n")
    return kinds


def worker(mode: str, file: Path, url: str) -> dict:
    import orjson

    from pulse_pipeline.core.annotations import parse_record
    from pulse_pipeline.core.families import load_config

    config = load_config(ROOT / "pulse.yaml")
    start = time.perf_counter()
    if mode == "parse":
        accepted = 0
        with file.open("rb") as fh:
            for line in fh:
                parse_record(orjson.loads(line), config, may_hold_nul=False)
                accepted += 1
        lines = accepted
    else:
        from pulse_pipeline.core.ingestion import ingest_file
        from pulse_pipeline.core.store import Store

        with Store(url) as store:
            start = time.perf_counter()  # migrations excluded
            result = ingest_file(store, file, config)
        accepted, lines = result.accepted, result.lines
    seconds = time.perf_counter() - start
    peak_mib = peak_rss_mib()
    return {"mode": mode, "lines": lines, "accepted": accepted, "seconds": seconds, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "FILE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, file, url = args.worker
        print(json.dumps(worker(mode, Path(file), url)))
        return

    from pulse_pipeline_tests.postgres_server import PostgresServer

    results = []
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        # A quarter-size run too: constant memory means the same peak for 4x the lines.
        for rows in (args.rows // 4, args.rows):
            file = Path(tmp) / f"records-{rows}.jsonl"
            kinds = make_file(file, rows)
            size_mib = file.stat().st_size / 2**20
            size_results = [
                run_worker(__file__, "parse", str(file), ""),
                run_worker(__file__, "sqlite", str(file), f"sqlite:///{tmp}/bench-{rows}.db"),
                run_worker(__file__, "postgresql", str(file), pg.create_database("bench")),
            ]
            base = size_results[0]["lines"] / size_results[0]["seconds"]
            for r in size_results:
                r["rows_per_s"] = r["lines"] / r["seconds"]
                r["vs_parse_only"] = r["rows_per_s"] / base
            results += size_results
    report = {"rows": args.rows, "file_mib": round(size_mib, 1), "kinds": kinds, "results": results}
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{args.rows} records, {size_mib:.0f} MiB of JSON Lines ({', '.join(f'{k} {v}' for k, v in kinds.items())})\n"
    )
    print("| stage | rows | seconds | rows/s | vs parse-only | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {
        "parse": "parse + validate only (baseline)",
        "sqlite": "ingest into SQLite",
        "postgresql": "ingest into PostgreSQL",
    }
    for r in results:
        print(
            f"| {labels[r['mode']]} | {r['accepted']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
            f"{r['vs_parse_only']:.2f} | {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
