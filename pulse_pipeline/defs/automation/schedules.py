"""Scheduled retrains, the daily capture report and the daily watch; all start STOPPED (a person
turns them on in the UI or with `dagster schedule start`).

A schedule targets one job, so the retrain schedules target `retrain` (every family's chain) and
request one run per family with that family's assets selected and the tag `pulse/family`. Every
run they request carries the family's maximum run time (`run_limit_tags`), which the daemon's run
monitoring enforces (`run_monitoring` in dagster.yaml).

A family whose retrain is already queued or running is skipped with that reason, so a schedule
never starts a second training of the same data beside the sensor's run (the two cannot share a
run key: Dagster scopes a schedule's run keys to one tick).
"""

import datetime as dt
from collections.abc import Callable, Mapping, Sequence

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.defs.automation.daily_report import daily_report_key
from pulse_pipeline.defs.automation.runs import running_retrain, training_under_way
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment

CAPTURE_REPORT_JOB = "daily_capture_report"
ChainKeys = Mapping[str, Sequence[dg.AssetKey]]  # family name -> its retrain chain


def run_limit_tags(family: FamilyConfig) -> dict[str, str]:
    """The run tag that makes the daemon stop a run after `automation.max_run_minutes` (default 90)."""
    return {"dagster/max_runtime": str(family.automation.max_run_minutes * 60)}


def family_tags(family: FamilyConfig) -> dict[str, str]:
    return {"pulse/family": family.name, **run_limit_tags(family)}


def build_schedules(
    config: PulseConfig,
    chain_keys: ChainKeys,
    partitions: dg.PartitionsDefinition,
    *,
    retrain_job: str = "retrain",
    watch_job: str = "daily_watch",
) -> list[dg.ScheduleDefinition]:
    """nightly_retrain, weekly_retrain, quarterly_retrain (targeting `retrain_job`, one run per family
    with `chain_keys[family]` selected), daily_capture_report (its own partitioned job over every
    family's daily_report) and daily_watch (targeting `watch_job`: drift_report and
    production_accuracy)."""
    families = list(config.families.values())
    return [
        _nightly(families, chain_keys, retrain_job),
        _weekly(families, chain_keys, retrain_job),
        _quarterly(families, chain_keys, retrain_job),
        _capture_report(families, partitions),
        _daily_watch(families, watch_job),
    ]


