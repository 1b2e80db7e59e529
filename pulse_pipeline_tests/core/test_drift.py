"""core.drift: the statistics on hand-made cases, the embedding cache on both artifact stores, and
reports of every task kind on both databases (with a small bag-of-words encoder; the real
minilm-l6 encoder runs in pulse_pipeline_tests/defs/automation/test_drift.py)."""

import datetime as dt
import hashlib
import math
import re

import numpy as np
import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.drift import embeddings, stats
from pulse_pipeline.core.drift.embeddings import EmbeddingCache
from pulse_pipeline.core.drift.report import build_drift_report, write_report
from pulse_pipeline.core.drift.sides import Side, in_text_order, reference_side, sample
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.registry.pointer import write_current
from pulse_pipeline.core.snapshots import write_snapshot
from pulse_pipeline.core.store import Store

NOW = dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC)

# -- statistics -----------------------------------------------------------------------------------


def test_roc_auc_counts_pairs_ordered_and_half_the_ties():
    assert stats.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert stats.roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert stats.roc_auc([0.5, 0.5, 0.5], [False, True, True]) == 0.5
    # positives 0.4 and 0.7 against negatives 0.1, 0.4, 0.9: pairs won 1 + 0.5 (tie) + 2 = 3.5 of 6
    assert stats.roc_auc([0.1, 0.4, 0.9, 0.4, 0.7], [False, False, False, True, True]) == pytest.approx(
        3.5 / 6
    )
    with pytest.raises(ValueError, match="both classes"):
        stats.roc_auc([0.1, 0.2], [True, True])


