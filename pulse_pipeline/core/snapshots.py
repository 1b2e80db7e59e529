"""Dataset snapshots: frozen, content-addressed, stratified and leak-free train/val/test splits.

`dataset_version` hashes the example ids and contents, the formatter/prompt version and the
split settings: the same inputs give the same version, any change gives a new one. A snapshot
is written once under `datasets/<family>/<dataset_version>/` (the manifest last, so a folder
with a manifest is complete) and never rewritten; `datasets/<family>/latest.json` points at
the newest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.examples import BuildStats, Example, formatter_version
from pulse_pipeline.core.families import FamilyConfig, SplitConfig, TaskKind
from pulse_pipeline.core.redaction import Redactor

SPLITS = ("train", "val", "test")


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()


def _targets(n: int, ratios: tuple[float, ...], behind: list[float]) -> list[int]:
    """Split n examples of one stratum: each count is floor(n * ratio) or one more, the extra
    seats going to the splits furthest behind their share overall (`behind`), so that many
    small strata do not all round in train's favour."""
    counts = [int(n * r) for r in ratios]
    for _ in range(n - sum(counts)):
        open_ = [i for i in range(len(ratios)) if counts[i] == int(n * ratios[i])]
        i = max(open_, key=lambda k: (behind[k] - counts[k], ratios[k], -k))
        counts[i] += 1
    return counts


def assign_splits(examples: list[Example], settings: SplitConfig) -> dict[str, list[Example]]:
    """Stratified by `stratum`, whole groups to one split, deterministic for a seed.

    Within a stratum, groups are visited in an order fixed by a hash of (seed, group); each
    goes to the split furthest below its target count. With one example per group, every
    stratum's split sizes are within one example of proportional, and so are the totals.
    """
    ratios = (settings.train, settings.val, settings.test)
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.group].append(ex)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        stratum = Counter(e.stratum for e in members).most_common(1)[0][0]
        by_stratum[stratum].append(name)
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    seen, placed = 0, [0, 0, 0]
    for stratum in sorted(by_stratum):
        names = sorted(by_stratum[stratum], key=lambda g: _rank(settings.seed, g))
        sizes = {g: len(groups[g]) for g in names}
        n = sum(sizes.values())
        seen += n
        targets = _targets(n, ratios, [seen * r - p for r, p in zip(ratios, placed, strict=True)])
        placed = [p + t for p, t in zip(placed, targets, strict=True)]
        have = [0, 0, 0]
        for g in names:
            i = max(range(3), key=lambda k: (targets[k] - have[k], -k))
            have[i] += sizes[g]
            out[SPLITS[i]].extend(groups[g])
    _no_empty_split(out, groups, ratios)
    _every_stratum_in_train(out, groups)
    for split in out.values():
        split.sort(key=lambda e: e.id)
    return out


def _no_empty_split(
    out: dict[str, list[Example]], groups: dict[str, list[Example]], ratios: tuple[float, ...]
) -> None:
    """Large groups can leave a small split with nothing (every call bigger than its 10 %):
    give each empty split the smallest group of the split furthest over its share, taking
    one whose strata train keeps anyway."""
    total = sum(len(m) for m in out.values())
    for i, split in enumerate(SPLITS):
        if out[split] or ratios[i] == 0:
            continue
        donors = sorted(
            (s for j, s in enumerate(SPLITS) if len({e.group for e in out[s]}) > 1),
            key=lambda s: -(len(out[s]) - total * ratios[SPLITS.index(s)]),
        )
        for donor in donors:
            strata_left = Counter(e.stratum for e in out["train"])
            candidates = sorted({e.group for e in out[donor]}, key=lambda g: (len(groups[g]), g))
            safe = [
                g for g in candidates
                if donor != "train" or all(strata_left[e.stratum] > sum(x.stratum == e.stratum for x in groups[g]) for e in groups[g])
            ]  # fmt: skip
            pick = (safe or candidates)[0]
            out[split] = list(groups[pick])
            out[donor] = [e for e in out[donor] if e.group != pick]
            break


