"""Training throughput: the recipe against a pad-to-max transformers.Trainer and TRL's SFTTrainer.

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/training_throughput.py [--models tiny,smollm2-135m,PATH] [--examples N]
        [--max-length 512] [--random-init 0.5b] [--quick] [--json]

On CPU everything trains in fp32; on CUDA in bf16 (the recipe picks its own plan: hardware.py,
shown in the table), with each method's peak GPU memory. `--models` takes built-in base models
or local Hugging Face folders; `--random-init SIZE` adds a randomly initialised Llama of that size
(`0.5b`: hidden 1024, 24 layers, 16 heads / 8 KV heads, as measured in issue 16; `tiny-test`: a
few layers, to check the script) with smollm2-135m's tokenizer and the project's ChatML template.

Each model trains one epoch of LoRA (the recipe's chat defaults: r=16, alpha=32, dropout 0.05 on
q/k/v/o/gate/up/down, micro-batches of 4, 2 accumulation steps, lr 1e-4 cosine) on the same
mixed-length chat examples, four ways, in this one process:

- recipe: `pulse_pipeline.core.training.recipe.train`, length-grouped batches padded to their
  own longest example; its training-loop time (validation and saving excluded) from the
  adapter's metadata.
- recipe, packed: the same with `packing: true`.
- pad-to-max Trainer (the original Pulse trainer): every example padded to max_length,
  `transformers.Trainer`, loss on the assistant's tokens.
- TRL SFTTrainer defaults: `messages` rows and TRL's defaults for everything but batch sizes,
  epochs, learning rate, max_length and CPU precision (so: batches padded to their longest
  example in random order, gradient checkpointing on, loss on every token, linear schedule).
- TRL SFTTrainer, padding-free: TRL at its best: `padding_free=True` (rows concatenated with
  position ids), no gradient checkpointing, bf16 on CUDA, flash attention when installed.

Throughput is real (non-padding) tokens per second; a baseline's seconds are the wall time of
`trainer.train()`. Every method first runs once on 4 examples (one optimizer step) to warm up.
"recipe speed-up" is the recipe's tokens/s over that baseline's. Targets on CPU: at least 3x the
pad-to-max Trainer, at least 1.0x TRL's SFTTrainer defaults; on CUDA (max_length 1024, the 0.5b
model): at least 2x the pad-to-max Trainer and 1.5x TRL padding-free.

The models are built once into `.pulse/bench-models` (`$PULSE_BENCH_MODELS` if set: a folder
that already holds a built `smollm2-135m` spares its conversion).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("PULSE_BENCH_MODELS") or ROOT / ".pulse" / "bench-models")
FAMILY = "access-qa"
SEED = 7
WARMUP_EXAMPLES = 4  # one micro-batch, one optimizer step
DEFAULT_EXAMPLES = {"tiny": 512, "smollm2-135m": 32, "random-init:0.5b": 768, "random-init:tiny-test": 64}
QUICK_EXAMPLES = {"tiny": 64, "smollm2-135m": 8, "random-init:0.5b": 16, "random-init:tiny-test": 16}
TARGETS = {"pad-to-max Trainer": 3.0, "TRL SFTTrainer defaults": 1.0}
CUDA_TARGETS = {"pad-to-max Trainer": 2.0, "TRL SFTTrainer, padding-free": 1.5}
# Randomly initialised Llamas by size (--random-init): hidden, layers, heads, KV heads, MLP width.
RANDOM_INIT = {"0.5b": (1024, 24, 16, 8, 4864), "tiny-test": (64, 2, 4, 2, 128)}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- data ----------------------------------------------------------------------------------------

RESOURCES = {
    "delta": ("Delta", "NCSA", 128, "256 GB", "NVIDIA A100"),
    "bridges-2": ("Bridges-2", "PSC", 128, "256 GB", "NVIDIA V100"),
    "expanse": ("Expanse", "SDSC", 128, "256 GB", "NVIDIA V100"),
    "anvil": ("Anvil", "Purdue", 128, "256 GB", "NVIDIA A100"),
    "stampede3": ("Stampede3", "TACC", 112, "128 GB", "Intel Max 1550"),
}
TOPICS = (
    "climate modeling",
    "protein folding",
    "genomics",
    "astrophysics",
    "materials science",
    "epidemiology",
)
QUESTIONS = (
    (
        "How many cores does a standard compute node on {name} have?",
        "A standard {name} node has {cores} cores.",
    ),
    ("How much memory is on a regular {name} node?", "Regular {name} nodes have {memory} of memory."),
    ("What GPUs does {name} offer?", "{name} offers {gpu} GPUs."),
    ("Which site operates {name}?", "{name} is operated by {site}."),
    ("Why did my job on {name} run out of memory?", "Your job asked for less memory than it used on {name}."),
)
# Background a user pastes before the question; this is what makes prompts long or short.
CONTEXT = (
    "I work on {topic} and our jobs run on {name} at {site}.",
    "Our allocation covers {name} and we usually request {cores} cores per job.",
    "Last week a job that needed {memory} of memory failed after {hours} hours.",
    "The batch script loads python/3.11 and the cuda module, then calls srun with {tasks} tasks per node.",
    "We also tried the {gpu} nodes, but the queue was long and the results were hard to compare.",
    "The input data is about {size} GB and lives in our project space.",
    "slurmstepd: error: Detected 1 oom_kill event in StepId={job}.batch; some of the step tasks were OOM killed.",
    "My advisor asked me to move the {topic} pipeline from our lab server to {name} before the deadline.",
)
ANSWER_DETAILS = (
    "Request memory with --mem in your batch script and check what a finished job used with seff.",
    "The {name} user guide lists the partitions and their limits.",
    "Keep large data in the project or scratch file systems rather than your home directory.",
    "If the problem persists, open a ticket through the ACCESS support portal.",
    "Start with a short test job before you submit the full run.",
)


def chat_examples(
    n: int, tokenizer: Any, system: str, max_length: int, *, seed: int = SEED
) -> list[dict[str, Any]]:
    """n QA conversations in the snapshot's export shape, lengths drawn from the seed.

    Answers get 10-80 tokens (uniform; never less than the one-sentence answer and its citation),
    user turns a log-uniform 20-450 tokens (most questions short, a few with pasted logs) or as
    many as fit in max_length beside the system prompt and the answer. Tokens are counted with
    this tokenizer, so every model sees the same length distribution.
    """
    frame = chat_length(tokenizer, conversation(system, "", ""))  # the template's and the system's tokens
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = rng.choice(sorted(RESOURCES))
        name, site, cores, memory, gpu = RESOURCES[key]
        facts = {
            "name": name,
            "site": site,
            "cores": cores,
            "memory": memory,
            "gpu": gpu,
            "topic": rng.choice(TOPICS),
            "hours": rng.randint(2, 48),
            "tasks": rng.choice((8, 16, 32, 64)),
            "size": rng.randint(5, 900),
            "job": rng.randint(100_000, 999_999),
        }
        question, answer = (s.format(**facts) for s in rng.choice(QUESTIONS))
        answer_tokens = rng.randint(10, 80)
        longest = min(450, max_length - frame - answer_tokens - 2)  # 2: slack where texts join
        user_tokens = round(math.exp(rng.uniform(math.log(20), math.log(longest))))
        citation = f" <<SRC:compute-resources:{key}>>"
        context = _text(tokenizer, rng, CONTEXT, facts, user_tokens - _count(tokenizer, question) - 1)
        details = _text(
            tokenizer, rng, ANSWER_DETAILS, facts, answer_tokens - _count(tokenizer, answer + citation) - 1
        )
        out.append(
            {
                "id": f"bench-{i}",
                "messages": conversation(
                    system, f"{context} {question}".strip(), f"{answer} {details}".strip() + citation
                ),
                "weight": 1.0 if i % 3 else 0.5,
            }
        )
    return out


def conversation(system: str, user: str, assistant: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]


def chat_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def _text(tokenizer: Any, rng: random.Random, sentences: tuple[str, ...], facts: dict, tokens: int) -> str:
    """Random sentences, cut at a word so the text is at most `tokens` tokens long."""
    words: list[str] = []
    while _count(tokenizer, " ".join(words)) < tokens:
        words += rng.choice(sentences).format(**facts).split()
    while words and _count(tokenizer, " ".join(words)) > tokens:
        words.pop()
    return " ".join(words)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- models --------------------------------------------------------------------------------------


def base_model(name: str) -> Any:
    """The built-in base model, its tokenizer given a chat template with {% generation %} tags if
    its own has none (the pad-to-max baseline's assistant masks need them; the recipe does not).

    The smollm2-135m conversion keeps SmolLM2's template, which has no such tags; the replacement
    is the same ChatML (base_models.CHAT_TEMPLATE), so conversations that start with a system
    message tokenize identically.
    """
    from transformers import AutoTokenizer

    from pulse_pipeline.core.training.base_models import CHAT_TEMPLATE, BaseModel, resolve_base_model

    base = random_init(name) if name.startswith("random-init:") else resolve_base_model(name, CACHE)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if "{% generation %}" in (tokenizer.chat_template or ""):
        return base
    folder = CACHE / f"{base.path.name}-generation-tags"
    if not (folder / "config.json").is_file():
        # The weights and model config linked, the tokenizer saved anew; whole or absent.
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=CACHE))
        for file in (
            "config.json",
            "generation_config.json",
            *(p.name for p in base.path.glob("*.safetensors")),
        ):
            if (base.path / file).exists():
                (tmp / file).symlink_to((base.path / file).resolve())
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    return BaseModel(base.name, folder, base.architecture)


def random_init(name: str) -> Any:
    """`random-init:<size>`: a randomly initialised Llama (RANDOM_INIT), saved once under the cache
    with smollm2-135m's tokenizer (its 49,152-token vocabulary) and the project's ChatML template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pulse_pipeline.core.training.base_models import CHAT_TEMPLATE, BaseModel, resolve_base_model

    size = name.split(":", 1)[1]
    folder = CACHE / f"random-init-{size}"
    if not (folder / "config.json").is_file():
        hidden, layers, heads, kv_heads, mlp = RANDOM_INIT[size]
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("smollm2-135m", CACHE).path)
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=mlp,
            max_position_embeddings=4096, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(SEED)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=CACHE))
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    return BaseModel(name, folder, "causal_lm")


