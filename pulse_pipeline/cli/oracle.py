"""`pulse calibrate` and `pulse label`: labelling new data with an LLM oracle, only after its prompt
passed calibration and validation. Both run the family's oracle assets (defs/oracle/assets.py), so
their runs show in the UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pulse_pipeline.cli import runs
from pulse_pipeline.cli.app import FamilyOpt, JsonFlag, app, command, load_families, user
from pulse_pipeline.cli.output import UserError, emit, say
from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.settings import get_settings

InputOpt = Annotated[
    Path, typer.Option("--input", help="The corpus: JSON Lines, one item a line (`text`, ...).")
]


def _family(config: PulseConfig, name: str) -> FamilyConfig:
    family = config.family(name)
    if not family.has_oracle:
        raise UserError(
            f"family {family.name} has no `oracle:` block in {get_settings().pulse_config}: add one "
            "(even `oracle: {}`) to label it with an oracle"
        )
    return family


def _run(
    config: PulseConfig, family: str, asset: str, run_config: dict[str, Any], what: str
) -> dict[str, Any]:
    """Materialize the asset in one run recorded at DAGSTER_HOME; its materialization's metadata."""
    import dagster as dg

    key = dg.AssetKey([family, asset])
    with runs.instance() as instance:
        job = runs.definitions(config).resolve_implicit_global_asset_job_def()
        result = runs.run_job(
            instance,
            job,
            asset_selection=[key],
            run_config={"ops": {key.to_python_identifier(): {"config": run_config}}},
            tags={"pulse/created_by": user()},
        )
    if not result.success:
        raise UserError(runs.failure(result, what))
    [event] = result.get_asset_materialization_events()
    materialization = event.step_materialization_data.materialization
    return {k: v.value for k, v in materialization.metadata.items()}


def _cap(max_cost: float | None) -> dict[str, Any]:
    return {} if max_cost is None else {"max_cost": max_cost}


def _say_unfinished(out: dict[str, Any]) -> None:
    """What an oracle job left undone (the cost cap, failed calls), and how to go on."""
    if out.get("stopped"):
        say(f"stopped: {out['stopped']}; run the same command again (with a higher --max-cost) to go on")
    if out.get("failed"):
        say(f"{out['failed']} call(s) failed (first: {out.get('first_error')}); run it again to retry them")


