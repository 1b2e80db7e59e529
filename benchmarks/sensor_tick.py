"""One `new_annotations_<family>` sensor tick against PostgreSQL holding 10k, 100k and 1M annotations.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/sensor_tick.py [--sizes 10000,100000,1000000] [--ticks 20] [--json]

Per size, a fresh database on a local PostgreSQL gets N-60 intent-router `intent_label` rows
written server-side (`INSERT ... SELECT generate_series`, the columns ingestion writes, CLINC150
utterances when ../shared is there, a third of them unreviewed router captures); a real snapshot
is built from them (as the `intent-router/dataset_snapshot` asset does, so its manifest is the
real one, example ids and all) and a version trained on it is recorded (its record carries the
snapshot's watermark, as a training's does), then 60 more records come in through the real
ingestion path and the table is ANALYZEd. In a fresh process the REAL sensor
(`new_annotations_sensor`, evaluated with `dg.build_sensor_context` and the real
`annotation_store`, `artifact_storage` and `training` resources) is ticked: first ticks (no cursor:
the sensor reads the newest trained version's watermark and counts the 60) and steady ticks (the
cursor of a first tick, nothing new); at the minimum a tick would also look at the family's
training lock. Each tick's time includes building the
context and the resources, as every daemon tick does. The ratio to the smallest size is the
flatness figure; EXPLAIN ANALYZE of the sensor's own query shows the index range scan.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workers import peak_rss_mib, run_worker  # noqa: E402

FAMILY = "intent-router"
NEW = 60

# Every column ingestion writes; the payload is the record as received. Ids and hashes are
# SHA-256 of the server's JSON text (ingestion hashes orjson's): the same shape and width.
_FILL = """
WITH rec AS (
    SELECT i, jsonb_strip_nulls(jsonb_build_object(
        'kind', 'intent_label',
        'family', %(family)s,
        'text', p.texts[1 + i %% p.n] || ' ' || translate(i::text, '0123456789', 'abcdefghij'),
        'label', p.labels[1 + i %% p.n],
        'predicted_label', p.labels[1 + i %% p.n],
        'confidence', round(random()::numeric, 3),
        'provider', CASE WHEN random() < 0.9 THEN 'encoder' ELSE 'llm_fallback' END,
        'conversation_id', 'conv-' || (i / 3),
        'created_at', to_char(
            (timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => i * 25920000.0 / %(rows)s))
                AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'annotator', CASE WHEN i %% 3 <> 0 THEN 'reviewer-' || (i %% 7) END
    )) AS payload
    FROM generate_series(0, %(rows)s - 1) AS i,
         (SELECT %(texts)s::text[] AS texts, %(labels)s::text[] AS labels, %(n)s::int AS n) AS p
), hashed AS (
    SELECT i, payload, encode(sha256(convert_to(payload::text, 'UTF8')), 'hex') AS h FROM rec
)
INSERT INTO annotations (id, family, kind, payload, content_hash, created_at, ingested_at,
                         annotator, model_version, source_file, source_line, ingestion_id)
SELECT left(h, 32), %(family)s, 'intent_label', payload, h, (payload->>'created_at')::timestamptz,
       now(), payload->>'annotator', NULL, 'benchmark-fill.jsonl', i + 1, %(ingestion)s
