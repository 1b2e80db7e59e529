"""An intent dataset through the pipeline on `minilm-l6`: the frozen-encoder floor and the recipe on test.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/intent_quality.py clinc150 hwu64 [--set KEY=VALUE ...] [--json]
    .venv/bin/python benchmarks/intent_quality.py --train train.csv --test test.csv [--val val.csv]

Datasets: `clinc150` and `hwu64` (from ../shared/data), or your own files, each either CSV with
a `text,label` header or JSON lines with `text` and `label`. Without `--val`, 10 % of train per
label (seed 0) is held out for validation, as a snapshot with `evaluation.test_file` does.

For each dataset, as a user would run it: a family (`task: classification`, `minilm-l6`, the
dataset's labels, the classification defaults plus `--set` overrides) in a fresh `pulse.yaml`;
the train and val utterances ingested with `--annotator` into a SQLite store and built into
training examples exactly as the `<family>/examples` asset does (validation, redaction,
deduplication; an utterance that also occurs in test is dropped from training); then the
recipe. Both rows come from the one training run:

- floor: the frozen encoder with the logistic regression the recipe fits on its embeddings
  (C chosen on val): the figure no fine-tune may be below;
- recipe: what the recipe publishes (its best epoch on val accuracy, or the floor when no epoch
  beats it on val).

Test accuracy over the dataset's test split. With an out-of-scope label (`oos`, CLINC150):
in-scope accuracy and out-of-scope recall, where a query whose top label's score is below a
threshold is out of scope; the threshold maximizes val accuracy over all queries (out-of-scope
as one more class, as the CLINC150 paper's threshold baseline), on the head's raw score (cosine
x scale, or the floor's logit) and on its softmax probability.

Targets (issue 15), each within 10 minutes of training on 2 cores: the recipe above the floor on
test on both development datasets; CLINC150 in-scope >= 96.9 % with OOS recall >= 52 %.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OOS = "oos"
Pairs = list[tuple[str, str]]


def load_builtin(name: str) -> tuple[Pairs, Pairs, Pairs]:
    """(train, val, test) of a development dataset, as (text, label) pairs."""
    if name == "clinc150":
        d = json.loads((DATA / "clinc150" / "data_full.json").read_text())
        return d["train"] + d["oos_train"], d["val"] + d["oos_val"], d["test"] + d["oos_test"]
    if name == "hwu64":
        d = json.loads((DATA / "hwu64" / "hwu64.json").read_text())
        return d["train"], d["val"], d["test"]
    sys.exit(f"unknown dataset {name!r}: clinc150, hwu64, or --train/--test files")


def read_pairs(path: Path) -> Pairs:
    """A CSV file with a text,label header, or JSON lines with text and label."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not str(row.get("text") or "").strip() or not str(row.get("label") or "").strip():
            sys.exit(f"{path}: row {i + 1}: needs a non-empty text and label")
    return [(str(r["text"]), str(r["label"])) for r in rows]


def hold_out(train: Pairs, share: float = 0.1, seed: int = 0) -> tuple[Pairs, Pairs]:
    """Split off `share` of each label's examples (at least one where a label has two) for val."""
    by_label: dict[str, Pairs] = {}
    for pair in train:
        by_label.setdefault(pair[1], []).append(pair)
    rng, keep, val = random.Random(seed), [], []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n = round(len(items) * share) or (1 if len(items) > 1 else 0)
        val += items[:n]
        keep += items[n:]
    return keep, val


def family_yaml(name: str, labels: list[str], settings: dict[str, Any]) -> str:
    import yaml

    family = {
        "task": "classification",
        "annotation_kinds": ["intent_label"],
        "base_model": "minilm-l6",
        "labels_file": "labels.txt",
        "training": settings,
    }
    return yaml.safe_dump({"families": {name: family}}, sort_keys=False)