def _every_stratum_in_train(out: dict[str, list[Example]], groups: dict[str, list[Example]]) -> None:
    """A group's stratum is its most common one, so a rare stratum (a score-impact segment in
    calls full of agent actions) can miss train: move the smallest group holding it there,
    unless that would leave its split empty."""
    in_train = {e.stratum for e in out["train"]}
    for split in ("val", "test"):
        for stratum in sorted({e.stratum for e in out[split]} - in_train):
            names = sorted(
                {e.group for e in out[split] if e.stratum == stratum}, key=lambda g: (len(groups[g]), g)
            )
            if not names or stratum in in_train:
                continue
            moved = set(names[:1])
            if all(e.group in moved for e in out[split]):
                continue  # never empty a split for it; the snapshot check reports the stratum instead
            out["train"].extend(e for e in out[split] if e.group in moved)
            out[split] = [e for e in out[split] if e.group not in moved]
            in_train |= {e.stratum for e in groups[names[0]]}


def dataset_version(family: FamilyConfig, examples: list[Example]) -> str:
    digest = hashlib.sha256()
    head = [family.name, family.task.value, formatter_version(family), family.split.model_dump()]
    digest.update(orjson.dumps(head, option=orjson.OPT_SORT_KEYS))
    for ex in sorted(examples, key=lambda e: e.id):
        digest.update(f"\n{ex.id}\x1f{ex.content_hash()}".encode())
    return digest.hexdigest()[:16]


@dataclass
class Snapshot:
    manifest: dict[str, Any]
    reused: bool

    @property
    def version(self) -> str:
        return self.manifest["dataset_version"]


def prefix(family: str, version: str) -> str:
    return f"datasets/{family}/{version}"


def latest_manifest(artifacts: ArtifactStore, family: str) -> dict[str, Any] | None:
    """The newest snapshot's manifest of a family, or None."""
    try:
        pointer = orjson.loads(artifacts.read_bytes(f"datasets/{family}/latest.json"))
    except KeyError:
        return None
    return orjson.loads(artifacts.read_bytes(f"{prefix(family, pointer['dataset_version'])}/manifest.json"))