def test_psi_and_jensen_shannon_by_hand():
    assert stats.psi([5, 5], [50, 50]) == pytest.approx(0.0)
    assert stats.js_divergence([5, 5], [50, 50]) == pytest.approx(0.0)
    # Counts 10/0 against 0/10, each bin smoothed by 0.5: p = (10.5, 0.5)/11, q = (0.5, 10.5)/11.
    p, q = np.array([10.5, 0.5]) / 11, np.array([0.5, 10.5]) / 11
    assert stats.psi([10, 0], [0, 10]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    m = (p + q) / 2
    js = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    assert stats.js_divergence([10, 0], [0, 10]) == pytest.approx(float(js))
    assert stats.js_divergence([10**6, 0], [0, 10**6]) == pytest.approx(1.0, abs=1e-4)  # disjoint: 1 bit
    assert stats.psi([30, 70], [70, 30]) == pytest.approx(stats.psi([70, 30], [30, 70]))  # symmetric


def test_bins_at_reference_deciles_and_across_the_score_range():
    edges = stats.quantile_edges(np.arange(1, 101), bins=4)
    assert edges.tolist() == pytest.approx([1, 25.75, 50.5, 75.25, 100])
    assert stats.to_bins([0, 1, 25.75, 60, 100, 1000], edges).tolist() == [0, 1, 2, 3, 4, 5]
    # A constant reference: one bin for it, one below, one above (repeated edges merged).
    assert stats.to_bins([6, 7, 7, 8], stats.quantile_edges(np.full(50, 7), bins=10)).tolist() == [0, 1, 1, 2]
    assert stats.score_edges(0, 10, bins=5).tolist() == [2, 4, 6, 8]
    assert stats.to_bins([-1, 0, 3.9, 10, 11], stats.score_edges(0, 10, bins=5)).tolist() == [0, 0, 1, 4, 4]
    a, b, names = stats.categorical_bins(["x", "y", "x"], ["z", "x"])
    assert names == ["x", "y", "z"] and a.tolist() == [0, 1, 0] and b.tolist() == [2, 0]


def test_mmd_is_the_unbiased_estimate_with_the_median_kernel_width():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.3
    z = np.vstack([x, y])
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    median = np.median(d[np.triu_indices(len(z), 1)])
    k = np.exp(-d / (2 * median))
    expected = (
        (k[:12, :12].sum() - 12) / (12 * 11) + (k[12:, 12:].sum() - 9) / (9 * 8) - 2 * k[:12, 12:].mean()
    )
    result = stats.mmd_test(x, y, permutations=50, seed=1)
    assert result.mmd2 == pytest.approx(expected)
    assert result.bandwidth == pytest.approx(math.sqrt(median))
    assert stats.mmd_test(x, y, permutations=50, seed=1) == result  # seeded
    assert stats.mmd_test(np.ones((5, 2)), np.ones((4, 2))) == stats.MMDResult(0.0, 1.0, 0.0)


def test_mmd_and_domain_auc_tell_a_shift_from_the_same_distribution():
    rng = np.random.default_rng(0)
    ref, same, shifted = rng.normal(size=(150, 16)), rng.normal(size=(100, 16)), rng.normal(size=(100, 16))
    shifted[:, :4] += 1.0
    assert stats.mmd_test(ref, same).p_value > 0.05
    assert stats.mmd_test(ref, shifted).p_value == pytest.approx(1 / 201)  # no relabelling comes close
    assert abs(stats.domain_classifier_auc(ref, same) - 0.5) < 0.1
    assert stats.domain_classifier_auc(ref, shifted) > 0.9
    # Unequal sides are balanced: a few recent points, shifted, still score high.
    assert stats.domain_classifier_auc(ref, shifted[:15]) > 0.85


def test_distribution_drift_per_column_and_a_calibrated_p_value():
    rng = np.random.default_rng(1)
    same = stats.distribution_drift(rng.integers(0, 5, 300), rng.integers(0, 5, 100), 5)
    moved = stats.distribution_drift(rng.integers(0, 5, 300), rng.integers(3, 5, 100), 5)
    assert same.p_value > 0.05 and same.max_psi < 0.2
    assert moved.p_value < 0.01 and moved.max_psi > 1 and moved.max_js > 0.2
    two = stats.distribution_drift(
        np.column_stack([rng.integers(0, 4, 200), rng.integers(0, 4, 200)]),
        np.column_stack([rng.integers(0, 4, 80), np.full(80, 3)]),
        4,
    )
    assert two.psi[0] < 0.2 < two.psi[1] and two.p_value < 0.01
    # Many labels on small sides: PSI is over 0.2 by chance, but the p-value is calibrated.
    pool = np.repeat(np.arange(30), 100)
    p_values = []
    for trial in range(120):
        drawn = rng.permutation(pool)
        p_values.append(
            stats.distribution_drift(drawn[:160], drawn[160:260], 30, permutations=60, seed=trial)
        )
    assert np.mean([d.max_psi for d in p_values]) > 0.2
    assert 0.01 < np.mean([d.p_value < 0.1 for d in p_values]) < 0.2


def test_sampling_is_seeded_and_a_growing_side_keeps_most_of_its_sample():
    def side(n):
        ids = [f"a{i}" for i in range(n)]
        return Side(ids, [f"text {i}" for i in range(n)], ["x"] * n, None, None)

    small, large = sample(side(300), 100, seed=0), sample(side(330), 100, seed=0)
    assert len(small) == 100 and small == sample(side(300), 100, seed=0)
    assert len(set(small.ids) & set(large.ids)) >= 85
    assert set(sample(side(300), 100, seed=1).ids) != set(small.ids)
    assert sample(side(50), 100, seed=0) == side(50)
    ordered = in_text_order(Side(["b", "a"], ["zz", "aa"], ["1", "2"], None, ["y", "x"]))
    assert ordered == Side(["a", "b"], ["aa", "zz"], ["2", "1"], None, ["x", "y"])


# -- embeddings -----------------------------------------------------------------------------------


class BagOfWords:
    """A small deterministic encoder: hashed word counts, normalized; counts what it embeds."""

    def __init__(self, dims=64):
        self.dims, self.embedded = dims, 0

    def __call__(self, texts):
        self.embedded += len(texts)
        out = np.zeros((len(texts), self.dims), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest()[:6], 16) % self.dims] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_the_cache_embeds_only_new_or_changed_texts_and_compacts(artifacts, monkeypatch):
    cache, encode = EmbeddingCache(artifacts, "intent-router", "minilm-l6"), BagOfWords()
    ids, texts = [f"id{i}" for i in range(30)], [f"what is my balance number {i}" for i in range(30)]
    first, n = cache.embed(ids, texts, encode)
    assert n == 30 and first.shape == (30, 64)
    again, n = cache.embed(ids, texts, encode)
    assert n == 0 and np.array_equal(again, first)
    texts[3] = "book a flight to paris"  # a changed text under the same id is embedded again
    vectors, n = cache.embed([*ids, "id30"], [*texts, "new one"], encode)
    assert n == 2 and np.array_equal(vectors[3], encode(["book a flight to paris"])[0])
    assert len(artifacts.list("drift/intent-router/embeddings/minilm-l6")) == 2

    monkeypatch.setattr(embeddings, "MAX_CHUNKS", 2)  # the next chunk compacts to what this call used
    vectors, n = cache.embed(ids[:5] + ["id31"], texts[:5] + ["another"], encode)
    assert n == 1
    (kept,) = artifacts.list("drift/intent-router/embeddings/minilm-l6")
    assert kept.startswith("drift/intent-router/embeddings/minilm-l6/000001/")
    again, n = EmbeddingCache(artifacts, "intent-router", "minilm-l6").embed(
        ids[:5] + ["id31"], texts[:5] + ["another"], encode
    )
    assert n == 0 and np.array_equal(again, vectors)
    assert EmbeddingCache(artifacts, "x", "/models/my encoder").prefix.startswith(
        "drift/x/embeddings/models_my_encoder-"
    )