def build(name: str, train: Pairs, val: Pairs, test: Pairs, settings: dict[str, Any], work: Path):
    """Ingest train + val as one annotator's labels, build the examples as the asset does, and
    return (family, train examples, val examples, what the build reported)."""
    import orjson

    from pulse_pipeline.core.examples import build_examples, records
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.ingestion import ingest_lines
    from pulse_pipeline.core.store import Store

    labels = sorted({label for _, label in train + val + test})
    (work / "labels.txt").write_text("\n".join(labels) + "\n")
    (work / "pulse.yaml").write_text(family_yaml(name, labels, settings))
    config = load_config(work / "pulse.yaml")
    family = config.family(name)
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    lines = (
        orjson.dumps({"kind": "intent_label", "family": name, "text": t, "label": y, "created_at": created})
        for t, y in train + val
    )
    with Store(f"sqlite:///{work / 'pulse.db'}") as store:
        result = ingest_lines(store, lines, config, source=name, annotator="dataset")
        table, stats = build_examples(store, family)
    examples = records(family, table)
    val_texts, test_texts = {t for t, _ in val}, {t for t, _ in test}
    usable = [e for e in examples if e["text"] not in test_texts]  # never train on a test utterance
    report = {
        "ingested": result.accepted,
        "quarantined": result.quarantined,
        "duplicates_dropped": stats.exact_duplicates + stats.normalized_duplicates,
        "dropped_as_in_test": len(examples) - len(usable),
    }
    train_ex = [e for e in usable if e["text"] not in val_texts]
    val_ex = [e for e in usable if e["text"] in val_texts]
    return family, train_ex, val_ex, report


def choose_threshold(scores: Any, predicted: Any, gold: list[str], labels: list[str]) -> float:
    """The out-of-scope threshold on the top label's score that maximizes val accuracy."""
    import numpy as np

    candidates = np.quantile(scores, np.linspace(0.0, 0.5, 201))
    return float(max(candidates, key=lambda t: score(scores, predicted, gold, labels, float(t))["accuracy"]))


def score(scores: Any, predicted: Any, gold: list[str], labels: list[str], threshold: float) -> dict:
    """`scores`: the top label's score per query; `predicted`: the top label's index."""
    import numpy as np

    names = np.array([labels[i] for i in predicted], dtype=object)
    names[scores < threshold] = OOS
    gold_arr = np.array(gold, dtype=object)
    in_scope = gold_arr != OOS
    out = {"accuracy": float((names == gold_arr).mean())}
    if (~in_scope).any():
        out["in_scope_accuracy"] = float((names[in_scope] == gold_arr[in_scope]).mean())
        out["oos_recall"] = float((names[~in_scope] == OOS).mean())
    return out


def evaluate(loaded: Any, val: list[dict], test: Pairs, max_length: int) -> dict:
    """Test accuracy; with an out-of-scope label, in-scope accuracy and OOS recall at the val-chosen
    threshold of the top label's raw score and of its softmax probability."""
    import numpy as np

    labels = loaded.head.labels
    started = time.perf_counter()
    test_raw = loaded.predict([t for t, _ in test], max_length=max_length, raw=True)
    out: dict[str, Any] = {"test_queries_per_second": len(test) / (time.perf_counter() - started)}
    gold = [y for _, y in test]
    out["no_threshold"] = score(test_raw.max(1), test_raw.argmax(1), gold, labels, -np.inf)
    if OOS not in gold:
        return out
    val_raw = loaded.predict([e["text"] for e in val], max_length=max_length, raw=True)
    val_gold = [e["label"] for e in val]

    def softmax_top(raw: Any) -> Any:
        e = np.exp(raw - raw.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).max(1)

    for rule, top_val, top_test in (
        ("raw", val_raw.max(1), test_raw.max(1)),
        ("softmax", softmax_top(val_raw), softmax_top(test_raw)),
    ):
        threshold = choose_threshold(top_val, val_raw.argmax(1), val_gold, labels)
        out[rule] = {"threshold": threshold, **score(top_test, test_raw.argmax(1), gold, labels, threshold)}
    return out


