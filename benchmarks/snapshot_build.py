"""Snapshot build throughput and peak memory: N intent-router annotations in PostgreSQL.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/snapshot_build.py [--rows 1000000] [--json]

Loads N intent labels (CLINC150 utterances when ../shared is there, each made unique with a
trailing letter code; a third of them unreviewed router captures) into a real local PostgreSQL,
then builds the family's examples and snapshot in a separate process, as the
`intent-router/examples` and `intent-router/dataset_snapshot` assets do: read, triage,
format, redact, deduplicate, split, hash, write Parquet and the manifest. The baseline is the
same process reading the rows from the store and doing nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workers import peak_rss_mib, run_worker  # noqa: E402


def _word(i: int) -> str:
    """A distinct lower-case word per record, so no two texts collapse as duplicates."""
    letters = []
    while True:
        i, r = divmod(i, 26)
        letters.append(chr(97 + r))
        if not i:
            return "".join(letters)


def load(url: str, rows: int) -> float:
    import orjson

    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.store import Store

    config = load_config(ROOT / "pulse.yaml")
    clinc = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
    if clinc.is_file():
        data = json.loads(clinc.read_text())
        pool = [tuple(x) for x in data["train"] + data["oos_train"]]
    else:
        labels = config.family("intent-router").labels
        pool = [(f"please help me with {label.replace('_', ' ')}", label) for label in labels]
    rng = random.Random(5)

    def lines():
        for i in range(rows):
            text, label = pool[i % len(pool)]
            record = {
                "kind": "intent_label",
                "family": "intent-router",
                "text": f"{text} {_word(i)}",
                "label": label,
                "predicted_label": label,
                "confidence": round(rng.random(), 3),
                "provider": "encoder" if rng.random() < 0.9 else "llm_fallback",
                "conversation_id": f"conv-{i // 3}",
                "created_at": f"2026-{1 + i % 10:02d}-{1 + i % 28:02d}T12:00:00Z",
            }
            if i % 3:
                record["annotator"] = f"reviewer-{i % 7}"
            yield orjson.dumps(record)

    start = time.perf_counter()
    with Store(url) as store:
        ingest_lines(store, lines(), config, source="benchmark")
    return time.perf_counter() - start


def worker(mode: str, url: str, artifacts_dir: str) -> dict:
    from pulse_pipeline.core.artifacts import LocalArtifactStore
    from pulse_pipeline.core.examples import build_examples
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.snapshots import check_snapshot, write_snapshot
    from pulse_pipeline.core.store import Store

    family = load_config(ROOT / "pulse.yaml").family("intent-router")
    out: dict = {"mode": mode}
    with Store(url) as store:
        start = time.perf_counter()
        if mode == "read":  # every row, decoded, the way the record-by-record path reads them
            out["rows"] = sum(1 for _ in store.annotations.iter_family(family.name))
        else:
            table, stats = build_examples(store, family)
            out["rows"] = stats.annotations
            t = time.perf_counter()
            snapshot = write_snapshot(LocalArtifactStore(artifacts_dir), family, table, stats)
            out["write_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            checks = check_snapshot(family, table, snapshot.splits)
            out["check_seconds"] = time.perf_counter() - t
            out["examples"] = table.num_rows
            out["dataset_version"] = snapshot.version
            out["checks_passed"] = all(c.passed for c in checks if c.blocking)
        out["seconds"] = time.perf_counter() - start
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "URL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    from pulse_pipeline_tests.postgres_server import PostgresServer

    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        url = pg.create_database("bench")
        load_seconds = load(url, args.rows)
        results = [run_worker(__file__, "read", url, tmp), run_worker(__file__, "build", url, tmp)]
    for r in results:
        r["rows_per_s"] = r["rows"] / r["seconds"]
    report = {"rows": args.rows, "load_seconds": load_seconds, "results": results}
    if args.json:
        print(json.dumps(report))
        return
    read, build = results
    print(f"{args.rows} intent-router annotations in PostgreSQL (loaded in {load_seconds:.0f} s)\n")
    print("| stage | rows | seconds | rows/s | vs read-only | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| read rows from the store (baseline) | {read['rows']} | {read['seconds']:.1f} | {read['rows_per_s']:,.0f} | 1.00 | {read['peak_rss_mib']:.0f} |"
    )
    print(
        f"| build examples + snapshot | {build['rows']} | {build['seconds']:.1f} | {build['rows_per_s']:,.0f} | "
        f"{build['rows_per_s'] / read['rows_per_s']:.2f} | {build['peak_rss_mib']:.0f} |"
    )
    print(
        f"\n{build['examples']} examples, dataset_version {build['dataset_version']}; of the build, "
        f"{build['write_seconds']:.1f} s split + hash + Parquet + manifest; checks (not in the figure) "
        f"{build['check_seconds']:.1f} s, blocking checks {'pass' if build['checks_passed'] else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
