"""Batch labelling: refused before calibration, resumable without paying twice, capped, one at a time."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.oracle.calibration import calibrate
from pulse_pipeline.core.oracle.corpus import read_corpus
from pulse_pipeline.core.oracle.labelling import NotCalibrated, label_corpus
from pulse_pipeline.core.oracle.prompts import load_prompt
from pulse_pipeline.core.store import Store, annotations, quarantine
from pulse_pipeline.core.training.lock import TrainingLock, TrainingLocked, this_process
from pulse_pipeline.core.triage import ReviewStatus, triage
from pulse_pipeline_tests.core.oracle.climate import climate_config, write_corpus
from pulse_pipeline_tests.core.oracle.rules import RuleOracle, climate_words

COUNTS = {"on_topic": 5, "off_topic": 5, "edge": 2}


@pytest.fixture
def world(tmp_path):
    config = climate_config(tmp_path)
    family = config.family("climate")
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl", n_on=12, n_off=12, n_edge=6))
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        yield config, family, load_prompt(family), items, artifacts, store


def passed(world):
    config, family, prompt, items, artifacts, store = world
    for seed, validate in ((0, False), (1, True)):
        result = calibrate(
            family,
            prompt,
            RuleOracle(climate_words),
            items,
            artifacts,
            counts=COUNTS,
            seed=seed,
            validate=validate,
        )
        assert result.decision == "PASS"


def label(world, oracle, **kwargs):
    config, family, prompt, items, artifacts, store = world
    return label_corpus(store, artifacts, config, family, prompt, oracle, items, who="cli:test", **kwargs)


def stored(store):
    with store.connect() as conn:
        return {r.id: r for r in conn.execute(sa.select(annotations))}


def test_labelling_refuses_before_calibration_passed_and_an_override_is_recorded(world):
    config, family, prompt, items, artifacts, store = world
    oracle = RuleOracle(climate_words)
    with pytest.raises(NotCalibrated, match=(
        f"prompt version {prompt.version} of climate has not passed calibration and validation "
        r"\(calibration: not run, validation: not run\): run `pulse calibrate --family climate --input CORPUS`"
    )):  # fmt: skip
        label(world, oracle)
    assert not oracle.calls and not stored(store)
    result = label(world, oracle, override="the vendor's prompt, checked by hand")
    assert result.override == "the vendor's prompt, checked by hand" and result.labelled == len(items)
    journal = store.oracle.rows("climate", prompt.version)
    with store.connect() as conn:
        by = set(conn.execute(sa.text("select labelled_by from oracle_labels")).scalars())
    assert by == {"cli:test (override: the vendor's prompt, checked by hand)"} and len(journal) == len(items)


def test_after_calibration_every_item_becomes_an_oracle_annotation(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)
    result = label(world, RuleOracle(climate_words))
    assert (result.labelled, result.quarantined, result.remaining, result.override) == (
        len(items),
        0,
        0,
        None,
    )
    rows = stored(store)
    assert len(rows) == len(items)
    row = rows[f"oracle-{prompt.version}-on-1"]
    assert row.payload["label"] == "climate" and row.payload["source"] == "oracle"
    assert row.annotator == f"oracle:rules@{prompt.version}"
    assert triage(row.kind, row.payload, family) is ReviewStatus.oracle_labelled
    again = label(world, RuleOracle(climate_words))  # nothing left: nothing asked, nothing paid
    assert (again.labelled, again.already_done, again.cost) == (0, len(items), 0.0)


def test_an_interrupted_run_resumes_without_asking_twice(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)
    first = RuleOracle(climate_words, price_per_call=0.01, stop_after=11)
    with pytest.raises(KeyboardInterrupt):
        label(world, first)
    assert sum(first.calls.values()) == 11 and len(store.oracle.rows("climate", prompt.version)) == 11
    # the lock of the dead run is its own process's: a new run here re-enters it
    second = RuleOracle(climate_words, price_per_call=0.01)
    result = label(world, second)
    assert result.already_done == 11 and result.labelled == len(items) - 11
    assert not set(first.calls) & set(second.calls)  # no item was asked twice
    assert result.cost == pytest.approx(0.01 * (len(items) - 11))
    assert result.total_cost == pytest.approx(0.01 * len(items))
    assert len(stored(store)) == len(items)


def test_what_a_dead_run_paid_for_but_did_not_store_is_stored_on_resume(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)
    label(world, RuleOracle(climate_words))
    with store.begin() as conn:  # as if the process died between the journal and the store
        conn.execute(annotations.delete().where(annotations.c.id.like(f"oracle-{prompt.version}-off-%")))
    oracle = RuleOracle(climate_words)
    result = label(world, oracle)
    assert result.recovered == 12 and not oracle.calls and len(stored(store)) == len(items)


def test_the_cost_cap_stops_it_and_a_higher_cap_goes_on(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)
    result = label(world, RuleOracle(climate_words, price_per_call=0.25), max_cost=2.0)
    assert result.labelled == 8 and result.total_cost == pytest.approx(2.0)
    assert result.stopped == "cost cap 2 reached (spent 2)" and result.remaining == len(items) - 8
    more = label(world, RuleOracle(climate_words, price_per_call=0.25), max_cost=3.1)
    assert more.labelled == 4 and more.total_cost == pytest.approx(3.0) and more.total_cost <= 3.1


def test_unparseable_answers_are_quarantined_once_and_failed_calls_asked_again(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)

    def moody(text: str) -> str:
        return "no idea" if "Oslo" in text else "ERROR" if "Lyon" in text else climate_words(text)

    result = label(world, RuleOracle(moody))
    oslo = sum(1 for i in items if "Oslo" in i.text)
    lyon = sum(1 for i in items if "Lyon" in i.text)
    assert (result.quarantined, result.failed) == (oslo, lyon) and oslo and lyon
    assert result.first_error.startswith("HTTP 500") and result.remaining == lyon
    with store.connect() as conn:
        reasons = list(conn.execute(sa.select(quarantine.c.reason, quarantine.c.raw)))
    assert len(reasons) == oslo
    assert (
        reasons[0].reason.startswith("oracle answer for item ") and "after 3 attempt(s)" in reasons[0].reason
    )
    assert reasons[0].raw == b"no idea"
    again = RuleOracle(climate_words)
    result = label(world, again)
    assert result.labelled == lyon and all("Lyon" in t for t in again.calls)


def test_two_labellings_of_a_family_at_once_one_is_refused(world):
    config, family, prompt, items, artifacts, store = world
    passed(world)
    other = this_process("cli:someone-else")
    other = type(other)(other.who, "run-123", other.host, other.pid)  # another run, alive
    TrainingLock(store.locks).acquire("label:climate", other)
    oracle = RuleOracle(climate_words)
    with pytest.raises(
        TrainingLocked, match="^climate: a labelling is in progress since .* \\(cli:someone-else"
    ):
        label(world, oracle, lock_holder=this_process("cli:test", "run-456"))
    assert not oracle.calls
