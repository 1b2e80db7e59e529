"""CLINC150 through the pipeline as an intent family on `minilm-l6`: accuracy, OOS recall, time.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/intent_quality.py [--epochs N] [--json]

The 15,100 training and 3,100 validation utterances of CLINC150 (../shared/data/clinc150)
become `intent_label` annotation records (annotated, so approved), are ingested into a
SQLite store and built into training examples exactly as the `intent-router/examples` asset
does (validation, redaction, deduplication). The dataset's own splits are kept: training on
train + oos_train, the confidence threshold and the best epoch chosen on val + oos_val, and
the published test split (4,500 in-scope, 1,000 out-of-scope) scored once at the end:

- in-scope accuracy: in-scope test queries whose top intent is right and above the threshold;
- out-of-scope recall: OOS test queries predicted `oos` or below the threshold, where the
  score is the top intent's cosine similarity (the head's own measure; the softmax
  probability, the usual rule, is reported beside it);
- the threshold maximizes accuracy on val over all queries, out-of-scope counted as one
  more class (as the CLINC150 paper's threshold baseline).

Baseline in the same run: the frozen encoder with the same head fitted alone on its
embeddings (the recipe's linear-probe stage without the LoRA epochs that follow it).
Targets (issue 4): >= 96.0 % in-scope, >= 50 % OOS recall, <= 10 minutes on 2 cores.
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
CLINC = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"


def records(data: dict, splits: tuple[str, ...]) -> list[dict]:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    return [
        {
            "kind": "intent_label",
            "family": "intent-router",
            "text": text,
            "label": label,
            "annotator": "clinc150-crowd",
            "created_at": created,
        }
        for split in splits
        for text, label in data[split]
    ]


def build_examples(data: dict, work: Path) -> tuple[list[dict], list[dict], dict]:
    """Ingest the train and val utterances and build examples as the pipeline does; return the
    train and val examples by the dataset's own split, and what the build reported."""
    import orjson

    from pulse_pipeline.core.examples import build_examples as build
    from pulse_pipeline.core.examples import records as export
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.store import Store

    family = load_config(ROOT / "pulse.yaml").family("intent-router")
    lines = [orjson.dumps(r) for r in records(data, ("train", "oos_train", "val", "oos_val"))]
    with Store(f"sqlite:///{work / 'pulse.db'}") as store:
        result = ingest_lines(store, iter(lines), load_config(ROOT / "pulse.yaml"), source="clinc150")
        table, stats = build(store, family)
    examples = export(family, table)
    val_texts = {t for t, _ in data["val"] + data["oos_val"]}
    test_texts = {t for t, _ in data["test"] + data["oos_test"]}
    usable = [e for e in examples if e["text"] not in test_texts]  # never train on a test utterance
    train = [e for e in usable if e["text"] not in val_texts]
    val = [e for e in usable if e["text"] in val_texts]
    report = {
        "ingested": result.accepted,
        "quarantined": result.quarantined,
        "examples": len(examples),
        "duplicates_dropped": stats.exact_duplicates + stats.normalized_duplicates,
        "dropped_as_in_test": len(examples) - len(usable),
        "redactions": dict(stats.redactions),
    }
    return train, val, report


def choose_threshold(scores, predicted, gold: list[str], labels: list[str]) -> float:
    """The out-of-scope threshold on the top label's score that maximizes val accuracy."""
    import numpy as np

    candidates = np.quantile(scores, np.linspace(0.0, 0.5, 201))
    return float(max(candidates, key=lambda t: score(scores, predicted, gold, labels, float(t))["accuracy"]))


def score(scores, predicted, gold: list[str], labels: list[str], threshold: float) -> dict[str, float]:
    """`scores`: the top label's score per query; `predicted`: the top label's index."""
    import numpy as np

    names = np.array([labels[i] for i in predicted], dtype=object)
    names[scores < threshold] = "oos"
    gold_arr = np.array(gold, dtype=object)
    in_scope = gold_arr != "oos"
    return {
        "accuracy": float((names == gold_arr).mean()),  # all queries, out-of-scope as one more class
        "in_scope_accuracy": float((names[in_scope] == gold_arr[in_scope]).mean()),
        "oos_recall": float((names[~in_scope] == "oos").mean()),
    }