@command(app)
def calibrate(
    family: FamilyOpt,
    input: InputOpt,
    n_positive: Annotated[int, typer.Option(help="On-topic items (by the prefilter) in the sample.")] = 20,
    n_negative: Annotated[int, typer.Option(help="Off-topic items in the sample.")] = 20,
    n_edge: Annotated[int, typer.Option(help="Edge items (both or neither prefilter rule).")] = 10,
    seed: Annotated[
        int, typer.Option(help="Seed of the sample (validation: another than calibration's).")
    ] = 0,
    validate: Annotated[
        bool, typer.Option("--validate", help="Validate on a fresh sample, after a calibration.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Calibrate the family's oracle prompt on a stratified sample of the corpus (or validate it on
    a fresh one): PASS / REVIEW / FAIL with reasons, and a calibration_report.md."""
    from pulse_pipeline.core.oracle.calibration import read_result
    from pulse_pipeline.core.oracle.prompts import load_prompt

    config = load_families()
    fam = _family(config, family)
    version = load_prompt(fam).version
    phase = "validation" if validate else "calibration"
    run_config = {
        "input": str(input.resolve()),
        "phase": phase,
        "n_positive": n_positive,
        "n_negative": n_negative,
        "n_edge": n_edge,
        "seed": seed,
    }
    _run(config, fam.name, "oracle_calibration", run_config, f"{phase} run")
    artifacts = get_settings().artifact_store()
    result = read_result(artifacts, fam.name, version, phase)
    assert result is not None
    report = artifacts.uri(result["report_key"])
    if as_json:
        emit({k: result[k] for k in ("family", "phase", "prompt_version", "oracle", "seed", "decision",
                                     "reasons", "warnings", "metrics", "strata")} | {"report": report})  # fmt: skip
        return
    say(f"{fam.name} prompt {version} {phase}: {result['decision']}")
    for reason in result["reasons"]:
        say(f"  - {reason}")
    say(f"report {report}")
    if result["decision"] == "PASS" and not validate:
        say(f"next: pulse calibrate --family {fam.name} --input {input} --validate --seed {seed + 1}")
    elif result["decision"] == "PASS":
        say(f"next: pulse label --family {fam.name} --input {input}")


@command(app)
def label(
    family: FamilyOpt,
    input: InputOpt,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop before the job's spend passes this (default: oracle.max_cost).")
    ] = None,
    override_calibration: Annotated[
        str | None,
        typer.Option(
            help="Label although the prompt has not passed calibration and validation: why (recorded)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Label the corpus with the family's oracle into annotations (`source: oracle`); resumes where
    an interrupted run stopped, without asking twice."""
    from pulse_pipeline.core.oracle.calibration import prompt_state
    from pulse_pipeline.core.oracle.labelling import refusal
    from pulse_pipeline.core.oracle.prompts import load_prompt

    config = load_families()
    fam = _family(config, family)
    version = load_prompt(fam).version
    state = prompt_state(get_settings().artifact_store(), fam.name, version)
    if not state.ready and not (override_calibration or "").strip():
        raise UserError(refusal(fam.name, state, str(input)))
    run_config: dict[str, Any] = {
        "input": str(input.resolve()),
        "override_reason": override_calibration or "",
    }
    out = _run(config, fam.name, "oracle_labels", run_config | _cap(max_cost), "labelling run")
    if as_json:
        emit(out)
        return
    say(
        f"{fam.name} prompt {version}: {out['labelled']} labelled, {out['quarantined']} quarantined, "
        f"{out['already_done']} done before, {out['remaining']} remaining; cost {out['cost']:.6g} "
        f"(job total {out['total_cost']:.6g})"
    )
    _say_unfinished(out)


@command(app, "generate-qa")
def generate_qa(
    family: FamilyOpt,
    docs: Annotated[
        Path,
        typer.Option("--docs", help="A folder of documents (.md, .markdown, .txt, .rst), read recursively."),
    ],
    max_cost: Annotated[
        float | None, typer.Option(help="Stop before the job's spend passes this (default: oracle.max_cost).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Generate QA pairs from documents with the family's oracle, each citing its passage as
    <<SRC:...>>, into the family's review queue (not straight into training)."""
    from pulse_pipeline.core.oracle.qa_generation import DocumentsError, load_qa_prompt, read_documents
    from pulse_pipeline.core.triage import generates_qa

    config = load_families()
    fam = _family(config, family)
    if not generates_qa(fam):
        raise UserError(f"family {fam.name} does not learn from qa_pair: generate-qa writes QA pairs")
    try:
        passages, _ = read_documents(docs, fam.oracle.generate_qa.passage_chars)
    except DocumentsError as exc:
        raise UserError(str(exc)) from None
    if not passages:
        raise UserError(f"{docs}: no passage in any .md, .markdown, .txt or .rst file")
    version = load_qa_prompt(fam).version
    run_config = {"docs": str(docs.resolve())} | _cap(max_cost)
    out = _run(config, fam.name, "generated_qa", run_config, "QA generation run")
    if as_json:
        emit(out)
        return
    say(
        f"{fam.name} generate-qa prompt {version}: {out['generated']} QA pairs to review from "
        f"{out['passages']} passages of {out['documents']} documents ({out['rejected']} rejected, "
        f"{out['duplicates']} duplicates, {out['unparsed']} passages unparsed, {out['already_done']} "
        f"done before, {out['remaining']} remaining); cost {out['cost']:.6g} (job total {out['total_cost']:.6g})"
    )
    say(f"source registry {out['sources']}")
    _say_unfinished(out)
    if out["rejected"] or out["unparsed"]:
        say("why pairs were rejected: pulse quarantine")
    say(f"next: pulse review export --family {fam.name} --out tasks.json --label-config config.xml")
