import datetime as dt
import json
import subprocess
import sys
from collections import Counter

import pytest

from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_file, ingest_lines
from pulse_pipeline.core.snapshots import (
    assign_splits,
    check_names,
    check_snapshot,
    dataset_version,
    latest_manifest,
    read_split,
    write_snapshot,
)
from pulse_pipeline.core.store import Store
from pulse_pipeline.demo.data import DemoScale, write_demo_file
from pulse_pipeline_tests.conftest import CLINC150, PROJECT

ANCHOR = dt.date(2026, 6, 30)


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "demo.jsonl"
    write_demo_file(path, anchor=ANCHOR, scale=DemoScale().scaled(0.3))
    return path


def version_of(url, config, family):
    with Store(url) as store:
        table, _ = build_examples(store, config.family(family))
    return dataset_version(config.family(family), table)


@pytest.mark.parametrize("family", ["call-analysis", "intent-router", "article-scorer", "access-qa"])
def test_same_annotations_same_version_on_both_databases_and_in_a_new_process(
    config, postgres, tmp_path, demo_path, family
):
    sqlite_url, pg_url = f"sqlite:///{tmp_path / 'a.db'}", postgres.create_database()
    for url in (sqlite_url, pg_url):
        with Store(url) as store:
            ingest_file(store, demo_path, config)
    v = version_of(sqlite_url, config, family)
    assert v == version_of(pg_url, config, family)
    code = (
        "from pulse_pipeline.core.families import load_config;"
        "from pulse_pipeline_tests.core.test_snapshots import version_of;"
        f"print(version_of({pg_url!r}, load_config({str(PROJECT / 'pulse.yaml')!r}), {family!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT
    )
    assert out.stdout.strip() == v


def test_one_changed_annotation_gives_a_new_version(config, tmp_path, demo_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with Store(url) as store:
        ingest_file(store, demo_path, config)
        before = version_of(url, config, "access-qa")
        ingest_lines(
            store,
            [b'{"kind":"qa_pair","family":"access-qa","question":"new?","answer":"yes","annotator":"x"}'],
            config,
            source="t",
        )
    assert version_of(url, config, "access-qa") != before
    assert version_of(url, config, "intent-router") == version_of(url, config, "intent-router")


def test_split_settings_are_part_of_the_version(config, tmp_path, demo_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with Store(url) as store:
        ingest_file(store, demo_path, config)
        family = config.family("article-scorer")
        table, _ = build_examples(store, family)
    other = family.model_copy(update={"split": family.split.model_copy(update={"seed": 99})})
    assert dataset_version(family, table) != dataset_version(other, table)


@pytest.mark.skipif(not CLINC150.is_dir(), reason="../shared/data/clinc150 is not beside the project")
def test_clinc150_splits_are_proportional_per_intent_and_leak_free(config, tmp_path):
    data = json.loads((CLINC150 / "data_full.json").read_text())
    lines = [
        json.dumps(
            {
                "kind": "intent_label",
                "family": "intent-router",
                "text": t,
                "label": label,
                "annotator": "clinc",
            }
        ).encode()
        for t, label in data["train"] + data["oos_train"]
    ]
    family = config.family("intent-router")
    with Store(f"sqlite:///{tmp_path / 'c.db'}") as store:
        ingest_lines(store, lines, config, source="clinc150")
        table, _ = build_examples(store, family)
    splits = assign_splits(table, family.split)
    labels, texts = table["label"].to_pylist(), table["text"].to_pylist()
    total = Counter(labels)
    assert len(total) == 151
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        got = Counter(label for label, s in zip(labels, splits) if s == split)
        worst = max(abs(got[label] - n * ratio) for label, n in total.items())
        assert worst <= 1, (split, worst)
    where = {}
    for text, split in zip(texts, splits):
        assert where.setdefault(text, split) == split
    assert all(c.passed for c in check_snapshot(family, table, splits) if c.blocking)


def test_splits_are_sticky_as_the_data_grows(config, tmp_path, artifacts):
    """New intents and more utterances of the old ones arrive: every example of the first snapshot
    keeps its split in the second (what was test stays test: a model of the first snapshot is
    never judged on what it trained on), and the new ones still split in proportion per intent."""
    data = json.loads((CLINC150 / "data_full.json").read_text())["train"]
    intents = sorted({label for _, label in data})
    first_intents, later_intents = set(intents[:20]), set(intents[20:40])

    def lines(pairs, day):
        return [
            json.dumps({"kind": "intent_label", "family": "intent-router", "text": t, "label": y,
                        "annotator": "clinc", "created_at": f"2026-0{day}-01T00:00:00Z"}).encode()
            for t, y in pairs
        ]  # fmt: skip

    family = config.family("intent-router")
    first = [(t, y) for t, y in data if y in first_intents][::2]  # half of the old intents' utterances
    later = [(t, y) for t, y in data if y in later_intents] + [(t, y) for t, y in data if y in first_intents][1::2]
    with Store(f"sqlite:///{tmp_path / 'c.db'}") as store:
        ingest_lines(store, lines(first, 1), config, source="january")
        v1 = write_snapshot(artifacts, family, *build_examples(store, family)).version
        ingest_lines(store, lines(later, 2), config, source="february")
        table, stats = build_examples(store, family)
        v2 = write_snapshot(artifacts, family, table, stats).version
    before = {e["id"]: s for s in ("train", "val", "test") for e in read_split(artifacts, family, v1, s)}
    after = {e["id"]: s for s in ("train", "val", "test") for e in read_split(artifacts, family, v2, s)}
    kept = [i for i in before if i in after]  # (a later duplicate of an utterance replaces it)
    assert len(kept) >= len(before) - 2 and all(after[i] == before[i] for i in kept)
    labels = dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))
    total = Counter(labels.values())
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        got = Counter(labels[i] for i, s in after.items() if s == split)
        assert max(abs(got[label] - n * ratio) for label, n in total.items()) <= 1.5, split
    # a fresh assignment (as without a previous snapshot) would have moved some
    fresh = dict(zip(table["id"].to_pylist(), assign_splits(table, family.split)))
    assert any(fresh[i] != before[i] for i in kept)


