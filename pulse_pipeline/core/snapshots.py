"""Dataset snapshots: frozen, content-addressed, stratified and leak-free train/val/test splits.

Works on the examples table of `examples.build_examples` (one row per example, sorted by id).
`dataset_version` hashes the example ids and contents, the formatter/prompt version and the
split settings: the same inputs give the same version, any change gives a new one. A snapshot
is written once under `datasets/<family>/<dataset_version>/` (the manifest last, so a folder
with a manifest is complete) and never rewritten; `datasets/<family>/latest.json` points at
the newest, with the watermark of the build that produced or reused it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.build_stats import BuildStats
from pulse_pipeline.core.examples import formatter_version, records
from pulse_pipeline.core.families import FamilyConfig, SplitConfig, TaskKind
from pulse_pipeline.core.redaction import Redactor

SPLITS = ("train", "val", "test")
CONTENT = ("id", "kind", "messages", "text", "label", "labels", "weight", "group", "stratum")


# -- splitting ---------------------------------------------------------------------------------


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


@dataclass
class _Groups:
    """Per-group facts as numpy arrays (group i = the i-th distinct group name)."""

    names: list[str]
    size: Any  # examples in the group
    major: Any  # index into `strata` of the group's most common stratum
    pair_group: Any  # (group, stratum, count) for every stratum a group holds, sorted by group
    pair_stratum: Any
    pair_count: Any
    strata: list[str]  # sorted

    def pairs_of(self, g: int) -> tuple[Any, Any]:
        """(strata, counts) of group g."""
        lo, hi = (int(x) for x in np.searchsorted(self.pair_group, [g, g + 1]))
        return self.pair_stratum[lo:hi], self.pair_count[lo:hi]


def _groups(table: Any) -> tuple[_Groups, Any]:
    """Facts about the groups, and each row's group index."""
    import pyarrow.compute as pc

    genc = pc.dictionary_encode(table["group"]).combine_chunks()
    senc = pc.dictionary_encode(table["stratum"]).combine_chunks()
    gi = genc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    strata_seen = senc.dictionary.to_pylist()
    strata = sorted(strata_seen)
    rank = np.array([strata.index(s) for s in strata_seen], dtype=np.int64)
    si = rank[senc.indices.to_numpy(zero_copy_only=False)]
    n_groups, n_strata = len(genc.dictionary), len(strata)
    keys, counts = np.unique(gi * n_strata + si, return_counts=True)
    pg, ps = keys // n_strata, keys % n_strata
    order = np.lexsort((ps, -counts, pg))  # per group: most common stratum first, ties by name
    first = order[np.r_[True, pg[order][1:] != pg[order][:-1]]]
    major = np.empty(n_groups, dtype=np.int64)
    major[pg[first]] = ps[first]
    groups = _Groups(
        genc.dictionary.to_pylist(), np.bincount(gi, minlength=n_groups), major, pg, ps, counts, strata
    )
    return groups, gi


