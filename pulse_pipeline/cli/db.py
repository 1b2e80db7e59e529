"""`pulse db upgrade`: the annotation store's schema."""

from __future__ import annotations

from pulse_pipeline.cli.app import JsonFlag, command, db_app
from pulse_pipeline.cli.output import emit, say
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings


@command(db_app, "upgrade")
def db_upgrade(as_json: JsonFlag = False) -> None:
    """Apply the store's migrations (also done on first use)."""
    with Store(get_settings().database_url, upgrade=False) as store:
        before = store.revision()
        after = store.upgrade()
    if as_json:
        emit({"from_revision": before, "revision": after})
    else:
        say(f"annotation store at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))
