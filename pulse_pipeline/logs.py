"""How pulse's own processes log: libraries' chatter kept quiet, secrets masked.

`pulse` and `python -m pulse_pipeline.core.training` call `quiet_libraries()` first: MLflow creating
its tables, the offline kernels notice and shard-writing progress bars stay out of the terminal,
and a warning that still reaches the root logger is printed masked (`core.secrets`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

# Their defaults, set before the libraries are imported; a value the user exported wins.
QUIET = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def quiet_libraries(secrets: Iterable[str] = ()) -> None:
    from pulse_pipeline.core.secrets import SecretsFilter

    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    for name in ("kernels", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not root.handlers:  # instead of logging's last resort: the same stderr, masked
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.addFilter(SecretsFilter(secrets))
        root.addHandler(handler)
