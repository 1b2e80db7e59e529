"""Continual training and forgetting on CLINC150, split by domain into two periods.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/continual_forgetting.py [--replay 0.3 ...] [--first-domains 5] [--per-intent N] [--json]
    .venv/bin/python benchmarks/continual_forgetting.py --smoke     # 4 domains, 12 utterances an intent

The in-scope utterances of CLINC150's train and val files (../shared/data/clinc150; 10 domains of
15 intents; out-of-scope left out) arrive in two periods, as a user's would: the intents of the
first `--first-domains` domains (alphabetical) in January, the other domains' in February, when
the family's `labels` grow to all of them. Everything goes through the product as a user runs it:
a `classification` family on `minilm-l6` with the recipe's defaults, the records ingested into a
SQLite store, built into examples and a content-addressed snapshot (80/10/10, stratified by
label), trained with `train_family`, judged with `evaluate_version` (the promotion gate, with its
forgetting checks on the previous snapshot's test split) and promoted through the registry.

1. Period 1: trained from the base on the first snapshot; promoted (the champion).
2. Period 2, on the second snapshot (both periods' data), each judged against the champion:
   - scratch: `init: base` on everything;
   - continual, no replay: `init: champion, replay: 0`, the February examples only;
   - continual, replay r: `init: champion, replay: r` for each `--replay`.

Accuracy (argmax over the family's labels) on the second snapshot's test split, by domain of
period: old (the first period's intents: exactly the first snapshot's test split, since splits
are sticky) and new. With
the gate's decision and its forgetting check on the old slice. Times are `train_family`'s
`training_time_seconds` (the recipe, frozen-encoder floor included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "clinc150"
FAMILY = "clinc"


def periods(
    first_domains: int, per_intent: int | None, domains_used: int = 10
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(period-1 pairs, period-2 pairs, period-1 intents) from CLINC150's in-scope train + val."""
    data = json.loads((DATA / "data_full.json").read_text())
    domains = json.loads((DATA / "domains.json").read_text())
    names = sorted(domains)[:domains_used]
    old = {i for d in names[:first_domains] for i in domains[d]}
    new = {i for d in names[first_domains:] for i in domains[d]}
    pairs = [(t, y) for t, y in data["train"] + data["val"] if y in old | new]
    if per_intent:
        seen: dict[str, int] = {}
        kept = []
        for t, y in pairs:
            seen[y] = seen.get(y, 0) + 1
            if seen[y] <= per_intent:
                kept.append((t, y))
        pairs = kept
    return [p for p in pairs if p[1] in old], [p for p in pairs if p[1] in new], sorted(old)


def write_config(work: Path, labels: list[str], smoke: bool) -> Any:
    import yaml

    from pulse_pipeline.core.families import load_config

    (work / "labels.txt").write_text("\n".join(labels) + "\n")
    family = {
        "task": "classification",
        "annotation_kinds": ["intent_label"],
        "base_model": "minilm-l6",
        "labels_file": "labels.txt",
        "training": {"epochs": 1, "probe_epochs": 5} if smoke else {},
        "evaluation": {"gate": {"evidence": {"min_examples": 10}}} if smoke else {},
    }
    (work / "pulse.yaml").write_text(yaml.safe_dump({"families": {FAMILY: family}}, sort_keys=False))
    return load_config(work / "pulse.yaml")


def snapshot(store: Any, artifacts: Any, config: Any, pairs: list[tuple[str, str]], when: dt.datetime) -> str:
    import orjson

    from pulse_pipeline.core.examples import build_examples
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.snapshots import write_snapshot

    created = when.isoformat()
    lines = (
        orjson.dumps({"kind": "intent_label", "family": FAMILY, "text": t, "label": y, "created_at": created})
        for t, y in pairs
    )
    ingest_lines(store, lines, config, source=f"clinc150-{when:%Y-%m}", annotator="dataset")
    family = config.family(FAMILY)
    table, stats = build_examples(store, family)
    return write_snapshot(artifacts, family, table, stats, now=when).version


