"""Load a base model for LoRA training (quantized or not), and load a trained adapter back.

Chat families: `AutoModelForCausalLM` with LoRA on the attention and MLP projections.
Classification and regression families: the encoder with a head (`heads.SentenceModel`),
LoRA on the encoder and the whole head trained and saved with the adapter (peft's
`modules_to_save`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core.training.base_models import BaseModel
from pulse_pipeline.core.training.config import LoraSettings, TrainingConfigError
from pulse_pipeline.core.training.hardware import Plan
from pulse_pipeline.core.training.heads import HeadConfig


def _quiet_libraries() -> None:
    """Keep the run log for what matters: no load reports of unused pooler weights, no
    bitsandbytes hint to install `kernels` (it fetches from the hub), no deprecation chatter."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def quantization_config(plan: Plan) -> Any:
    if plan.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if plan.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=plan.dtype,
    )


def load_tokenizer(path: Path | str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_training(
    base: BaseModel,
    plan: Plan,
    lora: LoraSettings,
    *,
    head: HeadConfig | None = None,
    gradient_checkpointing: bool = False,
    merge_from: Path | None = None,
) -> Any:
    """The base model in the plan's precision and quantization, wrapped with a fresh LoRA adapter;
    with `merge_from`, an adapter folder merged into the base weights first (init: merge_champion)."""
    _quiet_libraries()  # before peft imports bitsandbytes
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    quantized = plan.quantization != "none"
    # Unquantized weights stay fp32 on CPU; on GPU they load in the compute dtype (peft keeps the
    # adapter itself in fp32 and autocast does the rest).
    load_dtype = plan.dtype if plan.device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": load_dtype, "quantization_config": quantization_config(plan)}
    if quantized:
        kwargs["device_map"] = {"": torch.cuda.current_device()} if plan.device == "cuda" else {"": "cpu"}
    if head is None:
        model = AutoModelForCausalLM.from_pretrained(base.path, attn_implementation=plan.attention, **kwargs)
        task_type, modules_to_save = "CAUSAL_LM", None
        if plan.liger:  # its RMSNorm, RoPE and SwiGLU kernels; the recipe computes its own weighted loss
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(
                model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                fused_linear_cross_entropy=False,
            )  # fmt: skip
    else:
        from transformers import AutoModel

        from pulse_pipeline.core.training.heads import SentenceModel

        encoder = AutoModel.from_pretrained(base.path, add_pooling_layer=False, **kwargs)
        model = SentenceModel(encoder, head)
        task_type, modules_to_save = None, ["head"]
    if merge_from is not None:
        if quantized:
            raise TrainingConfigError(
                "training.init merge_champion merges into unquantized weights: set training.quantization: none"
            )
        from pulse_pipeline.core.training.continual import merge_into_base

        model = merge_into_base(model, merge_from)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        body = model if head is None else model.encoder
        body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        body.enable_input_require_grads()
    if not quantized and plan.data_parallel != "fsdp":  # FSDP moves each process's shard (distributed.wrap)
        model.to(plan.device)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=modules_to_save,
        task_type=task_type,
    )
    model = get_peft_model(model, config)
    model.peft_config["default"].base_model_name_or_path = str(base.path)
    return model


def restore_4bit_for_training(model: Any) -> int:
    """Undo bitsandbytes' CPU inference repacking of 4-bit weights; returns how many layers it undid.

    On CPU, the first forward pass of a 4-bit layer in eval mode without gradients repacks its
    weight into an inference-only layout. Training afterwards either raises ("a view of a leaf
    Variable ... in-place") or, in bias-free layers, silently passes zero gradient through the
    base weights, so the adapters below them stop learning. The recipe calls this whenever it
    goes back to training after validating.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    undone = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
            undone += 1
    return undone


@dataclass
class LoadedAdapter:
    model: Any  # a PeftModel in eval mode
    tokenizer: Any
    task: str  # "chat_sft", "classification" or "regression"
    head: HeadConfig | None

    def predict(
        self, texts: list[str], *, max_length: int = 256, batch_size: int = 64, raw: bool = False
    ) -> Any:
        """Encoder families: label probabilities [N, labels] (classification; with `raw`, the
        head's scores: scale x cosine similarity to each label) or scores in the family's range
        [N, dimensions] (regression), as a float32 numpy array in input order."""
        import numpy as np
        import torch

        from pulse_pipeline.core.training.batching import collate_text, length_grouped_batches, text_features

        if self.head is None:
            raise ValueError(
                "predict() is for classification and regression adapters; chat adapters generate"
            )
        features = text_features(self.tokenizer, texts, [0] * len(texts), [1.0] * len(texts), max_length)
        out = np.zeros((len(texts), len(self.head.labels or self.head.dimensions)), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for idx in length_grouped_batches([len(f) for f in features], batch_size, seed=0):
                b = collate_text([features[i] for i in idx], self.tokenizer.pad_token_id)
                y = self.model(
                    input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
                )
                if self.task == "classification":
                    y = y.float() if raw else y.float().softmax(-1)
                else:
                    lo, hi = self.head.score_range
                    y = lo + (hi - lo) * y.float()
                out[idx] = y.cpu().numpy()
        return out


def load_adapter(
    folder: Path | str, base_path: Path | str | None = None, *, device: str = "cpu"
) -> LoadedAdapter:
    """An adapter folder as `pulse train` writes it, on its base model, ready for inference."""
    import json

    _quiet_libraries()
    import torch
    from peft import PeftModel

    folder = Path(folder)
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    base_path = base_path or adapter_config["base_model_name_or_path"]
    tokenizer = load_tokenizer(folder)
    if (folder / "head_config.json").is_file():
        from pulse_pipeline.core.training.heads import build_sentence_model

        head = HeadConfig.load(folder)
        base = build_sentence_model(base_path, head)
        task = head.task
    else:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        head, task = None, "chat_sft"
    model = PeftModel.from_pretrained(base, folder).to(device)
    model.eval()
    return LoadedAdapter(model, tokenizer, task, head)