def test_groups_never_span_two_splits(config, tmp_path, demo_path):
    with Store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        ingest_file(store, demo_path, config)
        family = config.family("call-analysis")
        table, _ = build_examples(store, family)
    splits = assign_splits(table, family.split)
    where = {}
    for group, split in zip(table["group"].to_pylist(), splits):
        assert where.setdefault(group, split) == split
    assert len(where) > 10 and set(splits) == {"train", "val", "test"}


def test_snapshot_round_trip_and_reuse(config, tmp_path, demo_path, artifacts):
    with Store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        ingest_file(store, demo_path, config)
        family = config.family("intent-router")
        table, stats = build_examples(store, family)
    first = write_snapshot(artifacts, family, table, stats)
    again = write_snapshot(artifacts, family, table, stats)
    assert not first.reused and again.reused and again.manifest == first.manifest
    m = first.manifest
    assert m["counts"]["total"] == table.num_rows == sum(m["counts"][s] for s in ("train", "val", "test"))
    assert m["parent_version"] is None and m["watermark"]["seq"] == stats.watermark
    assert m["build"]["by_review_status"]["needs_review"] > 0
    assert latest_manifest(artifacts, "intent-router")["dataset_version"] == first.version
    rows = read_split(artifacts, family, first.version, "test")
    assert len(rows) == m["counts"]["test"] and [r["id"] for r in rows] == m["example_ids"]["test"]
    assert set(rows[0]) == {"id", "text", "label", "weight", "split"} and rows[0]["split"] == "test"
    assert sorted(artifacts.list(f"datasets/intent-router/{first.version}")) == [
        f"datasets/intent-router/{first.version}/{n}"
        for n in ("manifest.json", "test.parquet", "train.parquet", "val.parquet")
    ]


def test_chat_snapshot_parquet_keeps_messages(config, tmp_path, demo_path, artifacts):
    with Store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        ingest_file(store, demo_path, config)
        family = config.family("call-analysis")
        table, stats = build_examples(store, family)
    snap = write_snapshot(artifacts, family, table, stats)
    rows = read_split(artifacts, family, snap.version, "train")
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert snap.manifest["by_weight"]["train"].keys() <= {"0.5", "1"}