def assign_splits(table: Any, settings: SplitConfig, previous: dict[str, str] | None = None) -> list[str]:
    """The split of each row: stratified by `stratum`, whole groups to one split, deterministic.

    Within a stratum, groups are visited in an order fixed by a hash of (seed, group); each
    goes to the split furthest below its target count. With one example per group, every
    stratum's split sizes are within one example of proportional, and so are the totals.

    `previous` (group -> split, the family's previous snapshot's) makes splits sticky as the data
    grows: a group keeps its split, and only new groups are placed, counting the kept ones. So
    what was test stays test, and a model trained on an earlier snapshot is never judged on
    examples it trained on (nor a continual run trained on earlier test examples).
    """
    if table.num_rows == 0:
        return []
    ratios = (settings.train, settings.val, settings.test)
    groups, gi = _groups(table)
    index = {name: i for i, name in enumerate(SPLITS)}
    kept = [index.get((previous or {}).get(g, ""), -1) for g in groups.names]
    kept = [k if k >= 0 and ratios[k] > 0 else -1 for k in kept]
    seed = str(settings.seed).encode() + b"\x1f"
    digest = np.array(
        [int.from_bytes(hashlib.sha256(seed + g.encode()).digest()[:8], "big") for g in groups.names],
        dtype=np.uint64,
    )
    visit = np.lexsort((digest, groups.major))  # by stratum, then by hash
    split_of = np.zeros(len(groups.names), dtype=np.int64)
    sizes, majors = groups.size[visit].tolist(), groups.major[visit].tolist()
    seen, placed, start = 0, [0, 0, 0], 0
    while start < len(visit):
        end = start
        while end < len(visit) and majors[end] == majors[start]:
            end += 1
        n = sum(sizes[start:end])
        seen += n
        targets = _targets(n, ratios, [seen * r - p for r, p in zip(ratios, placed, strict=True)])
        placed = [p + t for p, t in zip(placed, targets, strict=True)]
        t0, t1, t2 = targets
        held = [0, 0, 0]
        for k in range(start, end):
            if kept[visit[k]] >= 0:
                held[kept[visit[k]]] += sizes[k]
        h0, h1, h2 = held
        out = []
        for k in range(start, end):
            if kept[visit[k]] >= 0:
                out.append(kept[visit[k]])
                continue
            d0, d1, d2 = t0 - h0, t1 - h1, t2 - h2
            if d0 >= d1 and d0 >= d2:
                out.append(0)
                h0 += sizes[k]
            elif d1 >= d2:
                out.append(1)
                h1 += sizes[k]
            else:
                out.append(2)
                h2 += sizes[k]
        split_of[visit[start:end]] = out
        start = end
    _no_empty_split(split_of, groups, ratios)
    _every_stratum_in_train(split_of, groups)
    return np.array(SPLITS, dtype=object)[split_of[gi]].tolist()


def _no_empty_split(split_of: Any, groups: _Groups, ratios: tuple[float, ...]) -> None:
    """Large groups can leave a small split with nothing (every call bigger than its 10 %):
    give each empty split the smallest group of the split furthest over its share, taking
    one whose strata train keeps anyway."""
    total = int(groups.size.sum())
    for i in range(3):
        members = np.bincount(split_of, minlength=3)
        if ratios[i] == 0 or members[i]:
            continue
        load = np.bincount(split_of, weights=groups.size, minlength=3)
        donors = sorted((j for j in range(3) if members[j] > 1), key=lambda j: -(load[j] - total * ratios[j]))
        if not donors:
            continue
        donor = donors[0]
        candidates = _smallest_first(np.flatnonzero(split_of == donor), groups)
        spare = _first_spare(candidates, split_of, groups) if donor == 0 else None
        split_of[candidates[0] if spare is None else spare] = i


def _smallest_first(indices: Any, groups: _Groups) -> list[int]:
    return sorted(indices.tolist(), key=lambda g: (int(groups.size[g]), groups.names[g]))


def _train_strata(split_of: Any, groups: _Groups) -> Any:
    """Examples in train per stratum."""
    in_train = split_of[groups.pair_group] == 0
    counts = np.zeros(len(groups.strata), dtype=np.int64)
    np.add.at(counts, groups.pair_stratum[in_train], groups.pair_count[in_train])
    return counts


def _first_spare(candidates: list[int], split_of: Any, groups: _Groups) -> int | None:
    """The first candidate train can lose without losing a stratum."""
    in_train = _train_strata(split_of, groups)
    for g in candidates:
        strata, counts = groups.pairs_of(g)
        if np.all(in_train[strata] > counts):
            return g
    return None


def _every_stratum_in_train(split_of: Any, groups: _Groups) -> None:
    """A group's stratum is its most common one, so a rare stratum (a score-impact segment in
    calls full of agent actions) can miss train: move the smallest group holding it there. If
    that group is all its split has, a train group whose strata train keeps goes the other way."""
    for i in (1, 2):
        in_train = _train_strata(split_of, groups)
        held = np.unique(groups.pair_stratum[split_of[groups.pair_group] == i])
        for stratum in held[in_train[held] == 0].tolist():
            if _train_strata(split_of, groups)[stratum]:
                continue
            holders = groups.pair_group[(groups.pair_stratum == stratum) & (split_of[groups.pair_group] == i)]
            if len(holders) == 0:
                continue
            holder = _smallest_first(holders, groups)[0]
            if np.count_nonzero(split_of == i) == 1:
                spare = _first_spare(_smallest_first(np.flatnonzero(split_of == 0), groups), split_of, groups)
                if spare is None:
                    continue  # nothing to trade; the snapshot check reports the stratum
                split_of[spare] = i
            split_of[holder] = 0


# -- versions and files --------------------------------------------------------------------------


