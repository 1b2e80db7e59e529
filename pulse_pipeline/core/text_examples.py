"""Examples of text families (classification, regression), built column-wise with Arrow.

These families are where volume is (every routed utterance is a capture), so their path
works on whole columns: the store hands over an Arrow table, triage and deduplication are
vectorized, and only texts that may hold PII pass through the Python redactor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pulse_pipeline.core.build_stats import BuildStats
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.redaction import Redactor
from pulse_pipeline.core.triage import TRAINABLE, ReviewStatus, has_review_queue, learns_from_captures

# Python's `\W` is "not a letter, digit or underscore" in Unicode: the same class in RE2.
NON_WORD = r"[^\pL\pN_]+"
# Text without '@' and without three digits in a row cannot hold a default PII pattern.
MAY_HOLD_PII = r"@|[0-9]{3}"


def text_fields(family: FamilyConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """What `Store.read_columns` extracts for this family."""
    fields: dict[str, tuple[tuple[str, ...], str]] = {
        "text": (("text",), "str"),
        "annotator": (("annotator",), "str"),
        "source": (("source",), "str"),
    }
    if family.task is TaskKind.classification:
        for name in ("label", "provider", "conversation_id", "input", "predicted_label"):
            fields[name] = ((name,), "str")
        fields["confidence"] = (("confidence",), "float")
    else:
        fields["group_id"] = (("group_id",), "str")
        fields["title"] = (("title",), "str")
        for i, dim in enumerate(family.dimensions or ()):
            fields[f"score_{i}"] = (("scores", dim), "float")
    return fields


def normalized(texts: Any) -> Any:
    """`examples.normalize`, column-wise: lower case, runs of non-word characters to one space."""
    import pyarrow.compute as pc

    return pc.utf8_trim(pc.replace_substring_regex(pc.utf8_lower(texts), NON_WORD, " "), " ")


def build_text_examples(table: Any, family: FamilyConfig) -> tuple[Any, BuildStats]:
    """Arrow table of stored annotations (from `Store.read_columns`) -> examples table + stats."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    stats = BuildStats()
    stats.annotations = table.num_rows
    if family.task is TaskKind.classification:  # a logged interaction: its input, its predicted label
        table = table.set_column(
            table.schema.get_field_index("text"), "text", pc.coalesce(table["text"], table["input"])
        )
        table = table.set_column(
            table.schema.get_field_index("label"), "label", pc.coalesce(table["label"], table["predicted_label"])
        )
    if table.num_rows:
        stats.watermark = int(pc.max(table["seq"]).as_py())
        stats.newest_ingested_at = pc.max(table["ingested_at"]).as_py()
    status = _triage(table, family)
    stats.by_status = Counter(
        {str(s): int(n) for s, n in zip(*np.unique(status, return_counts=True), strict=True)}
    )
    keep = np.isin(status, [str(s) for s in TRAINABLE])
    rows = np.flatnonzero(keep)  # indices into `table`; the wide table is copied once, at the end

    # Latest judgment per normalized text: order by (not an oracle's, created_at, seq), keep the
    # last of each key, so a person's label of a text wins over an oracle's, whenever it came.
    key = normalized(pc.take(table["text"], rows))
    person = status[rows] != ReviewStatus.oracle_labelled.value
    order = pc.sort_indices(
        pa.table(
            {"p": person, "t": pc.take(table["created_at"], rows), "s": pc.take(table["seq"], rows)}
        ),
        sort_keys=[("p", "ascending"), ("t", "ascending"), ("s", "ascending")],
    ).to_numpy()
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows))
    latest = pa.table({"key": key, "rank": rank}).group_by("key").aggregate([("rank", "max")])["rank_max"]
    winners = order[latest.to_numpy()]  # positions in `rows`
    unique_raw = pc.count_distinct(pc.take(table["text"], rows)).as_py() if len(rows) else 0
    stats.exact_duplicates = len(rows) - unique_raw
    stats.normalized_duplicates = unique_raw - len(winners)
    by_id = pc.sort_indices(pc.take(table["id"], rows[winners])).to_numpy()
    winners = winners[by_id]
    t = table.take(rows[winners])
    t = t.append_column("key", pc.take(key, winners))

    text = _redact(t["text"], family, stats)
    weight = _weights(t["kind"].to_numpy(zero_copy_only=False), family)
    oracle = pc.fill_null(pc.equal(t["source"], "oracle"), False).to_numpy(zero_copy_only=False)
    if oracle.any():
        weight = pa.array(np.where(oracle, weight.to_numpy() * family.oracle.weight, weight.to_numpy()))
    columns: dict[str, Any] = {"id": t["id"], "kind": t["kind"], "text": text}
    if family.task is TaskKind.classification:
        columns["label"] = t["label"]
        has_conv = pc.is_valid(t["conversation_id"])
        group = pc.if_else(
            has_conv,
            pc.binary_join_element_wise("conversation", t["conversation_id"], ":"),
            pc.binary_join_element_wise("text", t["key"], ":"),
        )
        stratum = t["label"]
    else:
        dims = family.dimensions or ()
        scores = np.column_stack([t[f"score_{i}"].to_numpy(zero_copy_only=False) for i in range(len(dims))])
        columns["labels"] = pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), len(dims)).cast(
            pa.list_(pa.float64())
        )
        article = pc.coalesce(t["group_id"], normalized(pc.coalesce(t["title"], t["text"])))
        group = pc.binary_join_element_wise("article", article, ":")
        lo, hi = family.score_range
        mean = scores.mean(axis=1) if len(scores) else np.zeros(0)
        tiers = np.where(
            mean < lo + (hi - lo) / 3, "low", np.where(mean >= lo + 2 * (hi - lo) / 3, "high", "mid")
        )
        stratum = pa.array(tiers.astype(str), pa.string())
    columns.update(weight=weight, group=group, stratum=stratum, created_at=t["created_at"])
    return pa.table(columns), stats  # sorted by id


