"""Batch labelling with the oracle (`pulse label`): a corpus becomes annotations of the family.

- It refuses to start unless the family's current prompt version passed calibration and
  validation (core/oracle/calibration.py); `override` (a reason) starts it anyway, and the reason
  is recorded in the result and in the journal's `labelled_by`.
- One labelling of a family at a time: a lock row in the store (the training lock's table and
  policy, key `label:<family>`), so two runs never pay twice for the same item.
- Every answer is journalled (`oracle_labels`) as soon as it is paid for, before its annotation is
  stored: a run killed at any point resumes without asking again, and stores what the dead run
  paid for but did not store.
- It stops at the cost cap (`max_cost`, the job's spend over every run of this prompt version on
  these items): it never starts a call that the mean cost so far says would go over it.
- Unparseable answers are retried (sampled) `oracle.parse_retries` times, then quarantined (the
  store's quarantine, with the reply and why); a failed call is not journalled, so the next run
  asks again.
- Output: annotations of the family with `source: oracle`, `annotator: oracle:<model>@<version>`
  and ids derived from the version and the item (core/oracle/prompts.py: `record`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.oracle.calibration import PromptState, prompt_state
from pulse_pipeline.core.oracle.corpus import CorpusItem
from pulse_pipeline.core.oracle.oracles import Asked, Oracle, ask_many
from pulse_pipeline.core.oracle.prompts import OraclePrompt, record
from pulse_pipeline.core.store import JournalRow, Store, quarantine


class NotCalibrated(RuntimeError):
    """The prompt version has not passed calibration and validation; the message says what to run."""


@dataclass
class LabelResult:
    family: str
    prompt_version: str
    oracle: str
    items: int  # in the corpus
    labelled: int = 0  # this run
    quarantined: int = 0  # this run
    failed: int = 0  # calls that failed this run (not journalled: asked again next time)
    already_done: int = 0  # answered by an earlier run
    recovered: int = 0  # paid for by an earlier run that died before storing them; stored now
    remaining: int = 0  # not answered yet (the cap, failures)
    cost: float = 0.0  # this run
    total_cost: float = 0.0  # every run of this version on these items
    stopped: str | None = None  # why it stopped before the end ("cost cap 0.5 reached")
    override: str | None = None  # the reason a user gave to label without a passed calibration
    state: dict[str, Any] = field(default_factory=dict)
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refusal(family: str, state: PromptState, corpus: str = "CORPUS") -> str:
    """Why `pulse label` will not start, and what to run."""
    return (
        f"prompt version {state.version} of {family} has not passed calibration and validation "
        f"({state.describe()}): run `pulse calibrate --family {family} --input {corpus}`, then "
        f"`pulse calibrate --family {family} --input {corpus} --validate --seed 1`, or label "
        "anyway with --override-calibration REASON"
    )


def label_corpus(
    store: Store,
    artifacts: ArtifactStore,
    config: PulseConfig,
    family: FamilyConfig,
    prompt: OraclePrompt,
    oracle: Oracle,
    items: list[CorpusItem],
    *,
    who: str,
    max_cost: float | None = None,
    override: str | None = None,
    chunk: int | None = None,
    on_progress: Callable[[LabelResult], None] = lambda _: None,
    lock_holder: Any = None,
) -> LabelResult:
    """Label the items not yet answered for this prompt version; see the module's doc."""
    from pulse_pipeline.core.training.lock import this_process

    state = prompt_state(artifacts, family.name, prompt.version)
    if not state.ready and not (override or "").strip():
        raise NotCalibrated(refusal(family.name, state))
    result = LabelResult(
        family=family.name,
        prompt_version=prompt.version,
        oracle=oracle.name,
        items=len(items),
        override=(override or "").strip() or None if not state.ready else None,
        state={"calibration": state.calibration, "validation": state.validation},
    )
    by = who if result.override is None else f"{who} (override: {result.override})"
    with job_lock(store, f"label:{family.name}", lock_holder or this_process(who), family, "a labelling"):
        _label(store, config, family, prompt, oracle, items, result, by, max_cost, chunk, on_progress)
    return result


@contextmanager
def job_lock(store: Store, key: str, holder: Any, family: FamilyConfig, what: str) -> Iterator[None]:
    """One oracle job of a kind per family (the training lock's table and policy, another key);
    TrainingLocked says "<family>: <what> is in progress since ..."."""
    from pulse_pipeline.core.training.lock import TrainingLock, TrainingLocked

    try:
        with TrainingLock(store.locks).hold(key[:64], holder):
            yield
    except TrainingLocked as exc:
        message = str(exc).replace("training already in progress", f"{what} is in progress")
        raise TrainingLocked(f"{family.name}: {message}") from None


