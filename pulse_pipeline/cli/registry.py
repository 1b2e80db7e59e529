"""The adapter registry from the command line: promote, cleanup, merge, registry reconcile and versions.

Promotion, cleanup and reconcile run the `promote_adapter`, `cleanup_adapters` and
`reconcile_adapters` jobs in this process, so each change is a run in the UI as well as a row in
the audit trail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pulse_pipeline.cli import runs
from pulse_pipeline.cli.app import FamilyOpt, JsonFlag, app, command, load_families, registry_app, user
from pulse_pipeline.cli.output import UserError, emit, say
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings


@command(app)
def promote(
    family: FamilyOpt,
    version: Annotated[str | None, typer.Option(help="The version to make production.")] = None,
    previous: Annotated[
        bool, typer.Option("--previous", help="Roll back to the previous production version.")
    ] = False,
    traffic_share: Annotated[
        float, typer.Option(help="Below 1.0: serve it as a canary beside production with this share.")
    ] = 1.0,
    force: Annotated[
        bool,
        typer.Option(help="Promote a version the gate did not judge DEPLOY (needs --reason; recorded)."),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail (required with --force).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make a version production (or a canary), or roll back, through the promote_adapter job."""
    config = load_families()
    config.family(family)
    if (version is None) == (not previous):
        raise UserError("give --version V or --previous")
    out = runs.run_op_job(
        config,
        "promote_adapter",
        "promote_version",
        {
            "family": family, "version": version, "previous": previous, "traffic_share": traffic_share,
            "force": force, "reason": reason, "requested_by": user(),
        },
    )  # fmt: skip
    report = {k: out[k] for k in ("family", "action", "version", "previous_version", "challenger", "traffic")}
    report.update(forced=out["forced"], serving=out["serving"], mlflow_aliases=out["mlflow"], changed=out["changed"])
    report.update(partial=out["partial"], attempted=out["attempted"], vllm_replicas=out["replicas"])
    # A replica that failed: nothing moved. The report, then one line naming it, and exit 1.
    partial = f"{family}: {out['attempted']} not served, {out['version'] or 'none'} stays production: {out['serving']}"
    if as_json:
        emit(report)
        if out["partial"]:
            raise UserError(partial)
        return
    if not out["changed"] and not out["partial"]:
        say(f"{family}: {out['version']} is already production; serving and aliases re-synced")
    for key, value in report.items():
        if key == "vllm_replicas":
            for replica in value:
                say(f"{'vllm_replica':<18} {replica['url']}: {replica['status']}")
            continue
        say(f"{key:<18} {value if value is not None else '-'}")
    for note in out["notes"]:
        say(f"note: {note}", err=True)
    if out["partial"]:
        raise UserError(partial)


@command(app)
def cleanup(
    family: FamilyOpt,
    keep: Annotated[
        int | None,
        typer.Option(
            help="Versions to keep besides production, previous and a canary "
            "(default: the family's automation.keep_versions, 5)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove a family's old adapter versions through the cleanup_adapters job."""
    config = load_families()
    if keep is None:
        keep = config.family(family).automation.keep_versions
    config.family(family)  # an unknown family: one clear line, before any run
    if keep < 1:
        raise UserError("--keep must be at least 1")
    out = runs.run_op_job(config, "cleanup_adapters", "cleanup_versions", {"family": family, "keep": keep})
    if as_json:
        emit({"removed": out["removed"], "kept": out["kept"]})
        return
    say(f"removed {', '.join(out['removed']) or 'nothing'}")
    say(f"kept    {', '.join(out['kept'])}")


@command(app)
def merge(
    family: FamilyOpt,
    version: Annotated[str, typer.Option(help="The version to merge into its base model.")],
    out: Annotated[Path, typer.Option(help="An empty or new folder for the merged model.")],
    as_json: JsonFlag = False,
) -> None:
    """Write the base model with the adapter merged in, for engines without LoRA support."""
    from pulse_pipeline.core.merging import MergeError, merge_adapter
    from pulse_pipeline.core.registry import Registry, files

    settings = get_settings()
    load_families().family(family)
    artifacts = settings.artifact_store()
    with Store(settings.database_url) as store:
        Registry(store, artifacts).require(family, version)
    folder = files.local_folder(artifacts, family, version, settings.pulse_home / "cache" / "adapters")
    try:
        merged = merge_adapter(folder, out)
    except MergeError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        emit({"family": family, "version": version, "out": str(merged)})
        return
    say(f"merged {version} into its base model: {merged}")


@command(registry_app, "reconcile")
def registry_reconcile(
    family: FamilyOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; change nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Repair a family's registry after a crash or a lost database (the reconcile_adapters job):
    folders without a record adopted (then evaluated before any promotion) or removed, trainings
    that died failed or finished, records made to follow current.json."""
    config = load_families()
    config.family(family)
    out = runs.run_op_job(
        config, "reconcile_adapters", "reconcile_versions", {"family": family, "dry_run": dry_run, "requested_by": user()}
    )
    if as_json:
        emit(out)
        return
    verb = "would change" if dry_run else "changed"
    for line in out["changes"]:
        say(f"{verb}  {line}")
    for line in out["problems"]:
        say(f"problem  {line}", err=True)
    if not out["changes"] and not out["problems"]:
        say(f"{family}: the registry is consistent; nothing to change")


@command(registry_app, "versions")
def registry_versions(family: FamilyOpt, as_json: JsonFlag = False) -> None:
    """A family's versions with their state, gate decision and who trained them, oldest first."""
    from pulse_pipeline.core.registry import Registry

    settings = get_settings()
    load_families().family(family)
    with Store(settings.database_url) as store:
        registry = Registry(store, settings.artifact_store())
        records = registry.records.list(family)
        unrecorded = registry.unrecorded(family)
    rows = [
        {
            "version": r.version, "state": r.state.value, "decision": r.decision, "traffic_share": r.traffic_share,
            "semantic_version": r.semantic_version, "dataset_version": r.dataset_version,
            "created_at": r.created_at.isoformat(timespec="seconds"), "created_by": r.created_by,
        }
        for r in records
    ]  # fmt: skip
    if as_json:
        emit({"family": family, "versions": rows, "unrecorded_versions": unrecorded})
        return
    for row in rows:
        say(
            f"{row['version']:<32} {row['state']:<10} {row['decision'] or '-':<7} {row['semantic_version']:<8} "
            f"{row['created_at']}  {row['created_by']}"
        )
    for version in unrecorded:
        say(f"{version:<32} {'no record':<10} (a folder without a record: `pulse registry reconcile --family {family}`)")
