"""The drift report of one family: recent annotations against the production adapter's training data.

`build_drift_report` gathers both sides (`sides`), embeds them through the cache
(`embeddings`), computes the statistics (`stats`) and decides whether the data crossed a
threshold: the drift score (domain-classifier AUC) at or over `drift.threshold`, or the
target's PSI (label, largest score dimension, or chat example kind) at or over
`drift.distribution_threshold`, each only when its permutation p-value is below
`drift.significance`. Length drift (PSI of the input's characters) is reported, not acted on.
`write_report` puts `drift/<family>/report.json` and `report.png` in the artifact store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.drift import stats
from pulse_pipeline.core.drift.embeddings import Embed, EmbeddingCache
from pulse_pipeline.core.drift.sides import Side, in_text_order, recent_side, reference_side, sample
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.store import Store

REPORT = "report.json"
PLOT = "report.png"


@dataclass
class DriftReport:
    family: str
    status: str  # "compared", "no_reference" (no snapshot yet) or "too_few" (a side under min_samples)
    message: str  # one line for people
    figures: dict[str, Any]  # everything report.json holds
    crossed: bool = False
    reasons: list[str] = field(default_factory=list)
    plot: bytes | None = None

    def to_json(self) -> bytes:
        body = {
            "family": self.family,
            "status": self.status,
            "message": self.message,
            "crossed": self.crossed,
            "reasons": self.reasons,
            **self.figures,
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def report_key(family: str, name: str = REPORT) -> str:
    return f"drift/{family}/{name}"


def build_drift_report(
    store: Store,
    artifacts: ArtifactStore,
    family: FamilyConfig,
    encode: Embed,
    *,
    now: dt.datetime | None = None,
) -> DriftReport:
    """Compare the last `drift.window_days` of annotations with the production training split."""
    from pulse_pipeline.core.retraining import new_annotations

    cfg = family.automation.drift
    end = now or dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(days=cfg.window_days)
    new = new_annotations(store, artifacts, family)
    figures: dict[str, Any] = {
        "created_at": end.isoformat(),
        "window": {"days": cfg.window_days, "start": start.isoformat(), "end": end.isoformat()},
        "thresholds": {
            "drift_score": cfg.threshold,
            "distribution_psi": cfg.distribution_threshold,
            "significance": cfg.significance,
        },
        "new_annotations": new.count,
        "training_watermark": new.watermark,
    }
    reference = reference_side(artifacts, family)
    recent = recent_side(store, family, start, end)
    figures["recent"] = {"size": len(recent)}
    if reference is None:
        return DriftReport(
            family.name,
            "no_reference",
            f"nothing to compare: {family.name} has no dataset snapshot yet ({len(recent)} recent examples)",
            figures,
        )
    ref_ids = set(reference.side.ids)
    figures["recent"]["in_reference"] = sum(i in ref_ids for i in recent.ids)
    figures["reference"] = {
        "source": reference.source,
        "dataset_version": reference.dataset_version,
        "adapter_version": reference.adapter_version,
        "watermark": reference.watermark,
        "size": len(reference.side),
    }
    which = (
        f"production {reference.adapter_version}'s snapshot {reference.dataset_version}"
        if reference.source == "production"
        else f"the newest snapshot {reference.dataset_version} (no production version yet)"
    )
    if min(len(reference.side), len(recent)) < cfg.min_samples:
        return DriftReport(
            family.name,
            "too_few",
            f"too few examples to compare: {len(recent)} recent (last {cfg.window_days} days) and "
            f"{len(reference.side)} in {which}; each side needs {cfg.min_samples}",
            figures,
        )
    # In text order, so the same examples give the same figures whatever their ids and order.
    ref = in_text_order(sample(reference.side, cfg.max_samples, cfg.seed))
    new = in_text_order(sample(recent, cfg.max_samples, cfg.seed + 1))
    figures["reference"]["sampled"] = len(ref)
    figures["recent"]["sampled"] = len(new)
    cache = EmbeddingCache(artifacts, family.name, cfg.encoder)
    vectors, embedded = cache.embed(ref.ids + new.ids, ref.texts + new.texts, encode)
    x, y = vectors[: len(ref)], vectors[len(ref) :]
    mmd = stats.mmd_test(x, y, seed=cfg.seed)
    figures["embedding"] = {
        "encoder": cfg.encoder,
        "domain_auc": stats.domain_classifier_auc(x, y, seed=cfg.seed),
        "mmd2": mmd.mmd2,
        "mmd_p_value": mmd.p_value,
        "kernel_width": mmd.bandwidth,
        "texts_embedded": embedded,
    }
    figures["target"] = _target_drift(family, ref, new, cfg.seed)
    figures["length"] = _length_drift([len(t) for t in ref.texts], [len(t) for t in new.texts], cfg.seed)
    if ref.answers is not None and new.answers is not None:
        figures["answer_length"] = _length_drift(
            [len(a) for a in ref.answers], [len(a) for a in new.answers], cfg.seed
        )
    crossed, reasons = _decide(family, figures)
    figures["drift_score"] = figures["embedding"]["domain_auc"]
    message = f"{'drift' if crossed else 'no drift'} against {which}: " + "; ".join(reasons)
    report = DriftReport(family.name, "compared", message, figures, crossed, reasons)
    report.plot = _plot(family, ref, new, x, y, figures)
    return report


def _target_drift(family: FamilyConfig, ref: Side, new: Side, seed: int) -> dict[str, Any]:
    if family.task is TaskKind.regression:
        assert ref.scores is not None and new.scores is not None
        edges = stats.score_edges(*family.score_range)
        result = stats.distribution_drift(
            stats.to_bins(ref.scores, edges), stats.to_bins(new.scores, edges), len(edges) + 1, seed=seed
        )
        dims = list(family.dimensions or ())
        return {
            "kind": "scores",
            "psi": result.max_psi,
            "js": result.max_js,
            "p_value": result.p_value,
            "bins": f"{len(edges) + 1} equal-width bins over {list(family.score_range)}",
            "per_dimension": {
                d: {
                    "psi": p,
                    "js": j,
                    "mean_reference": float(ref.scores[:, k].mean()),
                    "mean_recent": float(new.scores[:, k].mean()),
                }
                for k, (d, p, j) in enumerate(zip(dims, result.psi, result.js, strict=True))
            },
        }
    assert ref.categories is not None and new.categories is not None
    a, b, names = stats.categorical_bins(ref.categories, new.categories)
    result = stats.distribution_drift(a, b, len(names), seed=seed)
    ref_n, new_n = np.bincount(a, minlength=len(names)), np.bincount(b, minlength=len(names))
    return {
        "kind": "label" if family.task is TaskKind.classification else "example kind",
        "psi": result.max_psi,
        "js": result.max_js,
        "p_value": result.p_value,
        "categories": len(names),
        "shares": {
            n: {"reference": float(r / len(a)), "recent": float(c / len(b))}
            for n, r, c in zip(names, ref_n, new_n, strict=True)
        },
    }


def _length_drift(ref: list[int], new: list[int], seed: int) -> dict[str, Any]:
    edges = stats.quantile_edges(np.array(ref))
    result = stats.distribution_drift(
        stats.to_bins(np.array(ref), edges), stats.to_bins(np.array(new), edges), len(edges) + 1, seed=seed
    )
    return {
        "psi": result.max_psi,
        "js": result.max_js,
        "p_value": result.p_value,
        "mean_reference": float(np.mean(ref)),
        "mean_recent": float(np.mean(new)),
        "unit": "characters",
    }


def _decide(family: FamilyConfig, figures: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the drift score or the target's PSI crossed its threshold, significantly, and why."""
    cfg = family.automation.drift
    emb, target = figures["embedding"], figures["target"]
    checks = [
        ("drift score", emb["domain_auc"], cfg.threshold, "MMD p", emb["mmd_p_value"]),
        (f"{target['kind']} PSI", target["psi"], cfg.distribution_threshold, "p", target["p_value"]),
    ]
    crossed, reasons = False, []
    for name, value, threshold, p_name, p in checks:
        if value < threshold:
            reasons.append(f"{name} {value:.2f} below {threshold:g}")
        elif p >= cfg.significance:
            reasons.append(f"{name} {value:.2f} over {threshold:g} but not significant ({p_name} {p:.3f})")
        else:
            crossed = True
            reasons.append(f"{name} {value:.2f} over {threshold:g} ({p_name} {p:.3f})")
    return crossed, reasons