def _label(
    store: Store,
    config: PulseConfig,
    family: FamilyConfig,
    prompt: OraclePrompt,
    oracle: Oracle,
    items: list[CorpusItem],
    result: LabelResult,
    by: str,
    max_cost: float | None,
    chunk: int | None,
    on_progress: Callable[[LabelResult], None],
) -> None:
    journal = store.oracle.rows(family.name, prompt.version)
    wanted = {item.id for item in items}
    done = {i: row for i, row in journal.items() if i in wanted}
    result.already_done = len(done)
    result.total_cost = sum(row.cost for row in done.values())
    # What a dead run paid for but did not store.
    stored = store.oracle.stored_ids(family.name, f"oracle-{prompt.version}-")
    lost = [row.record for row in done.values() if row.record is not None and row.record["id"] not in stored]
    if lost:
        store_records(store, config, family, f"oracle:{family.name}@{prompt.version}", lost)
        result.recovered = len(lost)
    pending = [item for item in items if item.id not in done]
    size = chunk or max(1, oracle.max_concurrency)
    answered = len(done)
    while pending:
        batch = pending[:size]
        if max_cost is not None:
            fits = affordable(max_cost, result.total_cost, answered, len(batch))
            if fits == 0:
                result.stopped = f"cost cap {max_cost:g} reached (spent {result.total_cost:.6g})"
                break
            batch = batch[:fits]
        pending = pending[len(batch) :]
        asked = ask_many(
            oracle,
            prompt,
            family,
            batch,
            retries=family.oracle.parse_retries,
            max_tokens=family.oracle.max_new_tokens,
        )
        records = []
        for item, a in zip(batch, asked, strict=True):
            if a.failed:
                result.failed += 1
                result.first_error = result.first_error or a.error
                continue
            row = _journal_row(family, prompt, oracle, item, a)
            at = dt.datetime.now(dt.UTC)
            if not store.oracle.add(family.name, prompt.version, row, by=by, at=at):
                continue  # another run answered it first (the lock makes this rare)
            answered += 1
            result.cost += a.cost
            result.total_cost += a.cost
            if row.record is not None:
                records.append(row.record)
                result.labelled += 1
            else:
                why = f"oracle answer for item {item.id} after {a.attempts} attempt(s): {a.error}"
                quarantine_reply(
                    store, family, f"oracle:{family.name}@{prompt.version}", why, a.reply.encode(), at
                )
                result.quarantined += 1
        if records:
            store_records(store, config, family, f"oracle:{family.name}@{prompt.version}", records)
        on_progress(result)
    result.remaining = len(items) - len(done) - result.labelled - result.quarantined


def affordable(max_cost: float, spent: float, answered: int, wanted: int = 1) -> int:
    """How many of `wanted` more calls fit under the cap, at the mean cost of the calls so far
    (all of them while nothing has cost anything yet; none once the spend reached the cap)."""
    room = max_cost - spent
    if room <= 0:
        return 0
    mean = spent / answered if answered else 0.0
    return wanted if mean == 0 else min(wanted, max(0, math.floor(room / mean + 1e-9)))


def _journal_row(
    family: FamilyConfig, prompt: OraclePrompt, oracle: Oracle, item: CorpusItem, a: Asked
) -> JournalRow:
    rec = record(family, item, a.fields, oracle=oracle.model, version=prompt.version) if a.fields else None
    return JournalRow(
        item_id=item.id,
        status="labelled" if rec is not None else "quarantined",
        record=rec,
        reply=a.reply,
        error=a.error,
        oracle=oracle.name,
        attempts=a.attempts,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
        cost=a.cost,
    )


def store_records(
    store: Store, config: PulseConfig, family: FamilyConfig, source: str, records: list[dict[str, Any]]
) -> None:
    """Ingest an oracle job's records; the store refusing one is a bug, not bad input."""
    from pulse_pipeline.core.ingestion import ingest_lines

    got = ingest_lines(store, [orjson.dumps(r) for r in records], config, source=source)
    if got.quarantined:
        raise RuntimeError(
            f"{got.quarantined} record(s) of {family.name} from {source} were refused by the store: {got.reasons[:1]}"
        )


def quarantine_reply(
    store: Store, family: FamilyConfig, source: str, reason: str, raw: bytes, at: dt.datetime
) -> None:
    """An oracle's reply that gave nothing usable, with why (shown by `pulse quarantine`)."""
    with store.begin() as conn:
        conn.execute(
            quarantine.insert().values(
                source_file=source,
                line_number=None,
                raw=raw,
                raw_size=len(raw),
                reason=reason,
                family=family.name,
                day=at.date(),
                quarantined_at=at,
            )
        )
