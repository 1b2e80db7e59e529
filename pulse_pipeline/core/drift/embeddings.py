"""Sentence embeddings for the drift report, and their cache in the artifact store.

`SentenceEncoder` embeds as the classification and regression heads read the encoder: mean
pooling over the tokens, L2-normalized (`core.training.heads.mean_pool`). torch and
transformers are imported when the first text is embedded.

`EmbeddingCache` keeps one vector per example id under
`drift/<family>/embeddings/<encoder>/<generation>/<chunk>.parquet` (local folder or S3), with a
hash of the text it was computed from, so a changed text is embedded again (chunks are read in
writing order: the newest vector of an id wins). Each report adds
one chunk with what it embedded; when a generation holds more than `MAX_CHUNKS` chunks, the
vectors the report used are written as the next generation and the older one is deleted, so
the cache stays the size of what the reports read.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulse_pipeline.core.artifacts import ArtifactStore

MAX_LENGTH = 256  # tokens per text: all-MiniLM-L6-v2's limit; longer inputs are truncated
BATCH = 64
MAX_CHUNKS = 16

Embed = Callable[[Sequence[str]], np.ndarray]


class SentenceEncoder:
    """Mean-pooled, normalized embeddings of a `base_model`-style encoder name ('minilm-l6', a folder)."""

    def __init__(self, name: str, models_dir: Path):
        self.name = name
        self.models_dir = models_dir
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from pulse_pipeline.core.training.base_models import resolve_base_model

        self._tokenizer, self._model = _load_encoder(resolve_base_model(self.name, self.models_dir).path)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from pulse_pipeline.core.training.heads import mean_pool

        if self._model is None:
            self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch
        out = np.zeros((len(texts), self._model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                )
                hidden = self._model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
                out[idx] = mean_pool(hidden, batch["attention_mask"]).numpy()
        return out


@functools.lru_cache(maxsize=2)
def _load_encoder(path: Path) -> tuple[Any, Any]:
    """Tokenizer and encoder of a model folder, loaded once per process (reports in one process,
    tests, reuse them)."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # no load reports or progress bars in the run log
    transformers_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=torch.float32).eval()


def text_hash(text: str) -> str:
    return hashlib.sha256(f"{MAX_LENGTH}\x1f{text}".encode()).hexdigest()[:16]


def _folder_name(encoder: str) -> str:
    """The encoder name as one path segment ('minilm-l6'; a folder or hub name gets a hash)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_.")[-48:]
    return safe if safe == encoder else f"{safe}-{hashlib.sha256(encoder.encode()).hexdigest()[:8]}"


class EmbeddingCache:
    def __init__(self, artifacts: ArtifactStore, family: str, encoder: str):
        self.artifacts = artifacts
        self.prefix = f"drift/{family}/embeddings/{_folder_name(encoder)}"

    def _generations(self) -> dict[int, list[str]]:
        chunks: dict[int, list[str]] = {}
        for key in self.artifacts.list(self.prefix):
            parts = key[len(self.prefix) + 1 :].split("/")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].endswith(".parquet"):
                chunks.setdefault(int(parts[0]), []).append(key)
        return chunks

    def _read(self, keys: list[str], wanted: set[str]) -> dict[str, tuple[str, np.ndarray]]:
        import pyarrow.compute as pc

        from pulse_pipeline.core.snapshots import from_parquet

        found: dict[str, tuple[str, np.ndarray]] = {}
        for key in keys:
            try:
                table = from_parquet(self.artifacts.read_bytes(key))
            except KeyError:  # compacted away by a concurrent report: only a cache
                continue
            table = table.filter(pc.is_in(table["id"], value_set=_strings(wanted)))
            if not table.num_rows:
                continue
            vectors = np.asarray(table["embedding"].combine_chunks().flatten().to_numpy(), np.float32)
            vectors = vectors.reshape(table.num_rows, -1)
            for i, (ident, digest) in enumerate(
                zip(table["id"].to_pylist(), table["text_hash"].to_pylist(), strict=True)
            ):
                found[ident] = (digest, vectors[i])
        return found

    def embed(self, ids: Sequence[str], texts: Sequence[str], encode: Embed) -> tuple[np.ndarray, int]:
        """Vectors for (id, text) pairs, from the cache where the text is unchanged; embeds and
        stores the rest. Returns the vectors in the order given and how many texts were embedded."""
        generations = self._generations()
        newest = max(generations, default=0)
        cached = self._read(sorted(generations.get(newest, [])), set(ids))
        digests = [text_hash(t) for t in texts]
        missing = [
            i
            for i, (ident, d) in enumerate(zip(ids, digests, strict=True))
            if cached.get(ident, ("",))[0] != d
        ]
        fresh: dict[str, tuple[str, np.ndarray]] = {}
        if missing:
            todo = {ids[i]: i for i in missing}  # one embedding per id
            vectors = encode([texts[i] for i in todo.values()])
            fresh = {ident: (digests[i], vectors[k]) for k, (ident, i) in enumerate(todo.items())}
            self._write(f"{self.prefix}/{newest:06d}/{_chunk_name()}", fresh)
        table = {**cached, **fresh}
        out = np.stack([table[ident][1] for ident in ids]) if ids else np.zeros((0, 0), np.float32)
        if len(generations.get(newest, [])) + bool(fresh) > MAX_CHUNKS:
            self._compact(newest, {ident: table[ident] for ident in ids})
        return out, len(fresh)

    def _write(self, key: str, rows: dict[str, tuple[str, np.ndarray]]) -> None:
        import pyarrow as pa

        from pulse_pipeline.core.snapshots import to_parquet

        matrix = np.stack([v for _, v in rows.values()]).astype(np.float32)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
        table = pa.table(
            {
                "id": pa.array(list(rows), pa.string()),
                "text_hash": pa.array([d for d, _ in rows.values()], pa.string()),
                "embedding": embedding,
            }
        )
        self.artifacts.write_bytes(key, to_parquet(table))

    def _compact(self, generation: int, keep: dict[str, tuple[str, np.ndarray]]) -> None:
        self._write(f"{self.prefix}/{generation + 1:06d}/{_chunk_name()}", keep)
        self.artifacts.delete_prefix(f"{self.prefix}/{generation:06d}")


def _chunk_name() -> str:
    """Names sort in writing order, so a later chunk's vector of an id wins when read."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def _strings(values: set[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())