def evaluate(loaded, data: dict, val: list[dict], labels: list[str], max_length: int) -> dict:
    """Scores the test split with the out-of-scope threshold chosen on val, for two scores of the
    top label: its cosine similarity (the head's raw score; the main figures) and its softmax
    probability (the usual rule)."""
    import numpy as np

    val_raw = loaded.predict([e["text"] for e in val], max_length=max_length, raw=True)
    test = data["test"] + data["oos_test"]
    started = time.perf_counter()
    test_raw = loaded.predict([t for t, _ in test], max_length=max_length, raw=True)
    seconds = time.perf_counter() - started
    val_gold, gold = [e["label"] for e in val], [label for _, label in test]

    def softmax_top(raw):
        e = np.exp(raw - raw.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).max(1)

    out: dict = {"test_queries_per_second": len(test) / seconds}
    for rule, top_val, top_test in (
        ("cosine", val_raw.max(1), test_raw.max(1)),
        ("softmax", softmax_top(val_raw), softmax_top(test_raw)),
    ):
        threshold = choose_threshold(top_val, val_raw.argmax(1), val_gold, labels)
        out[rule] = {"threshold": threshold, **score(top_test, test_raw.argmax(1), gold, labels, threshold)}
    out.update(out["cosine"])
    out["no_threshold"] = score(test_raw.max(1), test_raw.argmax(1), gold, labels, -np.inf)
    return out


def probe_only(family, base, train_set):
    """The recipe's first stage alone: the head fitted on frozen embeddings, no LoRA steps."""
    from pulse_pipeline.core.training import recipe
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.hardware import plan_for
    from pulse_pipeline.core.training.models import LoadedAdapter, load_for_training, load_tokenizer

    config = resolve_training_config("classification", family.training)
    plan = plan_for(config, "encoder")
    job = recipe.TrainingJob(family, config, "probe", train_set, [], base, Path())
    head = recipe.head_config(job)
    tokenizer = load_tokenizer(base.path)
    model = load_for_training(base, plan, config.lora, head=head)
    features = recipe.encode_examples(job, tokenizer, train_set)
    recipe.fit_head_on_frozen_embeddings(model, features, config, plan, tokenizer.pad_token_id)
    model.eval()
    return LoadedAdapter(model, tokenizer, "classification", head)


def row(method: str, loaded, started: float, build_seconds: float) -> dict:
    seconds = time.perf_counter() - started
    return {"method": method, "train_seconds": seconds, "total_seconds": build_seconds + seconds, "epochs": 0}


def run(epochs: int | None, margin: float | None) -> dict:
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.models import load_adapter
    from pulse_pipeline.core.training.recipe import TrainingJob, train

    data = json.loads(CLINC.read_text())
    family = load_config(ROOT / "pulse.yaml").family("intent-router")
    labels = list(family.labels or ())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        train_set, val_set, build = build_examples(data, work)
        build_seconds = time.perf_counter() - started
        base = resolve_base_model("minilm-l6", work)
        started = time.perf_counter()
        probe = probe_only(family, base, train_set)
        rows.append(row("frozen encoder + fitted head (probe only)", probe, started, build_seconds))
        rows[-1].update(evaluate(probe, data, val_set, labels, 48))
        config = resolve_training_config(
            "classification", family.training, {"epochs": epochs, "margin": margin}
        )
        job = TrainingJob(family, config, "clinc150", train_set, val_set, base, work / "work")
        started = time.perf_counter()
        loaded = load_adapter(train(job).folder)
        rows.append(row("pulse recipe (probe, then LoRA)", loaded, started, build_seconds))
        rows[-1].update(evaluate(loaded, data, val_set, labels, config.max_length))
        rows[-1].update(epochs=config.epochs, margin=config.margin)
    return {
        "build": build,
        "build_seconds": build_seconds,
        "train_examples": len(train_set),
        "val_examples": len(val_set),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="LoRA epochs (default: the family's setting)"
    )
    parser.add_argument(
        "--margin", type=float, default=None, help="cosine margin (default: the family's setting)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if not CLINC.is_file():
        sys.exit(f"CLINC150 not found at {CLINC}")
    out = run(args.epochs, args.margin)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"CLINC150 via the pipeline: {out['train_examples']} train / {out['val_examples']} val examples "
        f"({out['build']['duplicates_dropped']} duplicates dropped, {out['build']['dropped_as_in_test']} also in test), "
        f"built in {out['build_seconds']:.0f} s\n"
    )
    print(
        "| method | OOS rule | in-scope acc | OOS recall | in-scope acc (no threshold) | train s | total s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in out["rows"]:
        for rule in ("cosine", "softmax"):
            s = r[rule]
            print(
                f"| {r['method']} | {rule} < {s['threshold']:.3g} | {100 * s['in_scope_accuracy']:.2f} % "
                f"| {100 * s['oos_recall']:.2f} % | {100 * r['no_threshold']['in_scope_accuracy']:.2f} % "
                f"| {r['train_seconds']:.0f} | {r['total_seconds']:.0f} |"
            )
    print("\ntargets: in-scope >= 96.0 %, OOS recall >= 50 %, total <= 600 s (2-core CPU)")


if __name__ == "__main__":
    main()
