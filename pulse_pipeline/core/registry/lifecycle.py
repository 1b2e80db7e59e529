"""A version's life, written once: its states, the moves allowed between them, and what may be promoted.

    training   -> published, failed
    published  -> evaluated, removed; canary or production with --force and a reason only
    evaluated  -> canary, production, removed
    canary     -> production, retired
    production -> retired
    retired    -> canary, production (a rollback), removed
    failed, removed: final

- training: the record exists and nothing is visible yet; the files are written under a
  staging name.
- published: the files are complete, hashed and visible under the version's name.
- evaluated: the promotion gate decided (the decision is kept beside the state; a later
  evaluation replaces it).
- canary: served beside production to a share of the traffic.
- production: named by current.json.
- retired: served once, no longer (a rollback can make it production again).
- failed: the training never published (an error, a kill, a lost database); nothing to serve.
- removed: cleanup deleted the files; the record stays for the audit.

A version is promoted only when its latest evaluation said DEPLOY, or with `force` and a reason
that the audit trail records; a version in training, failed or removed never is, and a folder
without a record is not a version at all (reconcile adopts or removes it).
"""

from __future__ import annotations

from enum import StrEnum

from pulse_pipeline.core.evaluation.config import Decision
from pulse_pipeline.core.registry.errors import LifecycleError


class State(StrEnum):
    TRAINING = "training"
    PUBLISHED = "published"
    EVALUATED = "evaluated"
    CANARY = "canary"
    PRODUCTION = "production"
    RETIRED = "retired"
    FAILED = "failed"
    REMOVED = "removed"


S = State
MOVES: dict[State, frozenset[State]] = {
    S.TRAINING: frozenset({S.PUBLISHED, S.FAILED}),
    # Served straight from published only with --force (no decision): `promotion_refusal` says so.
    S.PUBLISHED: frozenset({S.EVALUATED, S.CANARY, S.PRODUCTION, S.REMOVED}),
    S.EVALUATED: frozenset({S.CANARY, S.PRODUCTION, S.REMOVED}),
    S.CANARY: frozenset({S.PRODUCTION, S.RETIRED}),
    S.PRODUCTION: frozenset({S.RETIRED}),
    S.RETIRED: frozenset({S.CANARY, S.PRODUCTION, S.REMOVED}),
    S.FAILED: frozenset(),
    S.REMOVED: frozenset(),
}
"""state -> the states it may move to. Evaluating a canary, production or retired version again
changes its decision, not its state. A served version (canary, production) is never removed: it is
retired first."""

SERVED = frozenset({S.CANARY, S.PRODUCTION})
VISIBLE = frozenset({S.PUBLISHED, S.EVALUATED, S.CANARY, S.PRODUCTION, S.RETIRED})
"""States whose files are complete under the version's name."""
NEVER_PROMOTED = frozenset({S.TRAINING, S.FAILED, S.REMOVED})


def check_move(family: str, version: str, old: State | str, new: State | str) -> None:
    """Raise LifecycleError unless `old` -> `new` is allowed."""
    old, new = State(old), State(new)
    if new not in MOVES[old]:
        allowed = ", ".join(sorted(MOVES[old])) or "nothing: it is final"
        raise LifecycleError(f"{family} {version} is {old}: it cannot become {new} (from {old}: {allowed})")


def state_after_evaluation(state: State | str) -> State:
    """A published version becomes evaluated; any other visible one keeps its state."""
    state = State(state)
    if state not in VISIBLE:
        raise LifecycleError(f"a version that is {state} cannot be evaluated")
    return S.EVALUATED if state is S.PUBLISHED else state


def promotion_refusal(
    family: str, version: str, state: State | str, decision: str | None, *, force: bool, reason: str
) -> str | None:
    """Why `version` may not be served, or None when it may. Served means production or canary.

    DEPLOY is needed; anything else (REVIEW, FAIL, never evaluated) needs `force` with a reason,
    which the audit trail records. Training, failed and removed versions are never served."""
    state = State(state)
    if state in NEVER_PROMOTED:
        return f"{family} {version} is {state}: it cannot be promoted"
    if decision == Decision.DEPLOY:
        return None
    judged = f"was judged {decision} by the promotion gate" if decision else "was never evaluated"
    if not force:
        return f"{family} {version} {judged}; --force with --reason promotes it anyway, and it is recorded"
    if not reason.strip():
        return f"{family} {version} {judged}: --force needs a --reason, for the audit trail"
    return None
