"""The benchmark scripts run as their README says (benchmarks are not tests: this checks that
they run and report, not their figures)."""

import json
import subprocess
import sys

import pytest

from pulse_pipeline_tests.conftest import PROJECT


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_throughput_benchmark_runs_on_a_random_init_model(pulse_env, smollm2, tmp_path, monkeypatch):
    cache = tmp_path / "bench-models"  # the session's smollm2-135m: its tokenizer, not converted again
    cache.mkdir()
    (cache / "smollm2-135m").symlink_to(smollm2)
    monkeypatch.setenv("PULSE_BENCH_MODELS", str(cache))
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/training_throughput.py",
            "--random-init",
            "tiny-test",
            "--quick",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    (model,) = report["models"]
    assert model["model"] == "random-init:tiny-test" and report["device"] == "cpu"
    methods = [row["method"] for row in model["results"]]
    assert methods == [
        "recipe", "recipe, packed", "pad-to-max Trainer", "TRL SFTTrainer defaults", "TRL SFTTrainer, padding-free",
    ]  # fmt: skip
    assert len({row["real_tokens"] for row in model["results"]}) == 1  # every method trains the same tokens
    assert model["recipe_plan"] == {
        "precision": "fp32", "quantization": "none", "attention": "sdpa", "batch_tokens": None, "packing": False,
    }  # fmt: skip
    assert report["targets"] == {"pad-to-max Trainer": 3.0, "TRL SFTTrainer defaults": 1.0}