FROM hashed ORDER BY i
"""


def _pool() -> tuple[list[str], list[str]]:
    clinc = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
    if clinc.is_file():
        data = json.loads(clinc.read_text())
        pairs = data["train"] + data["oos_train"]
    else:
        from pulse_pipeline.core.families import load_config

        labels = load_config(ROOT / "pulse.yaml").family(FAMILY).labels
        pairs = [(f"please help me with {label.replace('_', ' ')}", label) for label in labels]
    return [t for t, _ in pairs], [label for _, label in pairs]


def fill(url: str, rows: int) -> float:
    """N intent-router rows written by the server, in arrival (seq) order.

    The secondary indexes and unique constraints (whatever the migrations made) are dropped for
    the fill and built again after it: one sort each instead of a million random inserts.
    """
    import sqlalchemy as sa

    from pulse_pipeline.core.store import Store

    texts, labels = _pool()
    start = time.perf_counter()
    with Store(url) as store, store.begin() as conn:
        unique = conn.execute(
            sa.text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'annotations'::regclass AND contype = 'u'"
            )
        ).all()
        indexes = conn.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'annotations' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'annotations'::regclass)"
            )
        ).all()
        for name, _ in unique:
            conn.execute(sa.text(f'ALTER TABLE annotations DROP CONSTRAINT "{name}"'))
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        ingestion = conn.execute(
            sa.text(
                "INSERT INTO ingestions (source, started_at, finished_at, lines, blank_lines, accepted, "
                "duplicates, quarantined) VALUES ('benchmark-fill.jsonl', now(), now(), :n, 0, :n, 0, 0) "
                "RETURNING id"
            ),
            {"n": rows},
        ).scalar_one()
        cursor = conn.connection.dbapi_connection.cursor()
        params = {"family": FAMILY, "rows": rows, "texts": texts, "labels": labels, "n": len(texts)}
        cursor.execute(_FILL, {**params, "ingestion": ingestion})
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for name, definition in unique:
            cursor.execute(f'ALTER TABLE annotations ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.close()
    return time.perf_counter() - start


def ingest_new(url: str, count: int) -> None:
    """`count` reviewed intent labels through the real ingestion path (new seqs, after the snapshot)."""
    import orjson

    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.store import Store

    lines = [
        orjson.dumps(
            {"kind": "intent_label", "family": FAMILY, "text": f"where is my new card number {k}",
             "label": "card_declined", "predicted_label": "card_declined", "confidence": 0.91,
             "provider": "encoder", "annotator": "reviewer-1", "created_at": "2026-11-22T07:00:00Z"}
        )
        for k in range(count)
    ]  # fmt: skip
    with Store(url) as store:
        result = ingest_lines(store, lines, load_config(ROOT / "pulse.yaml"), source="benchmark-new.jsonl")
    if result.accepted != count:
        raise SystemExit(f"expected {count} new annotations accepted, got {result.accepted}")


def explain(url: str, watermark: int) -> list[str]:
    """EXPLAIN ANALYZE of the exact statement the sensor's store iterator sends."""
    import sqlalchemy as sa

    from pulse_pipeline.core.store import Store

    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM annotations" in statement:
            seen.append((statement, parameters))

    with Store(url) as store:
        sa.event.listen(store.engine, "before_cursor_execute", capture)
        list(store.annotations.iter_family(FAMILY, after=watermark))
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        statement, parameters = seen[-1]
        with store.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            sql = cursor.mogrify(statement, parameters).decode()
            cursor.execute("ANALYZE annotations")
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) {sql}")
            plan = [r[0] for r in cursor.fetchall()]
            cursor.close()
    return plan


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
    }


def snapshot_worker(url: str, artifacts_dir: str) -> dict:
    """Build the family's real snapshot, as the `intent-router/dataset_snapshot` asset does."""
    from pulse_pipeline.core.artifacts import LocalArtifactStore
    from pulse_pipeline.core.examples import build_examples
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.snapshots import prefix, write_snapshot
    from pulse_pipeline.core.store import Store

    family = load_config(ROOT / "pulse.yaml").family(FAMILY)
    start = time.perf_counter()
    with Store(url) as store:
        table, stats = build_examples(store, family)
        artifacts = LocalArtifactStore(artifacts_dir)
        snapshot = write_snapshot(artifacts, family, table, stats)
        _record_trained(store, artifacts, snapshot.version, snapshot.manifest["watermark"]["seq"])
    manifest = Path(artifacts_dir) / prefix(FAMILY, snapshot.version) / "manifest.json"
    return {
        "seconds": time.perf_counter() - start,
        "watermark": snapshot.manifest["watermark"]["seq"],
        "examples": table.num_rows,
        "manifest_bytes": manifest.stat().st_size,
        "peak_rss_mib": peak_rss_mib(),
    }


def _record_trained(store, artifacts, dataset_version: str, watermark: int) -> None:
    """A version trained on the snapshot, recorded as a training records it (its files a stand-in)."""
    from pulse_pipeline.core.registry import Registry

    registry = Registry(store, artifacts)
    record = registry.begin(
        FAMILY, dataset_version=dataset_version, base_model="minilm-l6", training_config={},
        created_by="benchmark", watermark=watermark,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "adapter_config.json").write_text("{}")
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        registry.publish(record, Path(folder), {"dataset_version": dataset_version})