def lora_config(config: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )


# -- the methods ---------------------------------------------------------------------------------


@dataclass
class Setup:
    family: Any  # FamilyConfig
    base: Any  # BaseModel
    max_length: int
    work: Path  # a temporary folder for work folders and trainer output

    def config(self, **overrides: Any) -> Any:
        from pulse_pipeline.core.training.config import resolve_training_config

        return resolve_training_config(
            "chat_sft", self.family.training, {"epochs": 1, "max_length": self.max_length, **overrides}
        )


def run_recipe(setup: Setup, examples: list[dict], *, packing: bool = False) -> tuple[int, float]:
    """Real tokens and training-loop seconds, as the recipe records them in the adapter's metadata."""
    from pulse_pipeline.core.training.recipe import TrainingJob, train

    job = TrainingJob(
        family=setup.family,
        config=setup.config(packing=packing),
        dataset_version=f"bench-{len(examples)}",
        train=examples,
        val=[],
        base_model=setup.base,
        work_root=Path(tempfile.mkdtemp(dir=setup.work)),  # a fresh folder: never resume
    )
    metadata = train(job).metadata
    tokens = metadata["train_tokens"]
    hardware = metadata["hardware"]
    if not packing:  # the plan of the "recipe" row
        RECIPE_PLAN.update(
            {
                k: hardware.get(k)
                for k in ("precision", "quantization", "attention", "batch_tokens", "packing")
            }
        )
    return tokens, tokens / metadata["tokens_per_second"]


