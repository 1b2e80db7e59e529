"""Dagster resources: how assets reach the annotation store."""

import os

import dagster as dg
from pydantic import PrivateAttr

from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings


class AnnotationStore(dg.ConfigurableResource):
    """The annotation store (SQLite by default; PostgreSQL through PULSE_DATABASE_URL)."""

    database_url: str

    _store: Store | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = Store(self.database_url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()

    @property
    def store(self) -> Store:
        if self._store is None:  # used outside a run (e.g. a direct call in a test)
            self._store = Store(self.database_url)
        return self._store


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for this environment. A database URL from the environment stays an EnvVar,
    so a password in it is never shown in the UI."""
    settings = get_settings()
    url = dg.EnvVar("PULSE_DATABASE_URL") if os.environ.get("PULSE_DATABASE_URL") else settings.database_url
    return {"annotation_store": AnnotationStore(database_url=url)}