def _plot(
    family: FamilyConfig, ref: Side, new: Side, x: np.ndarray, y: np.ndarray, figures: dict[str, Any]
) -> bytes | None:
    """PCA of both sides' embeddings, the target's distribution and the input lengths, as a PNG."""
    import io
    import logging

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        pooled = np.vstack([x, y]).astype(np.float64)
        centred = pooled - pooled.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        ax = axes[0]
        ax.scatter(xy[: len(x), 0], xy[: len(x), 1], s=8, alpha=0.5, label=f"reference ({len(x)})")
        ax.scatter(xy[len(x) :, 0], xy[len(x) :, 1], s=8, alpha=0.5, label=f"recent ({len(y)})")
        ax.set_title(f"Embeddings, 2-D PCA (drift score {figures['embedding']['domain_auc']:.2f})")
        ax.legend(loc="best", fontsize=8)
        _plot_target(axes[1], family, figures["target"])
        ax = axes[2]
        lengths = [np.array([len(t) for t in ref.texts]), np.array([len(t) for t in new.texts])]
        bins = np.histogram_bin_edges(np.concatenate(lengths), bins=30)
        ax.hist(lengths[0], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(lengths[1], bins=bins, density=True, alpha=0.5, label="recent")
        ax.set_title(f"Input length, characters (PSI {figures['length']['psi']:.2f})")
        ax.legend(loc="best", fontsize=8)
        fig.suptitle(f"{family.name}: recent annotations against the training data")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=70, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        return buffer.getvalue()
    except Exception:  # a plot only illustrates the report
        logging.getLogger(__name__).exception("could not draw the drift plot; the report goes on without it")
        return None


def _plot_target(ax: Any, family: FamilyConfig, target: dict[str, Any]) -> None:
    if family.task is TaskKind.regression:
        dims = list(target["per_dimension"])
        means = [[target["per_dimension"][d][k] for d in dims] for k in ("mean_reference", "mean_recent")]
        names = dims
    else:
        shares = target["shares"]
        names = sorted(shares, key=lambda n: -max(shares[n].values()))[:15]
        means = [[shares[n][k] for n in names] for k in ("reference", "recent")]
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, means[0], width=0.4, label="reference")
    ax.bar(pos + 0.2, means[1], width=0.4, label="recent")
    ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=7)
    what = "Mean score per dimension" if family.task is TaskKind.regression else f"Share per {target['kind']}"
    ax.set_title(f"{what} (PSI {target['psi']:.2f})")
    ax.legend(loc="best", fontsize=8)


def write_report(artifacts: ArtifactStore, report: DriftReport) -> dict[str, str]:
    """report.json (and report.png when drawn) under drift/<family>/; their URIs."""
    uris = {}
    if report.plot is not None:
        artifacts.write_bytes(report_key(report.family, PLOT), report.plot)
        uris["plot"] = artifacts.uri(report_key(report.family, PLOT))
    report.figures["plot"] = uris.get("plot")
    artifacts.write_bytes(report_key(report.family), report.to_json())
    uris["report"] = artifacts.uri(report_key(report.family))
    return uris