RECIPE_PLAN: dict[str, Any] = {}  # what the recipe chose on this machine (its last run)


def run_pad_to_max(setup: Setup, examples: list[dict]) -> tuple[int, float]:
    """The original Pulse trainer: chat template, pad to max_length, loss on the assistant's tokens."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    config = setup.config()
    tokenizer = AutoTokenizer.from_pretrained(setup.base.path)
    rows = []
    for example in examples:
        out = tokenizer.apply_chat_template(
            example["messages"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            padding="max_length",
            truncation=True,
            max_length=setup.max_length,
        )
        labels = [
            t if a and m else -100
            for t, a, m in zip(out["input_ids"], out["assistant_masks"], out["attention_mask"], strict=True)
        ]
        rows.append(
            {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": labels}
        )
    tokens = sum(sum(row["attention_mask"]) for row in rows)
    set_seed(config.seed)  # the adapter's initialization, as the recipe and TRL seed theirs
    dtype = torch.bfloat16 if cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(setup.base.path, dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(model, lora_config(config))
    args = TrainingArguments(
        output_dir=str(setup.work / "pad-to-max"),
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.accumulation_steps,
        num_train_epochs=1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        report_to=[],
        save_strategy="no",
        use_cpu=not cuda(),
        bf16=cuda(),
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
    trainer.remove_callback(PrinterCallback)  # with tqdm off, it prints the final metrics
    start = time.perf_counter()
    trainer.train()
    return tokens, time.perf_counter() - start


def run_trl(setup: Setup, examples: list[dict], *, best: bool = False) -> tuple[int, float]:
    """TRL's SFTTrainer with its defaults, but for batch sizes, epochs, rate, max_length and CPU;
    `best`: padding-free rows, no gradient checkpointing, bf16 and flash attention on CUDA."""
    import importlib.util

    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    config = setup.config()
    tuned: dict[str, Any] = {"max_length": setup.max_length}
    if best:
        flash = cuda() and importlib.util.find_spec("flash_attn") is not None
        tuned = {
            "padding_free": True,  # the examples are within max_length (bench_model checks), so no cut
            "max_length": None,
            "gradient_checkpointing": False,
            "model_init_kwargs": {"attn_implementation": "flash_attention_2" if flash else "sdpa"},
        }
    args = SFTConfig(
        output_dir=str(setup.work / "trl"),
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.accumulation_steps,
        num_train_epochs=1,
        learning_rate=config.learning_rate,
        report_to=[],
        save_strategy="no",
        use_cpu=not cuda(),
        bf16=cuda() and best,
        disable_tqdm=True,
        **tuned,
    )
    trainer = SFTTrainer(
        model=str(setup.base.path),
        args=args,
        train_dataset=Dataset.from_list([{"messages": e["messages"]} for e in examples]),
        peft_config=lora_config(config),
    )
    trainer.remove_callback(PrinterCallback)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    return tokens, time.perf_counter() - start


METHODS = {
    "recipe": run_recipe,
    "recipe, packed": functools.partial(run_recipe, packing=True),
    "pad-to-max Trainer": run_pad_to_max,
    "TRL SFTTrainer defaults": run_trl,
    "TRL SFTTrainer, padding-free": functools.partial(run_trl, best=True),
}


# -- the benchmark -------------------------------------------------------------------------------


def bench_model(name: str, n: int, max_length: int, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.training.batching import length_grouped_batches, padding_share

    family = load_config(ROOT / "pulse.yaml").family(FAMILY)
    setup = Setup(family, base_model(name), max_length, work)
    tokenizer = AutoTokenizer.from_pretrained(setup.base.path)
    examples = chat_examples(n, tokenizer, family.prompts["system"], max_length)
    lengths = [chat_length(tokenizer, e["messages"]) for e in examples]
    if max(lengths) > max_length:
        raise SystemExit(f"{name}: the longest example has {max(lengths)} tokens; raise --max-length")
    config = setup.config()
    batches = length_grouped_batches(lengths, config.micro_batch_size, seed=config.seed)
    rows = []
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    targets = CUDA_TARGETS if cuda() else TARGETS
    for method, run in METHODS.items():
        run(setup, examples[:WARMUP_EXAMPLES])
        peak = PeakMemory()
        tokens, seconds = run(setup, examples)
        rows.append(
            {"model": name, "method": method, "examples": n, "real_tokens": tokens, "seconds": seconds,
             **peak.read()}
        )  # fmt: skip
    recipe = rows[0]["real_tokens"] / rows[0]["seconds"]
    for row in rows:
        row["tokens_per_s"] = row["real_tokens"] / row["seconds"]
        row["recipe_speedup"] = recipe / row["tokens_per_s"] if row["method"] in targets else None
        row["target"] = targets.get(row["method"])
    return {
        "model": name,
        "examples": n,
        "length_min": min(lengths),
        "length_median": statistics.median(lengths),
        "length_mean": round(statistics.mean(lengths), 1),
        "length_max": max(lengths),
        "padding_share_pad_to_max": 1 - sum(lengths) / (len(lengths) * max_length),
        "padding_share_recipe": padding_share(batches, lengths),
        "seconds": round(time.perf_counter() - started, 1),  # with warm-ups, loading, validation, saving
        "load_average": [load_before, os.getloadavg()[0]],  # 1-minute, before and after: others' work
        "recipe_plan": dict(RECIPE_PLAN),
        "results": rows,
    }


class PeakMemory:
    """Peak GPU memory (allocated and reserved by the caching allocator) from now on; none on CPU."""

    def __init__(self) -> None:
        if cuda():
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> dict[str, float]:
        if not cuda():
            return {}
        import torch

        return {
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }


def quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel hint on import
    warnings.filterwarnings("ignore")
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=None, help="comma-separated built-in base models or local model folders "
        "(default: tiny,smollm2-135m; none with --random-init)",
    )  # fmt: skip
    parser.add_argument(
        "--random-init", choices=sorted(RANDOM_INIT), help="also a random-init Llama of this size"
    )
    parser.add_argument("--examples", type=int, help="training examples per model (default: per model)")
    parser.add_argument("--max-length", type=int, default=512, help="max_length of every method")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small workloads, to check the script")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    quiet_libraries()
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    if os.getloadavg()[0] > 0.5:
        # Each torch op waits for all its threads: a thread that another process holds off the
        # core stalls every op, and small models slow down by an order of magnitude.
        print(
            f"warning: load average {os.getloadavg()[0]:.1f} before the run; other work skews the figures "
            "(--threads 1 suffers least)",
            file=sys.stderr,
        )
    default = "" if args.random_init else "tiny,smollm2-135m"
    models = [
        m.strip() for m in (args.models if args.models is not None else default).split(",") if m.strip()
    ]
    if args.random_init:
        models.append(f"random-init:{args.random_init}")
    sizes = QUICK_EXAMPLES if args.quick else DEFAULT_EXAMPLES
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reports = [
            bench_model(m, args.examples or sizes.get(m, 32), args.max_length, Path(tmp)) for m in models
        ]
    report = {
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": _version("trl"),
        "peft": _version("peft"),
        "total_seconds": round(time.perf_counter() - started, 1),
        "targets": CUDA_TARGETS if cuda() else TARGETS,
        "models": reports,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['device']}, max_length {args.max_length}, {report['threads']} torch threads, torch {report['torch']}, "
        f"transformers {report['transformers']}, trl {report['trl']}, peft {report['peft']}"
    )
    for r in reports:
        print(
            f"- {r['model']}: {r['examples']} examples of {r['length_min']}-{r['length_max']} tokens "
            f"(median {r['length_median']:.0f}, mean {r['length_mean']:.0f}); padding is "
            f"{r['padding_share_pad_to_max']:.0%} of pad-to-max batches, "
            f"{r['padding_share_recipe']:.0%} of the recipe's; {r['seconds'] / 60:.1f} min in all, "
            f"load average {r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} after; "
            f"the recipe's plan: {', '.join(f'{k} {v}' for k, v in r['recipe_plan'].items())}"
        )
    print()
    memory = cuda()
    print(
        "| model | method | real tokens | seconds | tokens/s | recipe speed-up |"
        + (" peak GiB (reserved) |" if memory else "")
    )
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if memory else ""))
    for r in reports:
        for row in r["results"]:
            speedup = row["recipe_speedup"]
            cell = "" if speedup is None else f"{speedup:.2f}x (target {row['target']:.1f}x)"
            peak = f" {row['peak_gib']:.2f} ({row['reserved_gib']:.1f}) |" if memory else ""
            print(
                f"| {row['model']} | {row['method']} | {row['real_tokens']:,} | {row['seconds']:.1f} | "
                f"{row['tokens_per_s']:,.0f} | {cell} |{peak}"
            )
    print(f"\nTotal {report['total_seconds'] / 60:.1f} min.")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
