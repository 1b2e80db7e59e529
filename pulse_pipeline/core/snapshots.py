"""Dataset snapshots: frozen, content-addressed, stratified and leak-free train/val/test splits.

Works on the examples table of `examples.build_examples` (one row per example, sorted by id).
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
from pulse_pipeline.core.examples import BuildStats, formatter_version, records
from pulse_pipeline.core.families import FamilyConfig, SplitConfig, TaskKind
from pulse_pipeline.core.redaction import Redactor

SPLITS = ("train", "val", "test")
CONTENT = ("id", "kind", "messages", "text", "label", "labels", "weight", "group", "stratum")


# -- splitting ---------------------------------------------------------------------------------


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


def assign_splits(table: Any, settings: SplitConfig) -> list[str]:
    """The split of each row: stratified by `stratum`, whole groups to one split, deterministic.

    Within a stratum, groups are visited in an order fixed by a hash of (seed, group); each
    goes to the split furthest below its target count. With one example per group, every
    stratum's split sizes are within one example of proportional, and so are the totals.
    """
    import pyarrow.compute as pc

    ratios = (settings.train, settings.val, settings.test)
    # (group, stratum) -> examples, computed by Arrow; a group's stratum is its most common one.
    pairs = table.group_by(["group", "stratum"]).aggregate([([], "count_all")])
    pairs = pairs.sort_by([("group", "ascending"), ("count_all", "descending"), ("stratum", "ascending")])
    size: Counter[str] = Counter()
    strata_of: dict[str, dict[str, int]] = {}
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g, s, n in zip(
        pairs["group"].to_pylist(), pairs["stratum"].to_pylist(), pairs["count_all"].to_pylist(), strict=True
    ):
        size[g] += n
        held = strata_of.get(g)
        if held is None:
            strata_of[g] = {s: n}
            by_stratum[s].append(g)  # first row of a group: its most common stratum
        else:
            held[s] = n
    split_of: dict[str, int] = {}
    seen, placed = 0, [0, 0, 0]
    for stratum in sorted(by_stratum):
        names = sorted(by_stratum[stratum], key=lambda g: _rank(settings.seed, g))
        n = sum(size[g] for g in names)
        seen += n
        targets = _targets(n, ratios, [seen * r - p for r, p in zip(ratios, placed, strict=True)])
        placed = [p + t for p, t in zip(placed, targets, strict=True)]
        have = [0, 0, 0]
        for g in names:
            d0, d1, d2 = targets[0] - have[0], targets[1] - have[1], targets[2] - have[2]
            i = 0 if d0 >= d1 and d0 >= d2 else (1 if d1 >= d2 else 2)
            have[i] += size[g]
            split_of[g] = i
    _no_empty_split(split_of, size, strata_of, ratios)
    _every_stratum_in_train(split_of, size, strata_of)
    names = pc.unique(table["group"]).to_pylist() if table.num_rows else []
    lookup = {g: SPLITS[split_of[g]] for g in names}
    return [lookup[g] for g in table["group"].to_pylist()]


def _no_empty_split(
    split_of: dict[str, int],
    size: Counter[str],
    strata_of: dict[str, dict[str, int]],
    ratios: tuple[float, ...],
) -> None:
    """Large groups can leave a small split with nothing (every call bigger than its 10 %):
    give each empty split the smallest group of the split furthest over its share, taking
    one whose strata train keeps anyway."""
    members: list[list[str]] = [[], [], []]
    for g, i in split_of.items():
        members[i].append(g)
    total = sum(size.values())
    for i in range(3):
        if ratios[i] == 0 or members[i]:
            continue
        load = [sum(size[g] for g in members[j]) for j in range(3)]
        donors = sorted(
            (j for j in range(3) if len(members[j]) > 1), key=lambda j: -(load[j] - total * ratios[j])
        )
        if not donors:
            continue
        donor = donors[0]
        candidates = sorted(members[donor], key=lambda g: (size[g], g))
        if donor == 0:
            candidates = _spare_train_groups(candidates, members[0], strata_of) or candidates
        pick = candidates[0]
        members[donor].remove(pick)
        members[i].append(pick)
        split_of[pick] = i


def _spare_train_groups(
    candidates: list[str], train: list[str], strata_of: dict[str, dict[str, int]]
) -> list[str]:
    """The candidates train can lose without losing a stratum."""
    in_train: Counter[str] = Counter()
    for g in train:
        in_train.update(strata_of[g])
    return [g for g in candidates if all(in_train[s] > n for s, n in strata_of[g].items())]


def _every_stratum_in_train(
    split_of: dict[str, int], size: Counter[str], strata_of: dict[str, dict[str, int]]
) -> None:
    """A group's stratum is its most common one, so a rare stratum (a score-impact segment in
    calls full of agent actions) can miss train: move the smallest group holding it there. If
    that group is all its split has, a train group whose strata train keeps goes the other way."""
    members: list[list[str]] = [[], [], []]
    for g, i in split_of.items():
        members[i].append(g)
    in_train: Counter[str] = Counter()
    for g in members[0]:
        in_train.update(strata_of[g])
    for i in (1, 2):
        holders: dict[str, list[str]] = defaultdict(list)
        for g in members[i]:
            for s in strata_of[g]:
                if not in_train[s]:
                    holders[s].append(g)
        for stratum in sorted(holders):
            if in_train[stratum]:
                continue
            holder = min(
                (g for g in holders[stratum] if split_of[g] == i), key=lambda g: (size[g], g), default=None
            )
            if holder is None:
                continue
            if len(members[i]) == 1:
                spare = _spare_train_groups(
                    sorted(members[0], key=lambda g: (size[g], g)), members[0], strata_of
                )
                if not spare:
                    continue  # nothing to trade; the snapshot check reports the stratum
                members[0].remove(spare[0])
                members[i].append(spare[0])
                split_of[spare[0]] = i
                in_train.subtract(strata_of[spare[0]])
            members[i].remove(holder)
            members[0].append(holder)
            split_of[holder] = 0
            in_train.update(strata_of[holder])


# -- versions and files --------------------------------------------------------------------------


def dataset_version(family: FamilyConfig, table: Any) -> str:
    """Hash of the settings that shape the examples and of every example's content, in id order."""
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table["id"]))
    digest = hashlib.sha256()
    head = [
        family.name,
        family.task.value,
        formatter_version(family),
        family.split.model_dump(),
        table.num_rows,
    ]
    digest.update(orjson.dumps(head, option=orjson.OPT_SORT_KEYS))
    for name in CONTENT:
        if name in table.column_names:
            digest.update(name.encode())
            digest.update(orjson.dumps(table[name].to_pylist()))
    return digest.hexdigest()[:16]


