"""Per family with an `oracle:` block: `<family>/oracle_calibration` (a calibration or validation
of the current prompt version: its decision and report) and `<family>/oracle_labels` (a labelling
run: annotations of the family with `source: oracle`), downstream of it in the lineage; and, for
one that learns from qa_pair, `<family>/generated_qa` (QA pairs from documents, upstream of its
review queue). They take the corpus or documents and their settings as run config (the
Launchpad, `pulse calibrate`, `pulse label`, `pulse generate-qa`)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.oracle.calibration import ModelScores, calibrate, model_scores, uses_model_strata
from pulse_pipeline.core.oracle.corpus import CorpusItem, read_corpus
from pulse_pipeline.core.oracle.labelling import label_corpus
from pulse_pipeline.core.oracle.prompts import load_prompt
from pulse_pipeline.core.oracle.qa_generation import generate_qa, load_qa_prompt
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    OracleEndpoint,
    TrainingEnvironment,
)


class CalibrationRun(dg.Config):
    """One calibration (or validation) of the family's current oracle prompt."""

    input: str = Field(
        description="The corpus: JSON Lines of items (`text`, optional `id`, `label`/`scores`)."
    )
    phase: Literal["calibration", "validation"] = Field(
        "calibration", description="validation: a fresh sample (another seed) after a calibration."
    )
    n_positive: int = Field(20, ge=0, description="On-topic items (by the prefilter) in the sample.")
    n_negative: int = Field(20, ge=0, description="Off-topic items in the sample.")
    n_edge: int = Field(10, ge=0, description="Edge items (both or neither prefilter rule).")
    seed: int = Field(0, description="Seed of the sample; validation needs another than calibration's.")


class LabelRun(dg.Config):
    """One labelling run over a corpus (resumes where an earlier run of the prompt version stopped)."""

    input: str = Field(description="The corpus: JSON Lines of items.")
    max_cost: float | None = Field(None, ge=0, description="Cost cap of the job (default: oracle.max_cost).")
    override_reason: str = Field(
        "", description="Label although the prompt version has not passed calibration and validation: why."
    )


class GenerateQaRun(dg.Config):
    """One QA generation over a folder of documents (resumes where an earlier run stopped)."""

    docs: str = Field(description="The folder of documents (.md, .markdown, .txt, .rst).")
    max_cost: float | None = Field(None, ge=0, description="Cost cap of the job (default: oracle.max_cost).")


def _key(family: FamilyConfig, name: str) -> dg.AssetKey:
    return dg.AssetKey([family.name, name])


def _production_scores(
    family: FamilyConfig,
    annotation_store: AnnotationStore,
    artifacts: ArtifactStore,
    training: TrainingEnvironment,
    items: list[CorpusItem],
) -> ModelScores | None:
    """The corpus scored by the family's production version; None when it has none."""
    from pulse_pipeline.core.registry import Registry, files

    current = Registry(annotation_store.store, artifacts).current(family.name)
    if not current or not current.get("version"):
        return None
    version = current["version"]
    folder = files.local_folder(artifacts, family.name, version, training.home_path / "cache" / "adapters")
    return model_scores(family, folder, version, items)


def oracle_calibration_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=_key(family, "oracle_calibration"),
        group_name=family.snake,
        kinds={"python"},
        tags={"pulse/family": family.name, "pulse/stage": "oracle"},
    )
    def _oracle_calibration(
        context: dg.AssetExecutionContext,
        config: CalibrationRun,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
        oracle: OracleEndpoint,
    ) -> dg.MaterializeResult:
        """Calibration (or validation) of the family's oracle prompt: PASS / REVIEW / FAIL and why."""
        artifacts = artifact_storage.open()
        prompt = load_prompt(family)
        items = read_corpus(config.input)
        counts = {"on_topic": config.n_positive, "off_topic": config.n_negative, "edge": config.n_edge}
        model = None
        if uses_model_strata(family):
            model = _production_scores(family, annotation_store, artifacts, training, items)
            context.log.info(
                f"strata by {family.name}'s production version {model.version}"
                if model is not None
                else f"{family.name} has no prefilter rules and no production version: unstratified sample"
            )
        endpoint = oracle.open(training.home_path / "models")
        try:
            result = calibrate(
                family,
                prompt,
                endpoint,
                items,
                artifacts,
                counts=counts,
                seed=config.seed,
                validate=config.phase == "validation",
                model=model,
            )
        finally:
            endpoint.close()
        m = result.metrics
        context.log.info(f"{family.name} prompt {prompt.version} {result.phase}: {result.decision}")
        return dg.MaterializeResult(
            metadata={
                "phase": result.phase,
                "decision": result.decision,
                "strata": result.strata,
                "prompt_version": result.prompt_version,
                "oracle": result.oracle,
                "seed": result.seed,
                "sampled": m["sampled"],
                "agreement": m["agreement"],
                "off_topic_errors": f"{m['off_topic_errors']} of {m['off_topic_items']}",
                "unparsed": m["unparsed"],
                "cost": m["cost"],
                "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in result.reasons) or "-"),
                "report": dg.MetadataValue.path(artifacts.uri(result.report_key)),
            }
        )

    return _oracle_calibration