def dataset_version(family: FamilyConfig, table: Any, preferences: Preferences | None = None) -> str:
    """Hash of the settings that shape the examples and of every example's content, in id order;
    and of the preference data's, when a chat family's feedback made some."""
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
    if preferences is not None and not preferences.empty:
        digest.update(
            b"preferences" + orjson.dumps(family.preferences.model_dump(), option=orjson.OPT_SORT_KEYS)
        )
        for part in (preferences.dpo, preferences.kto):
            part = part.take(pc.sort_indices(part["id"]))
            for name in part.column_names:
                if name != "created_at":
                    digest.update(name.encode())
                    digest.update(orjson.dumps(part[name].to_pylist()))
    return digest.hexdigest()[:16]


@dataclass
class Preferences:
    """A chat family's preference data (core/preferences.py), written beside its snapshot."""

    dpo: Any  # Arrow: id, prompt, chosen, rejected, source, group, created_at
    kto: Any  # Arrow: id, prompt, completion, label, group, created_at
    stats: dict[str, Any]  # PreferenceStats.to_json()

    @property
    def empty(self) -> bool:
        return self.dpo.num_rows == 0 and self.kto.num_rows == 0


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


def read_manifest(artifacts: ArtifactStore, family: str, version: str) -> dict[str, Any] | None:
    """One snapshot's manifest, or None when it is not there (or not readable)."""
    try:
        return orjson.loads(artifacts.read_bytes(f"{prefix(family, version)}/manifest.json"))
    except (KeyError, orjson.JSONDecodeError):
        return None


def latest_manifest(artifacts: ArtifactStore, family: str) -> dict[str, Any] | None:
    """The newest snapshot's manifest of a family, or None.

    Its `watermark` is the latest build's: when a build reuses an older snapshot (a data fix
    brought the examples back to what they were), the store has moved on since that snapshot.
    """
    try:
        pointer = orjson.loads(artifacts.read_bytes(f"datasets/{family}/latest.json"))
    except KeyError:
        return None
    manifest = orjson.loads(
        artifacts.read_bytes(f"{prefix(family, pointer['dataset_version'])}/manifest.json")
    )
    if "watermark" in pointer:
        manifest["watermark"] = pointer["watermark"]
    return manifest


def no_examples_reason(family: FamilyConfig, stats: BuildStats) -> str:
    """Why a build gave no training example, and what to do: one line for a person.

    The usual cause is a labelled dataset ingested without annotators: its records are captures
    (model predictions), which wait in the review queue until a person reviews them."""
    from pulse_pipeline.core.triage import CAPTURE_KINDS, QUEUED

    if stats.annotations == 0:
        return f"{family.name}: no annotations yet: `pulse ingest FILE` loads annotation records"
    waiting = sum(stats.by_status.get(str(status), 0) for status in QUEUED)
    by_status = ", ".join(f"{n:,} {status}" for status, n in sorted(stats.by_status.items()))
    if waiting and not any(k in CAPTURE_KINDS for k in family.annotation_kinds):
        return (
            f"{family.name}: no trainable examples: {waiting:,} of {stats.annotations:,} records are QA pairs "
            f"generated from documents waiting for review ({by_status}); review them (`pulse review export "
            f"--family {family.name} --out tasks.json`, then `pulse review import EXPORT.json --family {family.name}`)"
        )
    if waiting:
        kinds = " or ".join(k for k in family.annotation_kinds if k in CAPTURE_KINDS) or "capture"
        return (
            f"{family.name}: no trainable examples: {waiting:,} of {stats.annotations:,} {kinds} records have "
            f"no annotator, so they wait in the review queue as captures ({by_status}); review them "
            "(`pulse review export`), or, for a labelled dataset, add `annotator` to each record or "
            "ingest it with `pulse ingest FILE --annotator NAME`"
        )
    dropped = stats.exact_duplicates + stats.normalized_duplicates
    return (
        f"{family.name}: none of its {stats.annotations:,} annotations makes a training example "
        f"({by_status}; {dropped:,} duplicates, {stats.negatives:,} low ratings without a correction, "
        f"{stats.feedback_not_used:,} ratings of 3 and above)"
    )