def run_one(name: str, splits: tuple[Pairs, Pairs, Pairs], settings: dict[str, Any]) -> dict:
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.floor import Floor
    from pulse_pipeline.core.training.hardware import plan_for
    from pulse_pipeline.core.training.models import LoadedAdapter, load_adapter, load_tokenizer
    from pulse_pipeline.core.training.recipe import TrainingJob, floor_model, head_config, train

    train_pairs, val_pairs, test = splits
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        family, train_ex, val_ex, report = build(name, train_pairs, val_pairs, test, settings, work)
        build_seconds = time.perf_counter() - started
        config = resolve_training_config("classification", family.training)
        base = resolve_base_model("minilm-l6", work)
        job = TrainingJob(family, config, name, train_ex, val_ex, base, work / "work")
        started = time.perf_counter()
        result = train(job)
        train_seconds = time.perf_counter() - started
        metadata = result.metadata
        floor = Floor.load(job.work)
        model, linear = floor_model(job, plan_for(config, "encoder"), head_config(job), floor)
        model.eval()
        floor_adapter = LoadedAdapter(model, load_tokenizer(base.path), "classification", linear)
        rows = [
            {
                "method": f"floor: frozen encoder + logistic regression (C={floor.c:g})",
                "val_accuracy": floor.val_accuracy,
                "fit_seconds": floor.seconds,
                **evaluate(floor_adapter, val_ex, test, config.max_length),
            },
            {
                "method": f"recipe (publishes: {metadata['selected']}"
                + (f", epoch {metadata['best_epoch']})" if metadata["selected"] == "fine_tune" else ")"),
                "val_accuracy": (metadata.get("best_validation") or {}).get("val_accuracy"),
                "fit_seconds": train_seconds,
                **evaluate(load_adapter(result.folder), val_ex, test, config.max_length),
            },
        ]
    return {
        "dataset": name,
        "train_examples": len(train_ex),
        "val_examples": len(val_ex),
        "test_examples": len(test),
        "build": report,
        "build_seconds": build_seconds,
        "train_seconds": train_seconds,
        "epochs": metadata["epoch_history"],
        "config": {k: v for k, v in config.model_dump(mode="json").items() if k in _SHOWN},
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }


_SHOWN = ("epochs", "learning_rate", "head_learning_rate", "margin", "head", "lr_scheduler", "lora")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """`--set epochs=4 --set lora.r=32` -> {"epochs": 4, "lora": {"r": 32}} (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def print_table(results: list[dict]) -> None:
    for r in results:
        b = r["build"]
        print(
            f"- {r['dataset']}: {r['train_examples']} train / {r['val_examples']} val / {r['test_examples']} "
            f"test ({b['duplicates_dropped']} duplicates dropped, {b['dropped_as_in_test']} also in test); "
            f"val accuracy by epoch {', '.join(pct(e.get('val_accuracy')) for e in r['epochs'])}; "
            f"load average {r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} after"
        )
    print()
    print("| dataset | method | val acc | test acc | in-scope acc (OOS recall), raw score | same, softmax | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        for row in r["rows"]:
            oos = {
                rule: f"{pct(row[rule]['in_scope_accuracy'])} ({pct(row[rule]['oos_recall'])})"
                for rule in ("raw", "softmax")
                if rule in row
            }
            print(
                f"| {r['dataset']} | {row['method']} | {pct(row['val_accuracy'])} "
                f"| {pct(row['no_threshold']['accuracy'])} | {oos.get('raw', '')} | {oos.get('softmax', '')} "
                f"| {row['fit_seconds']:.0f} |"
            )
    print(
        "\nseconds: the floor's logistic-regression fit (the embeddings are the recipe's, computed "
        "once); the recipe's whole training run, the floor included."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="*", help="clinc150, hwu64 (default: both, unless --train)")
    parser.add_argument("--train", type=Path, help="your own train file (CSV text,label or JSON lines)")
    parser.add_argument("--val", type=Path, help="your own val file (default: 10 %% of train)")
    parser.add_argument("--test", type=Path, help="your own test file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a training setting, e.g. epochs=4"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if bool(args.train) != bool(args.test):
        parser.error("--train and --test go together")
    settings = parse_settings(args.set)
    jobs: list[tuple[str, tuple[Pairs, Pairs, Pairs]]] = []
    if args.train:
        train = read_pairs(args.train)
        train, val = (train, read_pairs(args.val)) if args.val else hold_out(train)
        jobs.append((args.train.stem.replace("_", "-") or "mine", (train, val, read_pairs(args.test))))
    for name in args.datasets or ([] if args.train else ["clinc150", "hwu64"]):
        jobs.append((name, load_builtin(name)))
    results = [run_one(name, splits, settings) for name, splits in jobs]
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