def accuracy(folder: Path, examples: list[dict[str, Any]], max_length: int) -> float:
    from pulse_pipeline.core.training.models import load_adapter

    if not examples:
        return float("nan")
    loaded = load_adapter(folder)
    probs = loaded.predict([e["text"] for e in examples], max_length=max_length)
    labels = loaded.head.labels
    return sum(labels[k] == e["label"] for k, e in zip(probs.argmax(-1), examples, strict=True)) / len(
        examples
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pulse_pipeline.core.artifacts import open_artifact_store
    from pulse_pipeline.core.evaluation.runner import evaluate_version
    from pulse_pipeline.core.registry import Registry, files
    from pulse_pipeline.core.snapshots import read_split
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.core.training.runner import train_family

    if args.smoke:
        first, second, old_intents = periods(2, 12, domains_used=4)
    else:
        first, second, old_intents = periods(args.first_domains, args.per_intent)
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        artifacts = open_artifact_store(str(work / "artifacts"))
        with Store(f"sqlite:///{work / 'pulse.db'}") as store:
            registry = Registry(store, artifacts)
            config = write_config(work, old_intents, args.smoke)
            v1 = snapshot(store, artifacts, config, first, dt.datetime(2026, 1, 15, tzinfo=dt.UTC))

            def trained(name: str, cfg: Any, overrides: dict[str, Any]) -> dict[str, Any]:
                family = cfg.family(FAMILY).model_copy(
                    update={"training": {**cfg.family(FAMILY).training, **overrides}}
                )
                print(f"-- {name}", file=sys.stderr, flush=True)
                out = train_family(family, registry, home=home, tracking_uri=None, created_by="benchmark")
                ev = evaluate_version(family, cfg, artifacts, home=home, version=out.version)
                folder = files.local_folder(artifacts, FAMILY, out.version, work / "cache")
                return {"name": name, "version": out.version, "meta": out.metadata, "eval": ev.results,
                        "folder": folder, "family": family}  # fmt: skip

            champion = trained("period 1 (base)", config, {})
            registry.promote(FAMILY, champion["version"], by="benchmark", force=True, reason="period 1")

            config = write_config(work, old_intents + sorted({y for _, y in second}), args.smoke)
            v2 = snapshot(store, artifacts, config, second, dt.datetime(2026, 2, 15, tzinfo=dt.UTC))
            family = config.family(FAMILY)
            old_ids = {e["id"] for e in read_split(artifacts, family, v1, "test")}
            test = read_split(artifacts, family, v2, "test")
            old_test = [e for e in test if e["label"] in set(old_intents)]
            new_test = [e for e in test if e["label"] not in set(old_intents)]
            assert {e["id"] for e in old_test} == old_ids, "splits are sticky: the old test split is kept"

            runs = [champion, trained("scratch on both (base)", config, {})]
            runs.append(trained("continual, no replay", config, {"init": "champion", "replay": 0.0}))
            for share in args.replay:
                runs.append(
                    trained(f"continual, replay {share:g}", config, {"init": "champion", "replay": share})
                )
            max_length = 48
            for r in runs:
                gate = r["eval"]["gate"]
                checks = gate.get("checks", [])
                forgetting = [c for c in checks if c.get("kind") == "forgetting"]
                others = [
                    c["reason"]
                    for c in checks
                    if c.get("kind") != "forgetting" and c["outcome"] not in ("pass", "skipped")
                ]
                rows.append(
                    {
                        "run": r["name"],
                        "snapshot": r["meta"]["dataset_version"],
                        "examples": r["meta"]["samples_used"],
                        "replay": r["meta"].get("replay"),
                        "old_accuracy": accuracy(r["folder"], old_test, max_length),
                        "new_accuracy": accuracy(r["folder"], new_test, max_length),
                        "train_seconds": r["meta"]["training_time_seconds"],
                        "gate": gate["decision"],
                        "forgetting": [
                            {k: c.get(k) for k in ("outcome", "reason", "value")} for c in forgetting
                        ],
                        "other_reasons": others,
                    }
                )
    return {
        "snapshots": [v1, v2],
        "periods": {"first": len(first), "second": len(second), "old_intents": len(old_intents)},
        "test": {"old": len(old_test), "new": len(new_test)},
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"CLINC150 by domain: period 1 {result['periods']['first']} utterances "
        f"({result['periods']['old_intents']} intents), period 2 {result['periods']['second']}; "
        f"test: {result['test']['old']} old-domain, {result['test']['new']} new-domain; "
        f"load {result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f}"
    )
    print("| run | trained on | old-domain acc | new-domain acc | train s | gate | forgetting check |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in result["rows"]:
        check = "; ".join(f"{c['outcome']}: {c['reason']}" for c in r["forgetting"]) or "n/a"
        print(
            f"| {r['run']} | {r['examples']} | {100 * r['old_accuracy']:.2f} % | "
            f"{100 * r['new_accuracy']:.2f} % | {r['train_seconds']:.0f} | {r['gate']} | {check} |"
        )
    for r in result["rows"]:
        if r["other_reasons"]:
            print(f"- {r['run']}: the gate's other reasons: " + "; ".join(r["other_reasons"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", type=float, nargs="*", default=[0.3], help="replay shares to run")
    parser.add_argument("--first-domains", type=int, default=5, help="domains in period 1 (of 10)")
    parser.add_argument(
        "--per-intent", type=int, default=None, help="utterances an intent (default: all 120)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="4 domains, 12 utterances an intent, 1 epoch: a quick check"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    result = run(args)
    print_table(result)
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
