"""`pulse backfill`: re-audit days of annotations after a data fix, as a Dagster backfill.

The backfill targets the families' `<family>/annotations` partitions of those days and is recorded
in the instance at DAGSTER_HOME, so the UI lists it under Overview > Backfills with its runs. A
running dagster-daemon (`make ui`, or production) executes it; without one, the command executes
it itself and prints how it ended.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from pulse_pipeline.cli import runs
from pulse_pipeline.cli.app import JsonFlag, app, command, load_families, parse_day, user
from pulse_pipeline.cli.output import UserError, emit, say
from pulse_pipeline.core.families import PulseConfig

SEE_IT = "see it in the Dagster UI: `make ui`, then Overview > Backfills"


@command(app)
def backfill(
    family: Annotated[
        list[str], typer.Option("--family", "-f", metavar="FAMILY", help="A family declared in pulse.yaml; repeat for several.")
    ],
    day: Annotated[str | None, typer.Option("--day", metavar="DAY", help="One UTC day (YYYY-MM-DD).")] = None,
    first: Annotated[
        str | None, typer.Option("--from", metavar="DAY", help="The first day of a range (with --to).")
    ] = None,
    last: Annotated[
        str | None, typer.Option("--to", metavar="DAY", help="The last day of a range, included.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-audit days of annotations (the families' annotations partitions) in a Dagster backfill."""
    import dagster as dg

    config = load_families()
    names = list(dict.fromkeys(config.family(name).name for name in family))
    days = _days(config, day, first, last)
    keys = [dg.AssetKey([name, "annotations"]) for name in names]
    outcome = runs.launch_backfill(
        config,
        keys,
        [d.isoformat() for d in days],
        title=f"pulse backfill {', '.join(names)} {_span(days)}",
        tags={"pulse/created_by": user()},
    )
    report: dict[str, Any] = {
        "backfill_id": outcome.backfill_id,
        "status": outcome.status,
        "executed_by": outcome.executed_by,
        "assets": [key.to_user_string() for key in keys],
        "partitions": [d.isoformat() for d in days],
        "runs": outcome.runs,
        "see": "make ui, then Overview > Backfills",
    }
    if outcome.error is not None:
        raise UserError(f"backfill {outcome.backfill_id} of {_span(days)} failed: {outcome.error}; {SEE_IT}")
    if as_json:
        emit(report)
        return
    what = f"{', '.join(report['assets'])}, {len(days)} partition{'s' if len(days) > 1 else ''} ({_span(days)})"
    if outcome.executed_by == "this command":
        succeeded = sum(run["status"] == "SUCCESS" for run in outcome.runs)
        runs_done = f"{succeeded} run{'s' if succeeded != 1 else ''} succeeded"
        say(f"backfill {outcome.backfill_id}: {what}: {outcome.status.lower().replace('_', ' ')}, {runs_done}")
    else:
        say(f"backfill {outcome.backfill_id}: {what}: requested; the running dagster-daemon executes it")
    say(SEE_IT)
    snapshots = " and ".join(f"`pulse snapshot --family {name}`" for name in names)
    say(f"next: {snapshots} (a snapshot without what was fixed), or `pulse train --force`", err=True)


def _days(config: PulseConfig, day: str | None, first: str | None, last: str | None) -> list[dt.date]:
    """The days asked for, each one a partition of the annotations."""
    from pulse_pipeline.definitions import annotation_partitions

    if (day is not None and (first or last)) or (day is None and not (first and last)):
        raise UserError("give --day DAY, or --from DAY and --to DAY")
    if day is not None:
        days = [parse_day(day, "--day")]
    else:
        start, end = parse_day(first or "", "--from"), parse_day(last or "", "--to")
        if end < start:
            raise UserError(f"--to {end} is before --from {start}")
        days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    partitions = annotation_partitions(config)
    keys = partitions.get_partition_keys()
    for d in (days[0], days[-1]):
        if d < config.annotations_start_date:
            raise UserError(
                f"{d} is before the first annotation partition, {config.annotations_start_date} "
                "(annotations_start_date in pulse.yaml)"
            )
        if d.isoformat() not in keys:
            raise UserError(f"{d} is not an annotation partition yet (the last one is today, {keys[-1]})")
    return days


def _span(days: list[dt.date]) -> str:
    return str(days[0]) if len(days) == 1 else f"{days[0]} to {days[-1]}"