def ticks_worker(n: int, targets: list[tuple[str, str]]) -> list[dict]:
    """Tick the real sensor against every (database, artifacts) target in turn, round-robin, so
    the machine's load at any moment falls on every size alike."""
    import dagster as dg

    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.retraining import NewAnnotations, count_new, training_watermark
    from pulse_pipeline.core.snapshots import latest_manifest
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
    from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment

    family = load_config(ROOT / "pulse.yaml").family(FAMILY)
    sensor = new_annotations_sensor(family, "retrain")
    resources = [
        {
            "annotation_store": AnnotationStore(database_url=url),
            "artifact_storage": ArtifactStorage(location=d),
            "training": TrainingEnvironment(home=d),
        }
        for url, d in targets
    ]
    expected = f"{NEW} of {family.min_new_annotations} new annotations"
    first: list[list[float]] = [[] for _ in targets]
    steady: list[list[float]] = [[] for _ in targets]
    cursors: list[str | None] = [None for _ in targets]
    parts = [
        {"store": [], "watermark": [], "count_first": [], "count_steady": [], "manifest": []} for _ in targets
    ]
    with dg.instance_for_test() as instance:

        def tick(res: dict, cursor: str | None) -> tuple[float, str | None]:
            start = time.perf_counter()
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=res) as context:
                result = sensor(context)
                seconds = time.perf_counter() - start
                if getattr(result, "skip_message", None) != expected:
                    raise SystemExit(f"the tick did not skip with {expected!r}: {result!r}")
                return seconds, context.cursor

        for _ in range(2):  # warm-up: imports, first connections, Alembic's script directory
            for i, res in enumerate(resources):
                cursors[i] = tick(res, None)[1]
        for _ in range(n):  # a first tick and a steady one per size and round: the same load on each
            for i, res in enumerate(resources):
                seconds, cursors[i] = tick(res, None)
                first[i].append(seconds)
                steady[i].append(tick(res, cursors[i])[0])

        # Where a tick's time goes, piece by piece, outside Dagster.
        for _ in range(n):
            for i, (url, _) in enumerate(targets):
                artifacts = resources[i]["artifact_storage"]
                t0 = time.perf_counter()
                store = Store(url)
                t1 = time.perf_counter()
                watermark = training_watermark(store, artifacts.open(), FAMILY)
                t2 = time.perf_counter()
                count_new(store, family, watermark)
                t3 = time.perf_counter()
                count_new(store, family, watermark, NewAnnotations.from_cursor(cursors[i]))
                t4 = time.perf_counter()
                store.dispose()
                t5 = time.perf_counter()
                latest_manifest(artifacts.open(), FAMILY)  # the baseline: what every tick read before
                t6 = time.perf_counter()
                for key, seconds in zip(parts[i], (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5), strict=True):
                    parts[i][key].append(seconds)
    return [
        {
            "first": _ms(first[i]),
            "steady": _ms(steady[i]),
            "cursor": cursors[i],
            "parts": {k: _ms(v)["median_ms"] for k, v in parts[i].items()},
        }
        for i in range(len(targets))
    ]


def prepare(pg, size: int, tmp: str) -> dict:
    """A database holding `size` annotations, the newest NEW of them after a real snapshot."""
    url = pg.create_database("tick")
    artifacts_dir = str(Path(tmp) / f"artifacts-{size}")
    out: dict = {"rows": size, "url": url, "artifacts": artifacts_dir, "fill_seconds": fill(url, size - NEW)}
    out["snapshot"] = run_worker(__file__, "snapshot", url, artifacts_dir)
    ingest_new(url, NEW)
    out["plan"] = explain(url, out["snapshot"]["watermark"])  # ANALYZEs the table first
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="annotation counts, comma-separated")
    parser.add_argument("--ticks", type=int, default=20, help="ticks timed per kind and size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, *rest = args.worker
        if mode == "snapshot":
            print(json.dumps(snapshot_worker(*rest)))
        else:
            n, *flat = rest
            print(
                json.dumps({"results": ticks_worker(int(n), list(zip(flat[::2], flat[1::2], strict=True)))})
            )
        return

    from pulse_pipeline_tests.postgres_server import PostgresServer

    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        results = [prepare(pg, size, tmp) for size in sizes]
        targets = [x for r in results for x in (r["url"], r["artifacts"])]
        ticked = run_worker(__file__, "ticks", str(args.ticks), *targets)["results"]
    for r, t in zip(results, ticked, strict=True):
        r.update(t)
        del r["url"], r["artifacts"]
    report = {"ticks": args.ticks, "new": NEW, "load_before": load_before, "load_after": os.getloadavg()[0],
              "results": results}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return
    base = results[0]
    print(
        f"{FAMILY}: {NEW} new annotations after the newest trained version; {args.ticks} ticks of each kind; "
        f"load average {report['load_before']:.1f} before, {report['load_after']:.1f} after\n"
    )
    print(
        "| rows | first tick ms (median / p95) | steady tick ms (median / p95) | first vs smallest "
        "| steady vs smallest | manifest MiB | fill s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f, s = r["first"], r["steady"]
        print(
            f"| {r['rows']:,} | {f['median_ms']:.1f} / {f['p95_ms']:.1f} | {s['median_ms']:.1f} / {s['p95_ms']:.1f} "
            f"| {f['median_ms'] / base['first']['median_ms']:.2f} | {s['median_ms'] / base['steady']['median_ms']:.2f} "
            f"| {r['snapshot']['manifest_bytes'] / 2**20:.1f} | {r['fill_seconds']:.1f} |"
        )
    print(
        "\nMedian ms per piece, outside Dagster (Store() = the resource's setup, with its migration check):\n"
    )
    print(
        "| rows | Store() | training watermark (records) | count, no cursor | count, with cursor "
        "| whole manifest (baseline) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p = r["parts"]
        print(
            f"| {r['rows']:,} | {p['store']:.1f} | {p['watermark']:.1f} | {p['count_first']:.1f} "
            f"| {p['count_steady']:.1f} | {p['manifest']:.1f} |"
        )
    last = results[-1]
    print(
        f"\nEXPLAIN ANALYZE of the sensor's query at {last['rows']:,} rows (after seq {last['snapshot']['watermark']}):\n"
    )
    print("```\n" + "\n".join(last["plan"]) + "\n```")


if __name__ == "__main__":
    main()
