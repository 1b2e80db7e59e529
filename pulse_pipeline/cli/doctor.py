"""`pulse doctor`: one row per part of the deployment, healthy or its one-line error.

The checks live in core/doctor.py (which parts are required, and why the daemon is optional on
the embedded instance). Exit status 1, with a line on stderr naming them, when a required part is
down; optional parts (CUDA, bitsandbytes on a CPU, the embedded instance's daemon) only warn.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import typer

from pulse_pipeline.cli.app import JsonFlag, app, command
from pulse_pipeline.cli.output import emit, say
from pulse_pipeline.core.doctor import healthy, run_checks, standard_checks
from pulse_pipeline.settings import get_settings


@command(app)
def doctor(as_json: JsonFlag = False) -> None:
    """Check each part: annotation store, artifact store, MLflow, vLLM, Dagster, CUDA, bitsandbytes."""
    settings = get_settings()
    assert settings.dagster_home is not None and settings.pulse_artifacts is not None
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)  # the embedded dagster.yaml reads it
    location = settings.pulse_artifacts
    if location.startswith("s3://") and settings.pulse_s3_endpoint:
        location += f" at {settings.pulse_s3_endpoint}"
    checks = standard_checks(
        database_url=settings.database_url,
        artifacts_location=location,
        open_artifacts=settings.artifact_store,
        tracking_uri=settings.mlflow_tracking_uri or "",
        vllm_urls=settings.vllm_urls(),
        vllm_api_key=settings.pulse_vllm_api_key.get_secret_value(),
        dagster_home=settings.dagster_home,
    )
    rows = run_checks(checks, secrets=settings.secret_values())
    if as_json:
        emit({"healthy": healthy(rows), "checks": [asdict(row) for row in rows]})
    else:
        width = max(len(row.name) for row in rows)
        for row in rows:
            say(f"{row.name:<{width}}  {row.status:<7}  {row.detail}")
    down = [row.name for row in rows if row.status == "fail"]
    if down:
        say(f"pulse: required part(s) down: {', '.join(down)}", err=True)
        raise typer.Exit(1)