def test_checks_catch_a_leak_and_a_label_missing_from_train(config, tmp_path, demo_path):
    with Store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        ingest_file(store, demo_path, config)
        family = config.family("call-analysis")
        table, _ = build_examples(store, family)
    splits = assign_splits(table, family.split)
    outcomes = {c.name: c for c in check_snapshot(family, table, splits)}
    assert (
        set(outcomes)
        == {name for name, _ in check_names(family)}
        == {
            "no_empty_split",
            "every_stratum_in_train",
            "strata_with_enough_examples",  # advisory: flags, does not block
            "no_group_leakage",
            "weights_in_range",
            "redaction_ran",
        }
    )
    assert all(c.passed for c in outcomes.values() if c.blocking)
    assert not outcomes["strata_with_enough_examples"].blocking
    groups = table["group"].to_pylist()
    big = next(g for g in groups if groups.count(g) > 1 and splits[groups.index(g)] == "train")
    leaked = list(splits)
    leaked[len(groups) - 1 - groups[::-1].index(big)] = "test"  # one example of a train call moves to test
    assert not {c.name: c for c in check_snapshot(family, table, leaked)}["no_group_leakage"].passed
    strata = table["stratum"].to_pylist()
    moved = ["test" if s == "score_impact" else sp for s, sp in zip(strata, splits)]
    assert not {c.name: c for c in check_snapshot(family, table, moved)}["every_stratum_in_train"].passed


def test_many_tiny_strata_still_fill_every_split(config):
    import pyarrow as pa

    n = 300
    table = pa.table({"group": [f"g{i}" for i in range(n)], "stratum": [f"label{i % 150}" for i in range(n)]})
    splits = assign_splits(table, config.family("intent-router").split)
    sizes = Counter(splits)
    assert abs(sizes["train"] - 240) <= 1 and abs(sizes["val"] - 30) <= 1 and abs(sizes["test"] - 30) <= 1, (
        sizes
    )
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        per = Counter(s for s, sp in zip(table["stratum"].to_pylist(), splits) if sp == split)
        assert all(abs(per[f"label{k}"] - 2 * ratio) <= 1 for k in range(150))
    reversed_table = table.take(list(range(n - 1, -1, -1)))
    assert list(reversed(assign_splits(reversed_table, config.family("intent-router").split))) == splits


def test_no_split_is_left_empty_by_large_groups(config):
    import pyarrow as pa

    # 11 calls of 2-7 segments: 10 % of the examples is smaller than most calls
    sizes = [2, 4, 4, 4, 5, 6, 6, 6, 6, 6, 7]
    groups = [f"call{i}" for i, n in enumerate(sizes) for _ in range(n)]
    table = pa.table(
        {
            "group": groups,
            "stratum": ["agent_action" if i % 4 else "compliance_flag" for i in range(len(groups))],
        }
    )
    assert set(assign_splits(table, config.family("call-analysis").split)) == {"train", "val", "test"}


def test_no_examples_reason_names_the_cause_and_the_remedy(config):
    from pulse_pipeline.core.build_stats import BuildStats
    from pulse_pipeline.core.snapshots import no_examples_reason

    family = config.family("intent-router")
    assert no_examples_reason(family, BuildStats()) == (
        "intent-router: no annotations yet: `pulse ingest FILE` loads annotation records"
    )
    waiting = BuildStats(annotations=10_003, by_status=Counter(needs_review=10_000, priority_review=3))
    assert no_examples_reason(family, waiting).startswith(
        "intent-router: no trainable examples: 10,003 of 10,003 intent_label records have no annotator, so "
        "they wait in the review queue as captures (10,000 needs_review, 3 priority_review)"
    )
    dropped = BuildStats(annotations=4, by_status=Counter(human_reviewed=4), negatives=4)
    assert "4 low ratings without a correction" in no_examples_reason(config.family("access-qa"), dropped)
