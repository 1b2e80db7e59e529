"""`@retry_transient`: a step that lost its database or object-store connection is tried again.

Put it under `@dg.asset` (the asset function must take `context` first). A transient error (see
`core.transient`: a dropped or refused connection, a timeout, an S3 SlowDown or 5xx) becomes
`dg.RetryRequested` with exponential backoff (10 s, 20 s, 40 s), and the log says why; after the
last retry the original error fails the step. Anything else, a training error included, fails the
step at once: it would fail the same way again.
"""

import functools
from collections.abc import Callable
from typing import Any

import dagster as dg

from pulse_pipeline.core.transient import transient_cause

MAX_RETRIES = 3
BASE_SECONDS = 10.0  # the first wait; each later one doubles


def backoff_seconds(retry_number: int, base: float | None = None) -> float:
    """Seconds to wait before retry `retry_number + 1`."""
    return (BASE_SECONDS if base is None else base) * 2**retry_number


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
                raise
            context = kwargs["context"] if "context" in kwargs else args[0]
            attempt = context.retry_number
            why = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            if attempt >= MAX_RETRIES:
                context.log.error(f"transient error persisted after {MAX_RETRIES} retries ({why})")
                raise
            wait = backoff_seconds(attempt)
            context.log.warning(
                f"transient error ({why}): retry {attempt + 1} of {MAX_RETRIES} in {wait:g} s"
            )
            raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from exc

    return _with_retries