def oracle_labels_asset(family: FamilyConfig, pulse_config: PulseConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=_key(family, "oracle_labels"),
        deps=[_key(family, "oracle_calibration")],
        group_name=family.snake,
        kinds={"python"},
        tags={"pulse/family": family.name, "pulse/stage": "oracle"},
    )
    def _oracle_labels(
        context: dg.AssetExecutionContext,
        config: LabelRun,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
        oracle: OracleEndpoint,
    ) -> dg.MaterializeResult:
        """A labelling run: the corpus's items the current prompt version has not answered yet,
        stored as annotations of the family (`source: oracle`)."""
        from pulse_pipeline.core.training.lock import this_process

        who = f"{context.run.tags.get('pulse/created_by', 'dagster')} run:{context.run.run_id[:8]}"
        items = read_corpus(config.input)
        endpoint = oracle.open(training.home_path / "models")
        try:
            result = label_corpus(
                annotation_store.store,
                artifact_storage.open(),
                pulse_config,
                family,
                load_prompt(family),
                endpoint,
                items,
                who=who,
                max_cost=config.max_cost if config.max_cost is not None else family.oracle.max_cost,
                override=config.override_reason or None,
                on_progress=lambda r: context.log.info(
                    f"{r.labelled} labelled, {r.quarantined} quarantined, spent {r.total_cost:.6g}"
                ),
                lock_holder=this_process(who, context.run.run_id),
            )
        finally:
            endpoint.close()
        if result.override:
            context.log.warning(f"labelled without a passed calibration: {result.override}")
        return dg.MaterializeResult(
            metadata={
                **{k: v for k, v in result.to_dict().items() if v is not None and k != "state"},
                "calibration": result.state["calibration"] or "not run",
                "validation": result.state["validation"] or "not run",
            }  # fmt: skip
        )

    return _oracle_labels


def generated_qa_asset(family: FamilyConfig, pulse_config: PulseConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=_key(family, "generated_qa"),
        group_name=family.snake,
        kinds={"python"},
        tags={"pulse/family": family.name, "pulse/stage": "oracle"},
    )
    def _generated_qa(
        context: dg.AssetExecutionContext,
        config: GenerateQaRun,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
        oracle: OracleEndpoint,
    ) -> dg.MaterializeResult:
        """QA pairs written by the oracle from documents, each citing its passage, waiting in the
        family's review queue (`source: generated`)."""
        from pulse_pipeline.core.training.lock import this_process

        who = f"{context.run.tags.get('pulse/created_by', 'dagster')} run:{context.run.run_id[:8]}"
        artifacts = artifact_storage.open()
        endpoint = oracle.open(training.home_path / "models")
        try:
            result = generate_qa(
                annotation_store.store,
                artifacts,
                pulse_config,
                family,
                load_qa_prompt(family),
                endpoint,
                config.docs,
                who=who,
                max_cost=config.max_cost if config.max_cost is not None else family.oracle.max_cost,
                on_progress=lambda r: context.log.info(
                    f"{r.generated} generated, {r.rejected} rejected, {r.duplicates} duplicates, "
                    f"spent {r.total_cost:.6g}"
                ),
                lock_holder=this_process(who, context.run.run_id),
            )
        finally:
            endpoint.close()
        out = result.to_dict()
        skipped = out.pop("skipped_files")
        return dg.MaterializeResult(
            metadata={
                **{k: v for k, v in out.items() if v is not None and k != "sources_key"},
                "skipped_files": ", ".join(skipped[:20])
                + (f" (+{len(skipped) - 20})" if len(skipped) > 20 else ""),
                "sources": dg.MetadataValue.path(artifacts.uri(result.sources_key)),
            }
        )

    return _generated_qa