def write_snapshot(
    artifacts: ArtifactStore,
    family: FamilyConfig,
    examples: list[Example],
    stats: BuildStats,
    *,
    now: dt.datetime | None = None,
) -> Snapshot:
    """Write the snapshot of these examples, or reuse the identical one already written."""
    version = dataset_version(family, examples)
    where = prefix(family.name, version)
    if artifacts.exists(f"{where}/manifest.json"):
        manifest = orjson.loads(artifacts.read_bytes(f"{where}/manifest.json"))
        _point_latest(artifacts, family.name, manifest)
        return Snapshot(manifest, reused=True)
    parent = latest_manifest(artifacts, family.name)
    splits = assign_splits(examples, family.split)
    for name, members in splits.items():
        artifacts.write_bytes(f"{where}/{name}.parquet", to_parquet(family, members))
    manifest = _manifest(family, version, splits, stats, parent, now or dt.datetime.now(dt.UTC))
    artifacts.write_bytes(f"{where}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    _point_latest(artifacts, family.name, manifest)
    return Snapshot(manifest, reused=False)


def _point_latest(artifacts: ArtifactStore, family: str, manifest: dict[str, Any]) -> None:
    pointer = {"dataset_version": manifest["dataset_version"], "created_at": manifest["created_at"]}
    artifacts.write_bytes(f"datasets/{family}/latest.json", orjson.dumps(pointer))


def _manifest(
    family: FamilyConfig,
    version: str,
    splits: dict[str, list[Example]],
    stats: BuildStats,
    parent: dict[str, Any] | None,
    created_at: dt.datetime,
) -> dict[str, Any]:
    def by(attr: str) -> dict[str, dict[str, int]]:
        return {
            s: dict(sorted(Counter(str(getattr(e, attr)) for e in members).items()))
            for s, members in splits.items()
        }

    manifest: dict[str, Any] = {
        "dataset_version": version,
        "family": family.name,
        "task": family.task.value,
        "parent_version": parent["dataset_version"] if parent else None,
        "created_at": created_at.isoformat(),
        "formatter_version": formatter_version(family),
        "split_settings": family.split.model_dump(),
        "watermark": {
            "seq": stats.watermark,
            "ingested_at": stats.newest_ingested_at.isoformat() if stats.newest_ingested_at else None,
        },
        "counts": {**{s: len(m) for s, m in splits.items()}, "total": sum(len(m) for m in splits.values())},
        "by_kind": by("kind"),
        "by_stratum": by("stratum"),
        "by_weight": by("weight"),
        "build": {
            "annotations_read": stats.annotations,
            "by_review_status": {str(k): n for k, n in stats.by_status.items()},
            "negatives": stats.negatives,
            "feedback_not_used": stats.feedback_not_used,
            "exact_duplicates": stats.exact_duplicates,
            "normalized_duplicates": stats.normalized_duplicates,
            "redactions": dict(stats.redactions),
            "redaction_enabled": family.redaction.enabled,
        },
        "files": {s: f"{s}.parquet" for s in SPLITS},
        "example_ids": {s: [e.id for e in m] for s, m in splits.items()},
    }
    if family.task is TaskKind.classification:
        manifest["by_label"] = by("label")
    if family.dimensions:
        manifest["dimension_names"] = list(family.dimensions)
    return manifest


def to_parquet(family: FamilyConfig, examples: list[Example]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "id": pa.array([e.id for e in examples], pa.string()),
        "kind": pa.array([e.kind for e in examples], pa.string()),
    }
    if family.task is TaskKind.chat_sft:
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        columns["messages"] = pa.array([e.messages for e in examples], pa.list_(message))
    else:
        columns["text"] = pa.array([e.text for e in examples], pa.string())
        if family.task is TaskKind.classification:
            columns["label"] = pa.array([e.label for e in examples], pa.string())
        else:
            columns["labels"] = pa.array([e.labels for e in examples], pa.list_(pa.float64()))
    columns["weight"] = pa.array([e.weight for e in examples], pa.float64())
    columns["group"] = pa.array([e.group for e in examples], pa.string())
    columns["stratum"] = pa.array([e.stratum for e in examples], pa.string())
    columns["created_at"] = pa.array([e.created_at for e in examples], pa.timestamp("us", tz="UTC"))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def from_parquet(data: bytes) -> list[Example]:
    """Examples back from `to_parquet` bytes (order kept)."""
    import pyarrow.parquet as pq

    out = []
    for row in pq.read_table(pa_buffer(data)).to_pylist():
        out.append(
            Example(
                id=row["id"], kind=row["kind"], weight=row["weight"], group=row["group"], stratum=row["stratum"],
                created_at=row["created_at"], seq=0, messages=row.get("messages"), text=row.get("text"),
                label=row.get("label"), labels=row.get("labels"),
            )
        )  # fmt: skip
    return out


def check_names(family: FamilyConfig) -> list[tuple[str, bool]]:
    """(name, blocking) of the checks `check_snapshot` returns for this family."""
    what, whats = ("label", "labels") if family.task is TaskKind.classification else ("stratum", "strata")
    return [
        ("no_empty_split", True),
        (f"every_{what}_in_train", True),
        (f"{whats}_with_enough_examples", False),
        ("no_group_leakage", True),
        ("weights_in_range", True),
        ("redaction_ran", True),
    ]


def read_split(
    artifacts: ArtifactStore, family: FamilyConfig, version: str, split: str
) -> list[dict[str, Any]]:
    """One split's examples in the contract's export shape (with `split`)."""
    import pyarrow.parquet as pq

    table = pq.read_table(pa_buffer(artifacts.read_bytes(f"{prefix(family.name, version)}/{split}.parquet")))
    out = []
    for row in table.to_pylist():
        record: dict[str, Any] = {"id": row["id"]}
        if "messages" in row:
            record["messages"] = row["messages"]
        elif "labels" in row:
            record.update(
                text=row["text"], labels=row["labels"], dimension_names=list(family.dimensions or ())
            )
        else:
            record.update(text=row["text"], label=row["label"])
        record.update(weight=row["weight"], split=split)
        out.append(record)
    return out


def pa_buffer(data: bytes) -> Any:
    import pyarrow as pa

    return pa.BufferReader(data)


# -- checks: pure functions over the written splits, wrapped as Dagster asset checks ---------


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any]
    blocking: bool = True


