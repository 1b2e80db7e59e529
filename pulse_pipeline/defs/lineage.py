"""Run-scoped lineage: what an earlier step of the same run materialized.

The evaluation judges the adapter version its own run trained, and the deployment promotes its
own run's evaluation, never "the newest materialization" of the asset: another run (a sensor's,
a person's) may have materialized it since.
"""

import dagster as dg


def this_runs_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict[str, object] | None:
    """The metadata values (raw) of `key`'s materialization in this run, None when it had none."""
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    found = None
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            found = materialization  # the last one wins (a retried step materializes again)
    if found is None:
        return None
    return {name: getattr(value, "value", value) for name, value in found.metadata.items()}
