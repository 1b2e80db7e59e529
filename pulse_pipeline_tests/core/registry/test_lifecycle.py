"""The lifecycle, written once in core/registry/lifecycle.py: the moves allowed between states,
what an evaluation does to a state, and when a version may be served."""

from __future__ import annotations

import itertools

import pytest

from pulse_pipeline.core.registry.errors import LifecycleError
from pulse_pipeline.core.registry.lifecycle import (
    MOVES,
    State,
    check_move,
    promotion_refusal,
    state_after_evaluation,
)

S = State
FAMILY = "intent-router"
VERSION = "intent-router-20261122-0930"

# The lifecycle as the module's docstring and the registry's verbs describe it, written out
# independently of MOVES so that a changed table is noticed.
ALLOWED = {
    S.TRAINING: {S.PUBLISHED, S.FAILED},
    S.PUBLISHED: {S.EVALUATED, S.CANARY, S.PRODUCTION, S.REMOVED},
    S.EVALUATED: {S.CANARY, S.PRODUCTION, S.REMOVED},
    S.CANARY: {S.PRODUCTION, S.RETIRED},
    S.PRODUCTION: {S.RETIRED},
    S.RETIRED: {S.CANARY, S.PRODUCTION, S.REMOVED},
    S.FAILED: set(),
    S.REMOVED: set(),
}
PAIRS = list(itertools.product(State, State))
ALLOWED_PAIRS = [(old, new) for old, new in PAIRS if new in ALLOWED[old]]
FORBIDDEN_PAIRS = [(old, new) for old, new in PAIRS if new not in ALLOWED[old]]


def test_the_move_table_is_the_documented_one():
    assert {old: set(new) for old, new in MOVES.items()} == ALLOWED


@pytest.mark.parametrize(("old", "new"), ALLOWED_PAIRS, ids=[f"{o}->{n}" for o, n in ALLOWED_PAIRS])
def test_every_allowed_move_passes(old: State, new: State):
    check_move(FAMILY, VERSION, old, new)
    check_move(FAMILY, VERSION, old.value, new.value)  # the store's plain strings too


@pytest.mark.parametrize(("old", "new"), FORBIDDEN_PAIRS, ids=[f"{o}->{n}" for o, n in FORBIDDEN_PAIRS])
def test_every_forbidden_move_raises_naming_version_and_states(old: State, new: State):
    with pytest.raises(
        LifecycleError, match=rf"^{FAMILY} {VERSION} is {old}: it cannot become {new} \("
    ) as err:
        check_move(FAMILY, VERSION, old, new)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (S.TRAINING, S.PRODUCTION, "failed, published"),
        (S.FAILED, S.PUBLISHED, "nothing: it is final"),
        (S.REMOVED, S.PUBLISHED, "nothing: it is final"),
        (S.PRODUCTION, S.EVALUATED, "retired"),
        (S.CANARY, S.REMOVED, "production, retired"),
    ],
)
def test_a_refused_move_says_what_is_allowed(old: State, new: State, allowed: str):
    with pytest.raises(LifecycleError, match=rf"\(from {old}: {allowed}\)$"):
        check_move(FAMILY, VERSION, old, new)


def test_an_unknown_state_is_not_a_move():
    with pytest.raises(ValueError, match="'live' is not a valid State"):
        check_move(FAMILY, VERSION, S.PUBLISHED, "live")


@pytest.mark.parametrize(
    ("state", "after"),
    [
        (S.PUBLISHED, S.EVALUATED),
        (S.EVALUATED, S.EVALUATED),  # evaluated again: the decision changes, not the state
        (S.CANARY, S.CANARY),
        (S.PRODUCTION, S.PRODUCTION),
        (S.RETIRED, S.RETIRED),
    ],
)
def test_state_after_evaluation(state: State, after: State):
    assert state_after_evaluation(state) is after
    assert state_after_evaluation(state.value) is after
    if after is not state:  # record_evaluation moves the record only when the state changes
        check_move(FAMILY, VERSION, state, after)


@pytest.mark.parametrize("state", [S.TRAINING, S.FAILED, S.REMOVED])
def test_a_version_without_files_cannot_be_evaluated(state: State):
    with pytest.raises(LifecycleError, match=f"a version that is {state} cannot be evaluated"):
        state_after_evaluation(state)


# -- promotion_refusal ------------------------------------------------------------------------

PROMOTABLE = [S.PUBLISHED, S.EVALUATED, S.CANARY, S.PRODUCTION, S.RETIRED]


def _refusal(state: State, decision: str | None, *, force: bool = False, reason: str = "") -> str | None:
    return promotion_refusal(FAMILY, VERSION, state, decision, force=force, reason=reason)


@pytest.mark.parametrize("state", PROMOTABLE)
@pytest.mark.parametrize("force", [False, True])
def test_deploy_is_promoted_without_force(state: State, force: bool):
    assert _refusal(state, "DEPLOY", force=force) is None


@pytest.mark.parametrize("state", PROMOTABLE)
@pytest.mark.parametrize(
    ("decision", "judged"),
    [
        ("REVIEW", "was judged REVIEW by the promotion gate"),
        ("FAIL", "was judged FAIL by the promotion gate"),
        (None, "was never evaluated"),
    ],
)
def test_anything_but_deploy_needs_force_with_a_reason(state: State, decision: str | None, judged: str):
    refused = _refusal(state, decision, reason="the reason alone is not enough")
    assert (
        refused
        == f"{FAMILY} {VERSION} {judged}; --force with --reason promotes it anyway, and it is recorded"
    )
    for blank in ("", "   ", "\t\n"):
        refused = _refusal(state, decision, force=True, reason=blank)
        assert refused == f"{FAMILY} {VERSION} {judged}: --force needs a --reason, for the audit trail"
    assert _refusal(state, decision, force=True, reason="ops override for incident 42") is None


@pytest.mark.parametrize("state", [S.TRAINING, S.FAILED, S.REMOVED])
@pytest.mark.parametrize(
    ("decision", "force"), [("DEPLOY", False), ("DEPLOY", True), ("FAIL", True), (None, True)]
)
def test_training_failed_and_removed_are_never_promoted(state: State, decision: str | None, force: bool):
    refused = _refusal(state, decision, force=force, reason="ops override")
    assert refused == f"{FAMILY} {VERSION} is {state}: it cannot be promoted"
    assert (
        promotion_refusal(FAMILY, VERSION, state.value, decision, force=force, reason="ops override")
        == refused
    )