def _weights(kinds: Any, family: FamilyConfig) -> Any:
    """Each example's weight by its kind; an approved interaction weighs what an intent label does."""
    import numpy as np
    import pyarrow as pa

    weight = np.ones(len(kinds))
    for kind, value in family.weights.items():
        weight[kinds == str(kind)] = value
        if kind == "intent_label":
            weight[kinds == "interaction"] = value
    return pa.array(weight)


def _triage(table: Any, family: FamilyConfig) -> Any:
    """Review status per row, as `triage.triage` decides it one record at a time."""
    import numpy as np
    import pyarrow.compute as pc

    kinds = table["kind"].to_numpy(zero_copy_only=False)
    interaction = kinds == "interaction"
    learned = np.isin(kinds, [str(k) for k in family.annotation_kinds])
    if learns_from_captures(family):
        learned |= interaction & pc.is_valid(table["predicted_label"]).to_numpy(zero_copy_only=False)
    human = pc.is_valid(table["annotator"]).to_numpy(zero_copy_only=False) & ~interaction
    if has_review_queue(family):
        status = _capture_status(table, family, human)
    else:
        status = np.full(len(kinds), ReviewStatus.human_reviewed.value, dtype=object)
    for source, fixed in (("oracle", ReviewStatus.oracle_labelled), ("generated", ReviewStatus.needs_review)):
        marked = pc.fill_null(pc.equal(table["source"], source), False).to_numpy(zero_copy_only=False)
        status[marked & ~interaction] = fixed.value
    status[~learned] = ReviewStatus.logged.value
    return status


def _capture_status(table: Any, family: FamilyConfig, human: Any) -> Any:
    """`triage.triage`'s routing of captures by confidence and provider, for a classification family."""
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    cfg = family.triage
    conf = table["confidence"].to_numpy(zero_copy_only=False).astype(float)  # NaN where absent
    provider = pc.fill_null(table["provider"], cfg.primary_provider)
    primary = pc.equal(provider, cfg.primary_provider).to_numpy(zero_copy_only=False)
    has_conf = ~np.isnan(conf)
    with np.errstate(invalid="ignore"):
        priority = has_conf & (~primary | (conf < cfg.review_below))
        auto = has_conf & ~priority & (conf > cfg.auto_approve_above)
    status = np.full(n, ReviewStatus.needs_review.value, dtype=object)
    status[priority] = ReviewStatus.priority_review.value
    status[auto] = ReviewStatus.auto_approved.value
    status[human] = ReviewStatus.human_reviewed.value
    return status


def _redact(texts: Any, family: FamilyConfig, stats: BuildStats) -> Any:
    """Redact with the Python redactor, but only the texts that may hold PII."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not family.redaction.enabled or len(texts) == 0:
        return texts
    redactor = Redactor.with_extra(family.redaction.extra_patterns)
    if redactor.has_extra:
        candidates = np.arange(len(texts))
    else:
        candidates = np.flatnonzero(
            pc.match_substring_regex(texts, MAY_HOLD_PII).to_numpy(zero_copy_only=False)
        )
    if len(candidates) == 0:
        return texts
    values = texts.to_pylist()
    for i in candidates:
        values[i] = redactor(values[i])
    stats.redactions.update(redactor.counts)
    return pa.chunked_array([pa.array(values, pa.string())])
