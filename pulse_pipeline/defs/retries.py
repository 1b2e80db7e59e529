"""`@retry_transient`: a step that lost its database or object-store connection is tried again, and
every error a step fails with leaves it masked and in one line.

Put it under `@dg.asset` (the asset function must take `context` first). A transient error (see
`core.transient`: a dropped or refused connection, a timeout, an S3 SlowDown or 5xx) becomes
`dg.RetryRequested` with exponential backoff (10 s, 20 s, 40 s by default:
PULSE_RETRY_BASE_SECONDS), and the log says why; after the
last retry it fails the step. Anything else, a training error included, fails the step at once: it
would fail the same way again.

A failing step raises `StepError`: the original error's message in one line, every secret masked
(`core.secrets`, with the settings' secrets), and the original traceback's frames, so neither the
Dagster event log nor `pulse` ever stores or prints a password, and `pulse` can name the cause.
"""

import functools
from collections.abc import Callable
from typing import Any

import dagster as dg

from pulse_pipeline.core.secrets import mask
from pulse_pipeline.core.transient import transient_cause

MAX_RETRIES = 3
BASE_SECONDS: float | None = None  # the first wait (each later one doubles); None: PULSE_RETRY_BASE_SECONDS


class StepError(Exception):
    """A step's error, masked and in one line; the traceback is the original's."""


def backoff_seconds(retry_number: int, base: float | None = None) -> float:
    """Seconds to wait before retry `retry_number + 1`."""
    if base is None:
        from pulse_pipeline.settings import get_settings

        base = BASE_SECONDS if BASE_SECONDS is not None else get_settings().pulse_retry_base_seconds
    return base * 2**retry_number


def masked(exc: BaseException, suffix: str = "") -> StepError:
    """`exc` as a StepError: one masked line (the class's name when it has no message), its frames kept."""
    from pulse_pipeline.settings import get_settings

    try:
        known = get_settings().secret_values()
    except Exception:  # noqa: BLE001 - settings that cannot be read hold no secret to mask
        known = []
    text = " ".join(str(exc).split()) or type(exc).__name__
    return StepError(mask(text + suffix, known)).with_traceback(exc.__traceback__)


def retry_transient(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def _with_retries(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (dg.RetryRequested, dg.Failure):
            raise  # the body already decided
        except Exception as exc:
            cause = transient_cause(exc)
            if cause is None:
                raise masked(exc) from None
            context = kwargs["context"] if "context" in kwargs else args[0]
            attempt = context.retry_number
            why = mask(f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}")
            if attempt >= MAX_RETRIES:
                context.log.error(f"transient error persisted after {MAX_RETRIES} retries ({why})")
                raise masked(exc, f" (still after {MAX_RETRIES} retries)") from None
            wait = backoff_seconds(attempt)
            context.log.warning(f"transient error ({why}): retry {attempt + 1} of {MAX_RETRIES} in {wait:g} s")
            raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from masked(exc)

    return _with_retries