@dataclass
class Snapshot:
    manifest: dict[str, Any]
    reused: bool
    splits: list[str]  # the split of each example row

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
    table: Any,
    stats: BuildStats,
    *,
    now: dt.datetime | None = None,
) -> Snapshot:
    """Write the snapshot of this examples table, or reuse the identical one already written."""
    import pyarrow as pa

    version = dataset_version(family, table)
    where = prefix(family.name, version)
    splits = assign_splits(table, family.split)
    if artifacts.exists(f"{where}/manifest.json"):
        manifest = orjson.loads(artifacts.read_bytes(f"{where}/manifest.json"))
        _point_latest(artifacts, family.name, manifest)
        return Snapshot(manifest, reused=True, splits=splits)
    parent = latest_manifest(artifacts, family.name)
    split_col = pa.array(splits, pa.string())
    parts = {s: table.filter(pa.compute.equal(split_col, s)) for s in SPLITS}
    for name, part in parts.items():
        artifacts.write_bytes(f"{where}/{name}.parquet", to_parquet(part))
    manifest = _manifest(family, version, parts, stats, parent, now or dt.datetime.now(dt.UTC))
    artifacts.write_bytes(f"{where}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    _point_latest(artifacts, family.name, manifest)
    return Snapshot(manifest, reused=False, splits=splits)


def _point_latest(artifacts: ArtifactStore, family: str, manifest: dict[str, Any]) -> None:
    pointer = {"dataset_version": manifest["dataset_version"], "created_at": manifest["created_at"]}
    artifacts.write_bytes(f"datasets/{family}/latest.json", orjson.dumps(pointer))


def _manifest(
    family: FamilyConfig,
    version: str,
    parts: dict[str, Any],
    stats: BuildStats,
    parent: dict[str, Any] | None,
    created_at: dt.datetime,
) -> dict[str, Any]:
    def by(column: str) -> dict[str, dict[str, int]]:
        out = {}
        for s, part in parts.items():
            counts = part[column].value_counts().to_pylist() if part.num_rows else []
            out[s] = {
                f"{c['values']:g}" if isinstance(c["values"], float) else str(c["values"]): c["counts"]
                for c in counts
            }
            out[s] = dict(sorted(out[s].items()))
        return out

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
        "counts": {
            **{s: p.num_rows for s, p in parts.items()},
            "total": sum(p.num_rows for p in parts.values()),
        },
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
        "example_ids": {s: p["id"].to_pylist() for s, p in parts.items()},
    }
    if family.task is TaskKind.classification:
        manifest["by_label"] = by("label")
    if family.dimensions:
        manifest["dimension_names"] = list(family.dimensions)
    return manifest