# -- reports --------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path):
    """A local artifact folder (S3 is covered by the cache test) for reports on one database."""
    return open_artifact_store(str(tmp_path / "artifacts"))


@pytest.fixture
def sqlite(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as s:
        yield s


def _intent(text, label, when):
    return {"kind": "intent_label", "family": "intent-router", "text": text, "label": label,
            "annotator": "r", "created_at": when.isoformat()}  # fmt: skip


def _ingest(store, config, records):
    ingest_lines(store, [orjson.dumps(r) for r in records], config, source="test")


def _snapshot(store, artifacts, family):
    table, build_stats = build_examples(store, family)
    return write_snapshot(artifacts, family, table, build_stats).version


BANKING = [("what is my {} account balance", "balance"), ("send {} dollars to my mother", "transfer")]
TRAVEL = [("book a flight to {} tomorrow", "book_flight"), ("is my {} flight delayed", "flight_status")]
CITIES = ["paris", "rome", "tokyo", "lima", "oslo", "cairo", "delhi", "quito", "seoul", "perth", "dakar",
          "hanoi", "lagos", "accra", "minsk", "kyiv", "riga", "baku", "doha", "sofia", "bern", "nice",
          "kobe", "pune", "suva", "male", "apia", "lome", "juba", "sana"]  # fmt: skip


def _utterances(templates, start, stop):
    return [
        (tpl.format(f"{CITIES[i % 30]} {i}"), label) for i in range(start, stop) for tpl, label in templates
    ]


def test_a_report_before_any_snapshot_has_nothing_to_compare(sqlite, config, local):
    store, artifacts = sqlite, local
    family = config.family("intent-router")
    _ingest(
        store, config, [_intent(t, lab, NOW - dt.timedelta(days=1)) for t, lab in _utterances(BANKING, 0, 5)]
    )
    report = build_drift_report(store, artifacts, family, BagOfWords(), now=NOW)
    assert report.status == "no_reference" and not report.crossed
    assert (
        report.message == "nothing to compare: intent-router has no dataset snapshot yet (10 recent examples)"
    )
    assert report.figures["new_annotations"] == 10
    write_report(artifacts, report)
    assert orjson.loads(artifacts.read_bytes("drift/intent-router/report.json"))["status"] == "no_reference"


def test_a_classification_report_flags_shifted_utterances_and_their_labels(store, config, local):
    artifacts = local  # `store`: on SQLite and PostgreSQL
    family = config.family("intent-router")
    old, recent = NOW - dt.timedelta(days=90), NOW - dt.timedelta(days=2)
    _ingest(store, config, [_intent(t, lab, old) for t, lab in _utterances(BANKING, 0, 40)])
    version = _snapshot(store, artifacts, family)
    # Too few recent annotations: the report says so and compares nothing.
    _ingest(store, config, [_intent(t, lab, recent) for t, lab in _utterances(TRAVEL, 0, 5)])
    encode = BagOfWords()
    report = build_drift_report(store, artifacts, family, encode, now=NOW)
    assert report.status == "too_few" and encode.embedded == 0
    assert report.message.startswith(
        "too few examples to compare: 10 recent (last 30 days) and 64 in the newest"
    )

    _ingest(store, config, [_intent(t, lab, recent) for t, lab in _utterances(TRAVEL, 5, 30)])
    report = build_drift_report(store, artifacts, family, encode, now=NOW)
    f = report.figures
    assert report.status == "compared" and report.crossed
    assert f["reference"] == {"source": "newest_snapshot", "dataset_version": version, "adapter_version": None,
                              "watermark": 80, "size": 64, "sampled": 64}  # fmt: skip
    assert f["recent"] == {"size": 60, "in_reference": 0, "sampled": 60}
    assert f["embedding"]["texts_embedded"] == 124 and f["drift_score"] > 0.95
    assert f["target"]["kind"] == "label" and f["target"]["psi"] > 2 and f["target"]["p_value"] < 0.01
    assert set(f["target"]["shares"]) == {"balance", "transfer", "book_flight", "flight_status"}
    # New annotations count from the newest trained version: none trained yet, so all 140 are new.
    assert f["new_annotations"] == 140 and f["training_watermark"] == 0
    assert report.reasons[0].startswith("drift score ") and " over 0.75 (MMD p 0.005)" in report.reasons[0]
    assert report.plot[:4] == b"\x89PNG"

    # Once a version trained on that snapshot is in production, it is the reference.
    write_current(
        artifacts, "intent-router", {"version": "intent-router-20260601-0900", "dataset_version": version}
    )
    ref = reference_side(artifacts, family)
    assert (ref.source, ref.adapter_version, ref.dataset_version) == (
        "production",
        "intent-router-20260601-0900",
        version,
    )


def test_more_of_the_same_is_no_drift(sqlite, config, local):
    store, artifacts = sqlite, local
    family = config.family("intent-router")
    _ingest(
        store,
        config,
        [_intent(t, lab, NOW - dt.timedelta(days=90)) for t, lab in _utterances(BANKING, 0, 60)],
    )
    _snapshot(store, artifacts, family)
    recent = [_intent(t, lab, NOW - dt.timedelta(days=3)) for t, lab in _utterances(BANKING, 60, 90)]
    _ingest(store, config, recent)
    report = build_drift_report(store, artifacts, family, BagOfWords(), now=NOW)
    assert report.status == "compared" and not report.crossed
    assert report.figures["drift_score"] < 0.75 and report.figures["target"]["psi"] < 0.2
    assert report.message.startswith("no drift against the newest snapshot")


def _scores(text, level, when, config):
    dims = config.family("article-scorer").dimensions
    return {"kind": "score_label", "family": "article-scorer", "text": text, "annotator": "editor",
            "scores": {d: level for d in dims}, "created_at": when.isoformat()}  # fmt: skip


def test_a_regression_report_compares_scores_per_dimension(sqlite, config, local):
    store, artifacts = sqlite, local
    family = config.family("article-scorer")
    texts = [f"an article about {c} number {i} and its history" for i, c in enumerate(CITIES * 2)]
    old, recent = NOW - dt.timedelta(days=60), NOW - dt.timedelta(days=1)
    _ingest(store, config, [_scores(t, 3 + (i % 2), old, config) for i, t in enumerate(texts)])
    _snapshot(store, artifacts, family)
    _ingest(
        store,
        config,
        [_scores(t + " revisited", 8 + (i % 2), recent, config) for i, t in enumerate(texts[:30])],
    )
    report = build_drift_report(store, artifacts, family, BagOfWords(), now=NOW)
    target = report.figures["target"]
    assert report.status == "compared" and target["kind"] == "scores"
    assert set(target["per_dimension"]) == set(family.dimensions)
    clarity = target["per_dimension"]["clarity"]
    assert clarity["mean_reference"] == pytest.approx(3.5, abs=0.1) and clarity[
        "mean_recent"
    ] == pytest.approx(8.5)
    assert target["psi"] > 1 and target["p_value"] < 0.01 and report.crossed
    assert any(r.startswith("scores PSI ") for r in report.reasons)


def test_a_chat_report_compares_the_user_prompts_and_the_answers(sqlite, config, local):
    store, artifacts = sqlite, local
    family = config.family("access-qa")
    old, recent = NOW - dt.timedelta(days=60), NOW - dt.timedelta(days=1)

    def qa(i, when, long=False):
        answer = "Use the scratch file system." + (
            " It is purged after 30 days, so copy results out." * 3 if long else ""
        )
        return {"kind": "qa_pair", "family": "access-qa", "question": f"Where do I keep files for job {i} on {CITIES[i % 30]}?",
                "answer": answer, "annotator": "staff", "created_at": when.isoformat()}  # fmt: skip

    _ingest(store, config, [qa(i, old) for i in range(50)])
    _snapshot(store, artifacts, family)
    _ingest(store, config, [qa(i, recent, long=True) for i in range(100, 130)])
    report = build_drift_report(store, artifacts, family, BagOfWords(), now=NOW)
    f = report.figures
    assert report.status == "compared" and f["target"]["kind"] == "example kind"
    assert f["target"]["psi"] < 0.01  # every example is a static qa_pair on both sides
    # The input is the user prompt alone (no system prompt): the same shape on both sides.
    assert f["length"]["mean_recent"] == pytest.approx(f["length"]["mean_reference"], abs=3)
    assert f["answer_length"]["mean_recent"] > 3 * f["answer_length"]["mean_reference"]
    assert f["answer_length"]["p_value"] < 0.01
    ref = reference_side(artifacts, family)
    assert all(t.startswith("Where do I keep files for job") for t in ref.side.texts)
