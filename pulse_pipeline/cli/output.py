"""What `pulse` prints, and how it fails: every line masked, every failure one line.

`say` and `emit` are the only ways a command writes: both pass the text through
`core.secrets.mask` with the secrets the settings hold, so no password, key or token reaches a
terminal or a log collector. `reveal` alone prints unmasked: a token the user just asked to be
made (`pulse capture-token`). `guarded` wraps each command: a failure becomes one line on stderr,
`pulse: <what went wrong>`, with no traceback and no class path, and the exit status the
contract gives (1, 3 for a training in progress, 4 for too few annotations); `pulse --debug ...`
shows the traceback as well.
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable
from typing import Any

import typer

from pulse_pipeline.core.secrets import mask

_state = {"debug": False}


class UserError(Exception):
    """Exit 1 with this one line on stderr."""

    exit_code = 1


class TrainingInProgress(UserError):
    """Exit 3: another training of the family holds the lock."""

    exit_code = 3


class NotEnoughAnnotations(UserError):
    """Exit 4: too few new annotations to train without --force."""

    exit_code = 4


def set_debug(on: bool) -> None:
    _state["debug"] = on


def secrets() -> list[str]:
    """The configured secrets, for masking (none when the settings themselves cannot be read)."""
    from pulse_pipeline.settings import get_settings

    try:
        return get_settings().secret_values()
    except Exception:  # noqa: BLE001 - a bad setting is reported by the command itself
        return []


def say(text: str = "", *, err: bool = False) -> None:
    typer.echo(mask(text, secrets()), err=err)


def reveal(text: str) -> None:
    """Print a secret the user asked to see, unmasked: the one exception (a new capture token,
    shown once and stored nowhere). Never for anything read from the settings."""
    typer.echo(text)


def emit(obj: dict[str, Any]) -> None:
    """One JSON object on stdout (--json)."""
    say(json.dumps(obj, default=str, sort_keys=False))


def one_line(exc: BaseException) -> str:
    """An exception as one line a person can act on: its message, never its class path."""
    text = " ".join(str(exc).split())
    return text or f"{type(exc).__name__} (no message)"


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose failures are one masked line on stderr and the contract's exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            say("pulse: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                say("".join(traceback.format_exception(exc)).rstrip(), err=True)
            say(f"pulse: {one_line(exc)}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None

    return wrapper