def check_snapshot(family: FamilyConfig, splits: dict[str, list[Example]]) -> list[CheckOutcome]:
    ratios = {"train": family.split.train, "val": family.split.val, "test": family.split.test}
    sizes = {s: len(m) for s, m in splits.items()}
    empty = [s for s in SPLITS if ratios[s] > 0 and sizes[s] == 0]
    outcomes = [
        CheckOutcome(
            "no_empty_split",
            not empty,
            f"empty: {', '.join(empty)}" if empty else "every split with a share holds examples",
            {"sizes": sizes},
        )
    ]
    train_strata = Counter(e.stratum for e in splits["train"])
    all_strata = {e.stratum for m in splits.values() for e in m}
    missing = sorted(all_strata - set(train_strata))
    what, whats = ("label", "labels") if family.task is TaskKind.classification else ("stratum", "strata")
    outcomes.append(
        CheckOutcome(
            f"every_{what}_in_train",
            not missing,
            f"not in train: {', '.join(missing[:20])}"
            if missing
            else f"every {what} of the snapshot is in train",
            {"missing": missing[:50], whats: len(all_strata)},
        )
    )
    rare = sorted(s for s, n in train_strata.items() if n < family.split.min_examples_per_label)
    outcomes.append(
        CheckOutcome(
            f"{whats}_with_enough_examples",
            not rare,
            f"{len(rare)} {what}(s) under {family.split.min_examples_per_label} train examples: {', '.join(rare[:15])}"
            if rare
            else f"every {what} has at least {family.split.min_examples_per_label} train examples",
            {"rare": rare[:50]},
            blocking=False,
        )
    )
    # Groups never span splits; for text inputs, neither does the text itself. (Chat inputs may
    # repeat across groups on purpose: the same compliance phrase in two different calls.)
    seen: dict[str, str] = {}
    leaks: set[str] = set()
    for split, members in splits.items():
        for e in members:
            keys = (e.group,) if e.messages is not None else (e.group, "text:" + (e.text or ""))
            for key in keys:
                if seen.setdefault(key, split) != split:
                    leaks.add(key)
    outcomes.append(
        CheckOutcome(
            "no_group_leakage",
            not leaks,
            f"{len(leaks)} group(s) or input text(s) in two splits"
            if leaks
            else "no group or input text spans two splits",
            {"leaks": sorted(leaks)[:20]},
        )
    )
    weights = [e.weight for m in splits.values() for e in m]
    bad = [w for w in weights if not 0 < w <= 10]
    outcomes.append(
        CheckOutcome(
            "weights_in_range",
            not bad,
            f"{len(bad)} weight(s) outside (0, 10]" if bad else "every weight is in (0, 10]",
            {"min": min(weights, default=0.0), "max": max(weights, default=0.0)},
        )
    )
    if family.redaction.enabled:
        redactor = Redactor.with_extra(family.redaction.extra_patterns)
        left = Counter(
            kind
            for m in splits.values()
            for e in m
            for text in _texts(e)
            for _, _, kind in redactor.spans(text)
        )
        outcomes.append(
            CheckOutcome(
                "redaction_ran",
                not left,
                f"PII left in examples: {dict(left)}"
                if left
                else "no e-mail, phone, card or IBAN left in any example",
                {"left": dict(left)},
            )
        )
    else:
        outcomes.append(
            CheckOutcome("redaction_ran", True, "redaction is disabled for this family in pulse.yaml", {})
        )
    return outcomes


def _texts(e: Example) -> list[str]:
    if e.messages is not None:
        return [m["content"] for m in e.messages if m["role"] != "system"]
    return [e.text or ""]
