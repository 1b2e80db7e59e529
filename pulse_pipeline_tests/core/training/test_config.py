import pytest
import yaml

from pulse_pipeline.core.families import ConfigError, load_config
from pulse_pipeline.core.training.config import (
    CHAT_TARGETS,
    ENCODER_TARGETS,
    TrainingConfigError,
    resolve_training_config,
)
from pulse_pipeline_tests.conftest import PROJECT


def test_chat_defaults_are_the_pulse_system_ones():
    c = resolve_training_config("chat_sft")
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules) == (16, 32, 0.05, CHAT_TARGETS)
    assert (c.epochs, c.effective_batch_size, c.learning_rate, c.lr_scheduler) == (3, 8, 1e-4, "cosine")
    assert c.accumulation_steps == 2 and c.quantization == "auto"


def test_encoder_families_target_encoder_modules():
    c = resolve_training_config("classification")
    assert c.lora.target_modules == ENCODER_TARGETS
    assert (c.learning_rate, c.head_learning_rate, c.margin, c.max_grad_norm) == (1e-3, 1e-3, 0.2, None)


def test_layers_apply_in_order_preset_family_run():
    preset = resolve_training_config("chat_sft", {"preset": "access-dense"})
    assert (preset.lora.r, preset.lora.alpha, preset.learning_rate) == (64, 128, 2e-5)
    assert preset.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    family = resolve_training_config("chat_sft", {"preset": "access-dense", "lora": {"r": 32}, "epochs": 5})
    assert (family.lora.r, family.lora.alpha, family.epochs) == (32, 128, 5)  # nested keys merge
    run = resolve_training_config("chat_sft", {"epochs": 5}, {"epochs": 1, "max_samples": 10, "seed": None})
    assert (run.epochs, run.max_samples, run.seed) == (1, 10, 42)  # None leaves a setting alone


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"preset": "fast"}, "training.preset 'fast' is not one of: pulse, access-dense"),
        ({"epoch": 2}, "training.epoch: unknown setting"),
        ({"lora": {"rank": 8}}, "training.lora.rank: unknown setting"),
        ({"quantization": "2bit"}, "training.quantization: Input should be"),
        ({"effective_batch_size": 10, "micro_batch_size": 4}, "must be a multiple of micro_batch_size 4"),
    ],
)
def test_errors_name_the_setting(settings, message):
    with pytest.raises(TrainingConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_training_config("chat_sft", settings)


def test_a_bad_training_block_names_the_family(tmp_path):
    data = yaml.safe_load((PROJECT / "pulse.yaml").read_text())
    data["families"]["intent-router"]["labels_file"] = str(PROJECT / "labels" / "intent-router.txt")
    data["families"]["access-qa"]["training"] = {"preset": "access-dense", "lora": {"alpha": 0}}
    path = tmp_path / "pulse.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"family 'access-qa'.*training\.lora\.alpha"):
        load_config(path)
