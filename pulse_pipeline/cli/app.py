"""The `pulse` Typer application, its command groups, and the options every command shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import typer

from pulse_pipeline.cli.output import UserError, guarded, secrets, set_debug
from pulse_pipeline.core.families import PulseConfig, load_config
from pulse_pipeline.logs import quiet_libraries
from pulse_pipeline.settings import get_settings

app = typer.Typer(
    help="pulse_pipeline: continuous fine-tuning from human feedback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The annotation store's schema.", no_args_is_help=True)
annotations_app = typer.Typer(
    help="Fix stored annotations: invalidate a bad day or bad records.", no_args_is_help=True
)
sessions_app = typer.Typer(help="Review (dojo) sessions.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue, with Label Studio as the review UI.", no_args_is_help=True)
registry_app = typer.Typer(help="The adapter registry: versions, their states, repairs.", no_args_is_help=True)
for group, name in (
    (db_app, "db"),
    (annotations_app, "annotations"),
    (sessions_app, "sessions"),
    (review_app, "review"),
    (registry_app, "registry"),
):
    app.add_typer(group, name=name)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the full traceback of an error as well as its one line.")
    ] = False,
) -> None:
    set_debug(debug)
    quiet_libraries(secrets())


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on `group`, its failures turned into one line (output.guarded)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        return group.command(name)(guarded(fn))

    return register


JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else there.")
]
FamilyOpt = Annotated[str, typer.Option("--family", "-f", help="A family declared in pulse.yaml.")]


def load_families() -> PulseConfig:
    return load_config(get_settings().pulse_config)


def user() -> str:
    """Who runs the command, for the audit trail: cli:<login>."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def parse_day(value: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option} {value!r} is not a day (YYYY-MM-DD)") from None
