from pathlib import Path

import pytest
import yaml

from pulse_pipeline.core.families import ConfigError, TaskKind, load_config, parse_config
from pulse_pipeline_tests.conftest import PROJECT


def _base() -> dict:
    data = yaml.safe_load((PROJECT / "pulse.yaml").read_text())
    router = data["families"]["intent-router"]
    router["labels_file"] = str(PROJECT / router["labels_file"])  # the copy lives in tmp_path
    qa = data["families"]["access-qa"]["evaluation"]
    qa["sources_file"] = str(PROJECT / qa["sources_file"])
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pulse.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_declares_the_four_families_of_the_contract(config):
    assert {name: f.task for name, f in config.families.items()} == {
        "call-analysis": TaskKind.chat_sft,
        "intent-router": TaskKind.classification,
        "article-scorer": TaskKind.regression,
        "access-qa": TaskKind.chat_sft,
    }
    router = config.families["intent-router"]
    assert len(router.labels) == 151 and "oos" in router.labels  # CLINC150's 150 intents + out-of-scope
    assert len(config.families["article-scorer"].dimensions) == 8
    assert config.families["call-analysis"].snake == "call_analysis"


def test_unknown_key_names_family_and_field_with_a_suggestion(tmp_path):
    data = _base()
    data["families"]["intent-router"]["min_new_annotation"] = 5
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, data))
    msg = str(exc.value)
    assert "family 'intent-router'" in msg and "'min_new_annotation'" in msg
    assert "did you mean 'min_new_annotations'" in msg


def test_wrong_type_names_family_and_field(tmp_path):
    data = _base()
    data["families"]["article-scorer"]["min_new_annotations"] = "lots"
    with pytest.raises(ConfigError, match=r"family 'article-scorer', field 'min_new_annotations'"):
        load_config(_write(tmp_path, data))


def test_unknown_task_kind_lists_the_known_ones(tmp_path):
    data = _base()
    data["families"]["call-analysis"]["task"] = "seq2seq"
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, data))
    assert "family 'call-analysis', field 'task'" in str(exc.value)
    assert "'seq2seq'" in str(exc.value) and "chat_sft" in str(exc.value)


@pytest.mark.parametrize(
    ("family", "change", "expected"),
    [
        ("intent-router", {"annotation_kinds": ["qa_pair"]}, "cannot train a classification family"),
        ("article-scorer", {"dimensions": None}, "needs 'dimensions'"),
        ("article-scorer", {"score_range": [5, 1]}, "min < max"),
        ("call-analysis", {"labels": ["a", "b"]}, "only applies to classification"),
        ("intent-router", {"labels": ["a", "b"]}, "exactly one of 'labels' or 'labels_file'"),
        ("access-qa", {"annotation_kinds": ["feedbak"]}, "field 'annotation_kinds.0'"),
    ],
)
def test_inconsistent_family_blocks_are_refused(tmp_path, family, change, expected):
    data = _base()
    data["families"][family].update(change)
    with pytest.raises(ConfigError, match=expected) as exc:
        load_config(_write(tmp_path, data))
    assert f"family '{family}'" in str(exc.value)


def test_a_new_classification_family_needs_no_code(tmp_path):
    data = _base()
    data["families"]["ticket-router"] = {
        "task": "classification",
        "annotation_kinds": ["intent_label"],
        "base_model": "minilm-l6",
        "labels": ["billing", "outage", "other"],
    }
    config = load_config(_write(tmp_path, data))
    assert config.families["ticket-router"].label_set == {"billing", "outage", "other"}


def test_a_test_file_of_ones_own_makes_the_snapshots_train_and_val_only(tmp_path):
    data = _base()
    router = {
        "task": "classification", "annotation_kinds": ["intent_label"], "base_model": "minilm-l6",
        "labels": ["billing", "outage"], "evaluation": {"test_file": "official-test.jsonl"},
    }  # fmt: skip
    data["families"]["ticket-router"] = router
    (tmp_path / "official-test.jsonl").write_text("")
    family = load_config(_write(tmp_path, data)).families["ticket-router"]
    assert family.evaluation.test_file == (tmp_path / "official-test.jsonl").resolve()
    assert (family.split.train, family.split.val, family.split.test) == (0.9, 0.1, 0.0)
    router["split"] = {"train": 0.8, "val": 0.1, "test": 0.1}  # both: the snapshot keeps a test split too
    assert load_config(_write(tmp_path, data)).families["ticket-router"].split.test == 0.1
    del router["evaluation"]
    router["split"] = {"train": 0.9, "val": 0.1, "test": 0.0}
    with pytest.raises(ConfigError, match="split.test is 0: set evaluation.test_file"):
        load_config(_write(tmp_path, data))


def test_file_level_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("families: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML") as exc:
        load_config(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="'families' must be a non-empty mapping"):
        parse_config({"families": {}})
    with pytest.raises(ConfigError, match="labels_file"):
        parse_config(
            {
                "families": {
                    "x-y": {
                        "task": "classification",
                        "annotation_kinds": ["intent_label"],
                        "base_model": "m",
                        "labels_file": "nope.txt",
                    }
                }
            },
            base_dir=tmp_path,
        )


def test_family_lookup_names_the_declared_ones(config):
    with pytest.raises(ConfigError, match="unknown family 'nope'.*call-analysis"):
        config.family("nope")


def test_evaluation_block_resolves_golden_and_source_files_and_names_mistakes(tmp_path, config):
    qa = config.family("access-qa").evaluation
    assert qa.golden_file == PROJECT / "golden" / "access-qa.jsonl"  # found by its conventional name
    assert qa.sources_file == PROJECT / "sources" / "access-qa.json"
    assert qa.gate.absolute["answer_accuracy"].fail_below == 0.95
    data = _base()
    data["families"]["access-qa"]["evaluation"]["sources_file"] = "missing.json"
    with pytest.raises(ConfigError, match="family 'access-qa', field 'evaluation.sources_file'.*not found"):
        load_config(_write(tmp_path, data))
    data = _base()
    data["families"]["article-scorer"]["evaluation"]["gate"]["absolute"]["mae"] = {"fail_abov": 1.2}
    with pytest.raises(ConfigError, match="article-scorer.*evaluation.gate.absolute.mae.fail_abov"):
        load_config(_write(tmp_path, data))
