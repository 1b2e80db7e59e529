"""Evaluation through a REAL vLLM server (the caller's `VllmServer`): the version is loaded under
`<family>@<version>`, its answers and the base model's come from the server and agree with
peft's, an adapter for another base model is answered through peft with the reason noted, and
the evaluation leaves the caller's client open either way."""

from pathlib import Path

import orjson
import pytest

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.evaluation.inference import AdapterPredictor, VllmPredictor
from pulse_pipeline.core.evaluation.runner import evaluate_version
from pulse_pipeline.core.evaluation.sets import from_snapshot
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.families import parse_config
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import files
from pulse_pipeline.core.serving import VllmServer, served_name
from pulse_pipeline.core.snapshots import write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.training.models import load_adapter
from pulse_pipeline_tests.versions import publish_files
from pulse_pipeline_tests.vllm_server import TEST_API_KEY

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("Name three colors.", "Red, green and blue."),
    ("Count to 3.", "1, 2, 3."),
    ("What is the capital of France?", "Paris."),
    ("Say hello in Spanish.", "Hola."),
    ("What is two plus two?", "Four."),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm2, vllm_server):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("vllm-eval")
    config = parse_config(
        {
            "families": {
                "support-qa": {
                    "task": "chat_sft",
                    "annotation_kinds": ["qa_pair"],
                    "base_model": str(smollm2),
                    "prompts": {"system": "Answer briefly.", "qa_pair": "{question}"},
                    "split": {"train": 0.5, "val": 0.1, "test": 0.4},
                    "evaluation": {"max_new_tokens": 12, "gate": {"change": {"resamples": 100}}},
                }
            }
        }
    )
    family = config.family("support-qa")
    records = [
        {"kind": "qa_pair", "family": "support-qa", "question": f"{q} ({i})", "answer": a, "annotator": "t"}
        for i in range(4)
        for q, a in QUESTIONS
    ]
    (tmp / "qa.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with Store(f"sqlite:///{tmp / 'pulse.db'}") as store:
        ingest_file(store, tmp / "qa.jsonl", config)
        table, stats = build_examples(store, family)
    artifacts = LocalArtifactStore(tmp / "artifacts")
    dataset = write_snapshot(artifacts, family, table, stats).version

    folder = tmp / "adapter"  # random non-zero LoRA weights: answers differ from the base model's
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, lora).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(folder)
    version = publish_files(
        artifacts, family.name, folder, {"dataset_version": dataset, "base_model": "smollm2"}
    )
    return config, family, artifacts, dataset, version, tmp


def test_answers_come_from_the_server_and_agree_with_peft(world, vllm_server):
    config, family, artifacts, dataset, version, tmp = world
    folder = artifacts.local_path(files.key(family.name, version))
    examples = from_snapshot(family, artifacts, dataset, "test").examples
    assert len(examples) >= 6
    with VllmServer(vllm_server.url, api_key=TEST_API_KEY) as server:
        remote = VllmPredictor(server, served_name(family.name, version), folder, max_new_tokens=12)
        local = AdapterPredictor(load_adapter(folder), max_new_tokens=12)
        vllm_adapter, vllm_base = remote.predict(examples), remote.predict(examples, use_adapter=False)
        peft_adapter, peft_base = local.predict(examples), local.predict(examples, use_adapter=False)
        assert server.adapters()[served_name(family.name, version)] == str(folder)
    assert vllm_base.outputs == peft_base.outputs  # greedy float32: the same text
    same = sum(a == b for a, b in zip(vllm_adapter.outputs, peft_adapter.outputs, strict=True))
    assert same >= 0.75 * len(examples), list(zip(vllm_adapter.outputs, peft_adapter.outputs, strict=True))
    assert vllm_adapter.outputs != vllm_base.outputs  # the adapter was applied, not ignored
    assert all(s > 0 for s in vllm_adapter.latencies)  # each request's own wall time

    with VllmServer(vllm_server.url, api_key=TEST_API_KEY) as server:
        judged = evaluate_version(family, config, artifacts, home=tmp / "home", version=version, vllm=server)
        assert server.base_model()  # still open: the caller closes it, not the evaluation
    assert judged.results["inference"] == f"vLLM server at {vllm_server.url}"
    assert (
        judged.results["baseline"]["kind"] == "base_model" and judged.results["metrics"]["test"]["candidate"]
    )
    assert "vLLM server at" in judged.markdown


def test_an_adapter_for_another_base_model_is_answered_through_peft(world, vllm_server, tmp_path):
    config, family, artifacts, dataset, version, tmp = world
    folder = artifacts.local_path(files.key(family.name, version))
    adapter_config = orjson.loads((folder / "adapter_config.json").read_bytes())
    moved = tmp_path / "elsewhere" / "other-base"
    moved.parent.mkdir()
    moved.symlink_to(Path(adapter_config["base_model_name_or_path"]))
    store = LocalArtifactStore(tmp_path / "artifacts")
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(folder, copy)
    adapter_config["base_model_name_or_path"] = str(moved)  # same weights, a name the server does not serve
    (copy / "adapter_config.json").write_bytes(orjson.dumps(adapter_config))
    for split in ("train", "val", "test", "manifest"):
        name = f"{split}.parquet" if split != "manifest" else "manifest.json"
        key = f"datasets/{family.name}/{dataset}/{name}"
        store.write_bytes(key, artifacts.read_bytes(key))
    (copy / "training_metadata.json").unlink()
    other = publish_files(store, family.name, copy, {"dataset_version": dataset, "base_model": "other"})
    with VllmServer(vllm_server.url, api_key=TEST_API_KEY) as server:
        judged = evaluate_version(family, config, store, home=tmp_path / "home", version=other, vllm=server)
        assert server.base_model()  # not closed though it was not used
    assert judged.results["inference"] == "peft on this machine"
    (note,) = [s for s in judged.results["skipped"] if s["what"] == "vllm"]
    assert "this adapter is for" in note["reason"] and "answered through peft instead" in note["reason"]
