"""Replay: what a continual run trains on: the examples that are new since its start was trained,
mixed with a share of the earlier ones.

A run with `init: champion` or `merge_champion` and `training.replay: r` (config.py) trains on
the snapshot's train examples that were not in the train split of the snapshot its start was
trained on ("new"), plus earlier examples drawn so that they are a share `r` of what is trained
on ("replayed"; as many as there are, at most). The earlier examples are read from the current
snapshot (those whose id was in the old train split), so a data fix or a deletion since then
holds for replay too. They are drawn stratified by the snapshot's strata (the label, for intent
families): each stratum gives its share of the replayed examples, in an order fixed by a seeded
hash of the id, so the same run draws the same examples in every process and on every retry.

`replay: 0` is continual training without replay (new examples only); the default, null, trains
on the whole train split as a fresh run does. The adapter's metadata records the mix (`replay`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReplayMix:
    examples: list[dict[str, Any]]  # what is trained on: the new examples, then the replayed ones
    record: dict[str, Any]  # for the metadata: counts, share, where the earlier examples came from


def replay_mix(
    train: list[dict[str, Any]],
    strata: dict[str, str],
    earlier_ids: set[str],
    share: float,
    *,
    seed: int,
    earlier_version: str,
) -> ReplayMix:
    """The new examples of `train` (ids not in `earlier_ids`) and a stratified draw of the earlier
    ones, `share` of the mix. `strata`: each example id's stratum in the snapshot."""
    new = [x for x in train if x["id"] not in earlier_ids]
    earlier = [x for x in train if x["id"] in earlier_ids]
    wanted = len(earlier) if share >= 1 else round(len(new) * share / (1 - share))
    wanted = min(wanted, len(earlier))
    by_stratum: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in earlier:
        by_stratum[strata.get(x["id"], "")].append(x)
    quota = _largest_remainder({s: len(xs) for s, xs in by_stratum.items()}, wanted)
    salt = f"{seed}\x1freplay\x1f".encode()
    replayed = []
    for stratum in sorted(by_stratum):
        ranked = sorted(by_stratum[stratum], key=lambda x: hashlib.sha256(salt + x["id"].encode()).digest())
        replayed.extend(ranked[: quota[stratum]])
    replayed.sort(key=lambda x: x["id"])
    record = {
        "share": share,
        "earlier_snapshot": earlier_version,
        "new_examples": len(new),
        "earlier_examples": len(earlier),
        "replayed_examples": len(replayed),
        "replayed_share": round(len(replayed) / (len(new) + len(replayed)), 4) if new or replayed else 0.0,
        "strata_replayed": len([s for s, n in quota.items() if n]),
    }
    return ReplayMix(new + replayed, record)


def _largest_remainder(sizes: dict[str, int], total: int) -> dict[str, int]:
    """`total` split over the strata in proportion to `sizes` (each at most its size)."""
    whole = sum(sizes.values())
    if not whole or not total:
        return dict.fromkeys(sizes, 0)
    exact = {s: total * n / whole for s, n in sizes.items()}
    out = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (out[s] - exact[s], s))[: total - sum(out.values())]:
        out[s] += 1
    return out


def continual_mix(
    artifacts: Any,
    family: Any,
    init: Any,
    dataset_version: str,
    train: list[dict[str, Any]],
    share: float,
    seed: int,
) -> ReplayMix:
    """`replay_mix` for a run of `family` on snapshot `dataset_version` that starts from `init`
    (continual.InitAdapter): the earlier examples are those of the snapshot the start was trained
    on. TrainingConfigError when the start is another family's or there is nothing new."""
    from pulse_pipeline.core import snapshots
    from pulse_pipeline.core.registry import files
    from pulse_pipeline.core.training.config import TrainingConfigError

    if init.family != family.name:
        raise TrainingConfigError(
            f"training.replay mixes in {family.name}'s earlier examples, but the run starts from "
            f"{init.family}@{init.version}: remove training.replay for an adapter on another family's"
        )
    earlier = files.read_metadata(artifacts, init.family, init.version).get("dataset_version")
    if not earlier:
        raise TrainingConfigError(
            f"training.replay: {init.family}@{init.version} does not record its snapshot"
        )
    earlier_ids = set(
        snapshots.split_columns(artifacts, family.name, earlier, "train", ["id"])["id"].to_pylist()
    )
    current = snapshots.split_columns(artifacts, family.name, dataset_version, "train", ["id", "stratum"])
    strata = dict(zip(current["id"].to_pylist(), current["stratum"].to_pylist(), strict=True))
    mix = replay_mix(train, strata, earlier_ids, share, seed=seed, earlier_version=earlier)
    if not mix.record["new_examples"]:
        raise TrainingConfigError(
            f"training.replay: snapshot {dataset_version} has no train examples that are new since "
            f"{earlier}, the snapshot {init.family}@{init.version} was trained on: nothing to continue on"
        )
    return mix