def _retrain_schedule(
    name: str,
    cron: str,
    description: str,
    families: list[FamilyConfig],
    chain_keys: ChainKeys,
    retrain_job: str,
    decide: Callable[[FamilyConfig, int], str | None],  # (family, new count) -> why not, or None
    flag: str,  # the automation.schedules field that includes a family
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone="UTC",
        job_name=retrain_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=description,
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        from pulse_pipeline.core.retraining import new_annotations

        store = annotation_store.store
        requests, skipped = [], []
        for family in families:
            why_not = _not_now(context.instance, family, name, flag, retrain_job) or training_under_way(
                context.instance, store, training, family
            )
            if why_not:
                skipped.append(why_not)
                continue
            seen = new_annotations(store, artifact_storage.open(), family)
            new, watermark = seen.count, seen.watermark
            why_not = decide(family, new)
            if why_not:
                skipped.append(f"{family.name}: {why_not}")
                continue
            context.log.info(f"{name}: retrain {family.name} ({new} new annotations)")
            requests.append(
                dg.RunRequest(
                    run_key=f"{name.split('_')[0]}:{family.name}:{watermark}",
                    asset_selection=list(chain_keys[family.name]),
                    tags={**family_tags(family), "pulse/new_annotations": str(new)},
                )
            )
        for line in skipped:
            context.log.info(f"{name}: skipped {line}")
        return requests or dg.SkipReason("; ".join(skipped) or "no families")

    return _schedule


def _nightly(families: list[FamilyConfig], chain_keys: ChainKeys, retrain_job: str) -> dg.ScheduleDefinition:
    def decide(family: FamilyConfig, new: int) -> str | None:
        if new < family.min_new_annotations:
            return f"{new} of {family.min_new_annotations} new annotations"
        return None

    return _retrain_schedule(
        "nightly_retrain",
        "0 2 * * *",
        "02:00 UTC: retrain each family with at least its min_new_annotations new trainable "
        "annotations since its newest snapshot; the rest are skipped with the count.",
        families,
        chain_keys,
        retrain_job,
        decide,
        "nightly",
    )


def _weekly(families: list[FamilyConfig], chain_keys: ChainKeys, retrain_job: str) -> dg.ScheduleDefinition:
    """Weekly catches the families whose trickle of judgments never reaches the nightly threshold:
    one new trainable annotation is enough (a week's small batch is still worth learning from, and
    the promotion gate refuses a version that got worse)."""

    def decide(_family: FamilyConfig, new: int) -> str | None:
        return None if new >= 1 else "no new annotations since the newest snapshot"

    return _retrain_schedule(
        "weekly_retrain",
        "0 3 * * 0",
        "Sunday 03:00 UTC: retrain each family with at least one new trainable annotation since its "
        "newest snapshot (a smaller batch than the nightly threshold; the gate still decides).",
        families,
        chain_keys,
        retrain_job,
        decide,
        "weekly",
    )


def _quarterly(
    families: list[FamilyConfig], chain_keys: ChainKeys, retrain_job: str
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="quarterly_retrain",
        cron_schedule="0 4 1 1,4,7,10 *",
        execution_timezone="UTC",
        job_name=retrain_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="04:00 UTC on the first day of each quarter: retrain the families whose config "
        "asks for it (automation.schedules.quarterly), even with nothing new (training forced).",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, annotation_store: AnnotationStore, training: TrainingEnvironment
    ) -> list[dg.RunRequest] | dg.SkipReason:
        day = _scheduled_time(context).date()
        requests, skipped = [], []
        for family in families:
            why_not = _not_now(
                context.instance, family, "quarterly_retrain", "quarterly", retrain_job
            ) or training_under_way(context.instance, annotation_store.store, training, family)
            if why_not:
                skipped.append(why_not)
                continue
            keys = list(chain_keys[family.name])
            adapter = dg.AssetKey([family.name, "adapter"])
            run_config = (
                {"ops": {adapter.to_python_identifier(): {"config": {"force": True}}}}
                if adapter in keys
                else {}
            )
            requests.append(
                dg.RunRequest(
                    run_key=f"quarterly:{family.name}:{day.isoformat()}",
                    asset_selection=keys,
                    run_config=run_config,
                    tags=family_tags(family),
                )
            )
        for line in skipped:
            context.log.info(f"quarterly_retrain: skipped {line}")
        return requests or dg.SkipReason("; ".join(skipped))

    return _schedule


def _not_now(
    instance: dg.DagsterInstance, family: FamilyConfig, schedule: str, flag: str, retrain_job: str
) -> str | None:
    """Why `schedule` leaves `family` out (its config, or a retrain under way), or None."""
    if not getattr(family.automation.schedules, flag):
        return f"{family.name}: not in {schedule} (automation.schedules.{flag}: false)"
    busy = running_retrain(instance, family, {retrain_job, f"retrain_{family.snake}"})
    if busy:
        return f"{family.name}: a retrain is already queued or running (run {busy[:8]})"
    return None


def _capture_report(
    families: list[FamilyConfig], partitions: dg.PartitionsDefinition
) -> dg.ScheduleDefinition:
    job = dg.define_asset_job(
        CAPTURE_REPORT_JOB,
        selection=dg.AssetSelection.assets(*(daily_report_key(f) for f in families)),
        description="Every family's daily capture report for one UTC day.",
    )

    @dg.schedule(
        name="daily_capture_report",
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="02:00 UTC: each family's daily_report for the previous UTC day.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        day = (_scheduled_time(context) - dt.timedelta(days=1)).date().isoformat()
        if not partitions.has_partition_key(day):
            return dg.SkipReason(f"{day} is before the first annotation partition")
        return [
            dg.RunRequest(
                run_key=f"daily_report:{family.name}:{day}",
                partition_key=day,
                asset_selection=[daily_report_key(family)],
                tags=family_tags(family),
            )
            for family in families
        ]

    return _schedule


def _daily_watch(families: list[FamilyConfig], watch_job: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_watch",
        cron_schedule="30 1 * * *",
        execution_timezone="UTC",
        job_name=watch_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="01:30 UTC: each family's drift_report (where automation.drift.enabled) and "
        "production_accuracy, so the sensors watching them see fresh figures.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        day = _scheduled_time(context).date().isoformat()
        return [
            dg.RunRequest(
                run_key=f"daily_watch:{family.name}:{day}",
                asset_selection=watch_keys(family),
                tags=family_tags(family),
            )
            for family in families
        ]

    return _schedule


def watch_keys(family: FamilyConfig) -> list[dg.AssetKey]:
    """What `daily_watch` materializes for a family."""
    drift = [dg.AssetKey([family.name, "drift_report"])] if family.automation.drift.enabled else []
    return [*drift, dg.AssetKey([family.name, "production_accuracy"])]


def _scheduled_time(context: dg.ScheduleEvaluationContext) -> dt.datetime:
    when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC)