def to_parquet(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def from_parquet(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


def read_split(
    artifacts: ArtifactStore, family: FamilyConfig, version: str, split: str
) -> list[dict[str, Any]]:
    """One split's examples in the contract's export shape (with `split`)."""
    table = from_parquet(artifacts.read_bytes(f"{prefix(family.name, version)}/{split}.parquet"))
    return records(family, table, split)


# -- checks: pure functions over the written splits, wrapped as Dagster asset checks ---------


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any]
    blocking: bool = True


def check_names(family: FamilyConfig) -> list[tuple[str, bool]]:
    """(name, blocking) of the checks `check_snapshot` returns for this family."""
    what, whats = _what(family)
    return [
        ("no_empty_split", True),
        (f"every_{what}_in_train", True),
        (f"{whats}_with_enough_examples", False),
        ("no_group_leakage", True),
        ("weights_in_range", True),
        ("redaction_ran", True),
    ]


def _what(family: FamilyConfig) -> tuple[str, str]:
    return ("label", "labels") if family.task is TaskKind.classification else ("stratum", "strata")


def check_snapshot(family: FamilyConfig, table: Any, splits: list[str]) -> list[CheckOutcome]:
    import pyarrow as pa
    import pyarrow.compute as pc

    split_col = pa.array(splits, pa.string())
    ratios = {"train": family.split.train, "val": family.split.val, "test": family.split.test}
    sizes = dict(Counter(splits))
    sizes = {s: sizes.get(s, 0) for s in SPLITS}
    empty = [s for s in SPLITS if ratios[s] > 0 and sizes[s] == 0]
    outcomes = [
        CheckOutcome(
            "no_empty_split",
            not empty,
            f"empty: {', '.join(empty)}" if empty else "every split with a share holds examples",
            {"sizes": sizes},
        )
    ]
    strata = table["stratum"].to_pylist()
    train_strata = Counter(s for s, sp in zip(strata, splits, strict=True) if sp == "train")
    missing = sorted(set(strata) - set(train_strata))
    what, whats = _what(family)
    outcomes.append(
        CheckOutcome(
            f"every_{what}_in_train",
            not missing,
            f"not in train: {', '.join(missing[:20])}"
            if missing
            else f"every {what} of the snapshot is in train",
            {"missing": missing[:50], whats: len(set(strata))},
        )
    )
    least = family.split.min_examples_per_label
    rare = sorted(s for s, n in train_strata.items() if n < least)
    outcomes.append(
        CheckOutcome(
            f"{whats}_with_enough_examples",
            not rare,
            f"{len(rare)} {what}(s) under {least} train examples: {', '.join(rare[:15])}"
            if rare
            else f"every {what} has at least {least} train examples",
            {"rare": rare[:50]},
            blocking=False,
        )
    )
    # Groups never span splits; for text inputs, neither does the text itself. (Chat inputs may
    # repeat across groups on purpose: the same compliance phrase in two different calls.)
    keyed = table.select([c for c in ("group", "text") if c in table.column_names]).append_column(
        "split", split_col
    )
    leaks: list[str] = []
    for column in ("group", "text"):
        if column in keyed.column_names:
            spread = keyed.group_by(column).aggregate([("split", "count_distinct")])
            leaks += spread.filter(pc.greater(spread["split_count_distinct"], 1))[column].to_pylist()
    outcomes.append(
        CheckOutcome(
            "no_group_leakage",
            not leaks,
            f"{len(leaks)} group(s) or text(s) in two splits"
            if leaks
            else "no group or input text spans two splits",
            {"leaks": sorted(leaks)[:20]},
        )
    )
    lo = pc.min(table["weight"]).as_py() if table.num_rows else 1.0
    hi = pc.max(table["weight"]).as_py() if table.num_rows else 1.0
    in_range = lo > 0 and hi <= 10
    outcomes.append(
        CheckOutcome(
            "weights_in_range",
            in_range,
            f"weights span [{lo:g}, {hi:g}]" + ("" if in_range else ", outside (0, 10]"),
            {"min": lo, "max": hi},
        )
    )
    outcomes.append(_redaction_check(family, table))
    return outcomes


def _redaction_check(family: FamilyConfig, table: Any) -> CheckOutcome:
    import numpy as np
    import pyarrow.compute as pc

    from pulse_pipeline.core.text_examples import MAY_HOLD_PII

    if not family.redaction.enabled:
        return CheckOutcome("redaction_ran", True, "redaction is disabled for this family in pulse.yaml", {})
    if "messages" in table.column_names:
        flat = pc.list_flatten(table["messages"])
        texts = pc.struct_field(flat, "content").filter(pc.not_equal(pc.struct_field(flat, "role"), "system"))
    else:
        texts = table["text"]
    redactor = Redactor.with_extra(family.redaction.extra_patterns)
    if redactor.has_extra:
        candidates = texts.to_pylist()
    else:
        mask = pc.match_substring_regex(texts, MAY_HOLD_PII).to_numpy(zero_copy_only=False)
        candidates = [t for t, m in zip(texts.to_pylist(), mask, strict=True) if m] if np.any(mask) else []
    left = Counter(kind for text in candidates for _, _, kind in redactor.spans(text or ""))
    return CheckOutcome(
        "redaction_ran",
        not left,
        f"PII left in examples: {dict(left)}"
        if left
        else "no e-mail, phone, card or IBAN left in any example",
        {"left": dict(left), "texts_scanned": len(candidates)},
    )
