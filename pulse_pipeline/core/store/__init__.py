"""The annotation store: SQLite by default, PostgreSQL through PULSE_DATABASE_URL.

`Store(url)` is one `Database` (engine, migrations, transactions) with a small repository per
table family:

    store.annotations   annotations and quarantined lines (annotations.py)
    store.fixes         invalidations and replaced days (data_fixes.py)
    store.sessions      closed review sessions (review_sessions.py)
    store.locks         the training lock rows (locks.py; the policy is core/training/lock.py)
    store.requests      retrain requests: who asked for a retrain, when and why (retrain_requests.py)
    store.oracle        the oracle's labelling journal: answers and their cost (oracle_labels.py)

Adapter version records and the deployments audit trail belong to the registry
(`core/registry/records.py`), over the same database.
"""

from __future__ import annotations

from pulse_pipeline.core.store.annotations import Annotations, DayAudit, day_bounds
from pulse_pipeline.core.store.data_fixes import DataFixes, Invalidation, InvalidationError
from pulse_pipeline.core.store.database import Database, StoreError
from pulse_pipeline.core.store.locks import LockHolder, LockRow, TrainingLocks
from pulse_pipeline.core.store.oracle_labels import JournalRow, OracleLabels
from pulse_pipeline.core.store.retrain_requests import RetrainRequest, RetrainRequests
from pulse_pipeline.core.store.review_sessions import ClosedSession, ReviewSessions, SessionClosedError
from pulse_pipeline.core.store.schema import (
    adapter_versions,
    annotations,
    deployments,
    ingestion_tallies,
    ingestions,
    invalidations,
    metadata,
    oracle_labels,
    quarantine,
    retrain_requests,
    review_sessions,
    training_locks,
)

__all__ = [
    "Store",
    "StoreError",
    "Database",
    "Annotations",
    "DataFixes",
    "ReviewSessions",
    "TrainingLocks",
    "RetrainRequest",
    "RetrainRequests",
    "OracleLabels",
    "JournalRow",
    "DayAudit",
    "Invalidation",
    "InvalidationError",
    "ClosedSession",
    "SessionClosedError",
    "LockHolder",
    "LockRow",
    "day_bounds",
    "adapter_versions",
    "annotations",
    "deployments",
    "ingestion_tallies",
    "ingestions",
    "invalidations",
    "metadata",
    "oracle_labels",
    "quarantine",
    "retrain_requests",
    "review_sessions",
    "training_locks",
]


class Store(Database):
    """The database and its repositories; use as a context manager to dispose of the engine."""

    def __init__(self, url: str, *, upgrade: bool = True, echo: bool = False):
        super().__init__(url, upgrade=upgrade, echo=echo)
        self.annotations = Annotations(self)
        self.fixes = DataFixes(self)
        self.sessions = ReviewSessions(self)
        self.locks = TrainingLocks(self)
        self.requests = RetrainRequests(self)
        self.oracle = OracleLabels(self)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()