def write_snapshot(
    artifacts: ArtifactStore,
    family: FamilyConfig,
    table: Any,
    stats: BuildStats,
    *,
    now: dt.datetime | None = None,
    preferences: Preferences | None = None,
) -> Snapshot:
    """Write the snapshot of this examples table (and a chat family's preference data), or reuse
    the identical one already written."""
    import pyarrow as pa

    version = dataset_version(family, table, preferences)
    where = prefix(family.name, version)
    if artifacts.exists(f"{where}/manifest.json"):
        splits = assign_splits(table, family.split, _group_splits(artifacts, family.name, version))
        manifest = orjson.loads(artifacts.read_bytes(f"{where}/manifest.json"))
        newer = max(stats.watermark, manifest["watermark"]["seq"])
        manifest["watermark"] = {**manifest["watermark"], "seq": newer}
        _point_latest(artifacts, family.name, manifest)
        return Snapshot(manifest, reused=True, splits=splits)
    splits = assign_splits(table, family.split, previous_splits(artifacts, family))
    parent = latest_manifest(artifacts, family.name)
    split_col = pa.array(splits, pa.string())
    parts = {s: table.filter(pa.compute.equal(split_col, s)) for s in SPLITS}
    for name, part in parts.items():
        artifacts.write_bytes(f"{where}/{name}.parquet", to_parquet(part))
    manifest = _manifest(family, version, parts, stats, parent, now or dt.datetime.now(dt.UTC))
    if preferences is not None and not preferences.empty:
        manifest["preferences"] = _write_preferences(artifacts, where, family, table, splits, preferences)
    artifacts.write_bytes(f"{where}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    _point_latest(artifacts, family.name, manifest)
    return Snapshot(manifest, reused=False, splits=splits)


def previous_splits(artifacts: ArtifactStore, family: FamilyConfig) -> dict[str, str] | None:
    """Group -> split in the family's newest snapshot, when it was split with the same settings
    (new settings: a fresh assignment); None without one."""
    manifest = latest_manifest(artifacts, family.name)
    if manifest is None or manifest.get("split_settings") != family.split.model_dump():
        return None
    return _group_splits(artifacts, family.name, manifest["dataset_version"])


def _group_splits(artifacts: ArtifactStore, family: str, version: str) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for split in SPLITS:
        try:
            part = from_parquet(artifacts.read_bytes(f"{prefix(family, version)}/{split}.parquet"))
        except KeyError:
            return None
        out.update(dict.fromkeys(part["group"].to_pylist(), split))
    return out


def _write_preferences(
    artifacts: ArtifactStore,
    where: str,
    family: FamilyConfig,
    table: Any,
    splits: list[str],
    prefs: Preferences,
) -> dict[str, Any]:
    """Write the DPO and KTO tables, each row in its prompt group's split; their manifest entry."""
    import pyarrow as pa

    from pulse_pipeline.core.preferences import split_preferences

    split_of_group = dict(zip(table["group"].to_pylist(), splits, strict=True))
    entry: dict[str, Any] = {**prefs.stats, "files": {}, "counts": {}}
    for name, part in (("dpo", prefs.dpo), ("kto", prefs.kto)):
        split = split_preferences(part, split_of_group, family.split)
        part = part.append_column("split", pa.array(split, pa.string()))
        artifacts.write_bytes(f"{where}/preferences/{name}.parquet", to_parquet(part))
        entry["files"][name] = f"preferences/{name}.parquet"
        entry["counts"][name] = {s: split.count(s) for s in SPLITS}
    return entry


def read_preferences(artifacts: ArtifactStore, family: str, version: str, name: str) -> Any | None:
    """A snapshot's `dpo` or `kto` table (with `split`), or None when it has no preference data."""
    try:
        return from_parquet(artifacts.read_bytes(f"{prefix(family, version)}/preferences/{name}.parquet"))
    except KeyError:
        return None


def _point_latest(artifacts: ArtifactStore, family: str, manifest: dict[str, Any]) -> None:
    pointer = {
        "dataset_version": manifest["dataset_version"],
        "created_at": manifest["created_at"],
        "watermark": manifest["watermark"],
    }
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


def split_columns(artifacts: ArtifactStore, family: str, version: str, split: str, columns: list[str]) -> Any:
    """Some columns of one split (e.g. id and stratum, which the export shape leaves out), as Arrow."""
    table = from_parquet(artifacts.read_bytes(f"{prefix(family, version)}/{split}.parquet"))
    return table.select(columns)


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
