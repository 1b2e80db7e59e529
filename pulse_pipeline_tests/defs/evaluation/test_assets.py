"""`<family>/eval_report` in a real Dagster run: a chat adapter judged against the base model on
the test split and the golden set, the gate as a blocking asset check, the Markdown report as
metadata, numeric metrics as numeric metadata, and the reports in the version's eval/ folder."""

import dagster as dg
import pytest

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.registry import files
from pulse_pipeline.defs.datasets.assets import dataset_snapshot_asset, examples_asset
from pulse_pipeline.defs.evaluation.assets import GATE_CHECK, eval_report_asset
from pulse_pipeline.defs.training.assets import adapter_asset


@pytest.mark.slow
def test_eval_report_judges_the_new_adapter_and_gates_it(config, resources, tmp_path):
    fam = config.family("access-qa")
    adapter_op = dg.AssetKey(["access-qa", "adapter"]).to_python_identifier()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [
                examples_asset(fam),
                dataset_snapshot_asset(fam),
                adapter_asset(fam),
                eval_report_asset(fam, config),
            ],
            resources=resources,
            instance=instance,
            run_config={"ops": {adapter_op: {"config": {"epochs": 1, "max_samples": 24}}}},
            raise_on_error=False,
        )
    meta = result.asset_materializations_for_node("access_qa__eval_report")[0].metadata
    version = result.asset_materializations_for_node("access_qa__adapter")[0].metadata["version"].value
    assert meta["version"].value == version and meta["baseline"].value == "base_model"
    # An untrained-for-long tiny model misses the QA thresholds: FAIL, and the reason names the metric.
    assert meta["decision"].value == "FAIL"
    report = meta["report"].value
    assert version in report and "FAIL" in report and "| answer\\_accuracy |" in report  # Markdown tables
    assert isinstance(meta["test/token_f1"], dg.FloatMetadataValue)  # numeric: the UI plots its history
    assert "test/citation_presence" in meta and "test/latency_p95_seconds" in meta

    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == GATE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR and not result.success
    assert "answer_accuracy" in check.description

    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    folder = artifacts.local_path(files.key("access-qa", version)) / "eval"
    assert {p.name for p in folder.iterdir()} == {"results.json", "report.md", "report.html"}
