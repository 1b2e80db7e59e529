"""A serving change rolled out on every vLLM replica before anything else moves.

A promotion or a rollback changes the versions of a family that vLLM serves. Before current.json,
the records, the audit trail and the MLflow aliases follow, every replica (PULSE_VLLM_URL lists
them, comma-separated) must hold each version the new pointer serves, under its immutable name
`family@version`, and answer the family's smoke prompts with it: its golden prompts
(`golden/<family>.jsonl`, the first `SMOKE_PROMPTS`, formatted as the adapter was trained to read
them), each answer non-empty and without error. When a replica fails, the names this rollout
loaded are unloaded again from every replica, so each keeps serving exactly what it served, and
the change is partial: promotion.py then moves nothing and says which replicas failed and why.

Names are never reloaded. `family@version` is only ever loaded from that version's own folder,
whose files never change once published (their hashes are checked before every promotion), and
`VllmServer.load_adapter` refuses a name already loaded from another folder. Reloading one name
with other weights would let vLLM answer from prefix-cache blocks computed by the old weights
(vllm issue 42125). A rollback therefore serves the previous version's own name (still loaded:
the previous version is never unloaded as a spare), and a version loaded again after an unload
comes back with the same weights under the same name.

vLLM serves chat families only: a classification or regression adapter is an encoder with a head,
answered by peft, so its family's smoke test is None and no replica is asked anything.

`plan` and `Rollout` are plain data (tested without a server); `roll_out` talks to the replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.registry import pointer

if TYPE_CHECKING:
    from pulse_pipeline.core.families import FamilyConfig, PulseConfig
    from pulse_pipeline.core.serving import VllmServer

SMOKE_PROMPTS = 4  # golden prompts each replica answers with each served version
SMOKE_MAX_TOKENS = 16  # enough to tell an answer from none
_GENERIC_PROMPT = "Reply with one word: ready."


@dataclass(frozen=True)
class SmokeTest:
    """The prompts every replica must answer with a version before it serves traffic."""

    prompts: tuple[tuple[dict[str, Any], ...], ...]  # each a conversation (OpenAI chat messages)
    source: str  # where they come from, for messages
    max_tokens: int = SMOKE_MAX_TOKENS


SmokeTests = Callable[[str], SmokeTest | None]  # family -> its smoke test; None: vLLM does not serve it

GENERIC = SmokeTest(prompts=(({"role": "user", "content": _GENERIC_PROMPT},),), source="a generic prompt")


def smoke_test(family: FamilyConfig, config: PulseConfig, limit: int = SMOKE_PROMPTS) -> SmokeTest | None:
    """The family's smoke test: the first `limit` golden prompts; for a chat family without a
    golden file, one generic prompt after its system prompt; None for a family vLLM does not serve
    (classification, regression). A golden file that cannot be read raises EvalSetError."""
    from pulse_pipeline.core.evaluation.sets import EvalSetError, from_records_file
    from pulse_pipeline.core.families import TaskKind

    if family.task is not TaskKind.chat_sft:
        return None
    golden = family.evaluation.golden_file
    if golden is None:
        system = {"role": "system", "content": family.prompts["system"]}
        return SmokeTest(
            ((system, {"role": "user", "content": _GENERIC_PROMPT}),), "a generic prompt (no golden file)"
        )
    examples = from_records_file(family, config, golden, "golden").examples[:limit]
    if not examples:  # every record a duplicate or a feedback without an answer
        raise EvalSetError(f"{golden}: no record makes a prompt to smoke-test {family.name} with")
    return SmokeTest(
        tuple(tuple(e.input) for e in examples), f"{Path(golden).name}, first {len(examples)} prompts"
    )


def golden_smoke_tests(config_path: Path) -> SmokeTests:
    """`smoke_test` of the families of the pulse.yaml at `config_path`, read when first asked."""
    loaded: dict[str, PulseConfig] = {}

    def lookup(family: str) -> SmokeTest | None:
        from pulse_pipeline.core.families import load_config

        if "config" not in loaded:
            loaded["config"] = load_config(config_path)
        config = loaded["config"]
        return smoke_test(config.family(family), config)

    return lookup


# -- the plan and its result (plain data) -----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a change needs on every replica."""

    family: str
    serve: dict[str, str]  # every version the new pointer serves -> its folder as the replicas see it
    new: tuple[str, ...]  # of those, the versions the old pointer did not serve
    smoke: SmokeTest


def plan(
    family: str,
    before: pointer.Pointer | None,
    after: pointer.Pointer,
    folder: Callable[[str], str],
    smoke: SmokeTest,
) -> Plan:
    """The plan of a change from `before` to `after` (a pointer may be unchanged: a re-sync)."""
    served = list(pointer.shares(after))
    return Plan(
        family,
        {v: folder(v) for v in served},
        tuple(v for v in served if v not in pointer.shares(before)),
        smoke,
    )


@dataclass
class ReplicaRollout:
    """One replica's part: what this rollout loaded there, and why it failed (None: it did not)."""

    url: str
    error: str | None = None
    loaded: list[str] = field(default_factory=list)  # names not loaded there before this rollout
    unloaded: list[str] = field(default_factory=list)  # of those, new to the change: unloaded if partial
    left_loaded: list[str] = field(default_factory=list)  # ... and those that could not be: "name: why"

    @property
    def status(self) -> str:
        """`ok` or the error, and any name left loaded and unused."""
        text = self.error or "ok"
        return f"{text} (left loaded, unused: {'; '.join(self.left_loaded)})" if self.left_loaded else text


@dataclass
class Rollout:
    """Every replica's part of a change; partial when any replica failed."""

    replicas: list[ReplicaRollout]

    @property
    def failed(self) -> list[ReplicaRollout]:
        return [r for r in self.replicas if r.error is not None]

    @property
    def partial(self) -> bool:
        return bool(self.failed)

    @property
    def status(self) -> str:
        """`updated`, or `partial: N of M replicas failed: <each replica's error>`."""
        if not self.failed:
            return "updated"
        errors = "; ".join(
            r.status if r.error else f"{r.url}: {r.status}" for r in self.replicas if r.status != "ok"
        )
        return f"partial: {len(self.failed)} of {len(self.replicas)} replicas failed: {errors}"

    @property
    def summary(self) -> str:
        """The status in at most 32 characters, for the audit trail's `serving` column."""
        return (
            "updated"
            if not self.failed
            else f"partial: {len(self.failed)}/{len(self.replicas)} replicas failed"
        )

    def report(self) -> list[dict[str, str]]:
        """One {"url", "status"} per replica, for the CLI and the Dagster metadata."""
        return [{"url": r.url, "status": r.status} for r in self.replicas]


def refused(servers: Sequence[VllmServer], why: str) -> Rollout:
    """A rollout no replica can take (e.g. adapters the servers cannot read): each fails with `why`."""
    return Rollout([ReplicaRollout(s.display_url, error=why) for s in servers])


# -- on the replicas ----------------------------------------------------------------------------------


def roll_out(servers: Sequence[VllmServer], planned: Plan) -> Rollout:
    """Load and smoke-test `planned` on every replica at once. When any fails, the versions new to
    the change that this rollout loaded are unloaded again, so no replica serves them; versions the
    pointer already served stay loaded where they were loaded (a re-sync repairs what it can)."""
    from pulse_pipeline.core.serving import served_name

    with ThreadPoolExecutor(max_workers=max(1, len(servers)), thread_name_prefix="rollout") as pool:
        done = Rollout(list(pool.map(lambda s: _on_replica(s, planned), servers)))
    if done.partial:
        new = {served_name(planned.family, v) for v in planned.new}
        for server, replica in zip(servers, done.replicas, strict=True):
            _undo(server, replica, new)
    return done


def _on_replica(server: VllmServer, planned: Plan) -> ReplicaRollout:
    from pulse_pipeline.core.serving import ServingError, served_name

    out = ReplicaRollout(server.display_url)
    names = [served_name(planned.family, v) for v in planned.serve]
    try:
        before = set(server.adapters())
        for name, folder in zip(names, planned.serve.values(), strict=True):
            server.load_adapter(name, folder)  # a no-op when loaded from this folder; refused from another
            if name not in before:
                out.loaded.append(name)
        listed = server.adapters()
        missing = [n for n in names if n not in listed]
        if missing:
            raise ServingError(f"vLLM server at {out.url}: {', '.join(missing)} not listed by GET /v1/models")
        for name in names:
            _smoke(server, name, planned.smoke)
    except ServingError as exc:
        out.error = str(exc)
    return out


def _smoke(server: VllmServer, name: str, smoke: SmokeTest) -> None:
    from pulse_pipeline.core.serving import ServingError

    replies = server.chat_many(name, smoke.prompts, max_tokens=smoke.max_tokens)
    for number, (text, _) in enumerate(replies, start=1):
        if not text.strip():
            raise ServingError(
                f"vLLM server at {server.display_url}: {name} answered nothing to smoke prompt {number} "
                f"of {len(replies)} ({smoke.source})"
            )


def _undo(server: VllmServer, replica: ReplicaRollout, new: set[str]) -> None:
    from pulse_pipeline.core.serving import ServingError

    for name in (n for n in replica.loaded if n in new):
        try:
            server.unload_adapter(name)
            replica.unloaded.append(name)
        except ServingError as exc:
            replica.left_loaded.append(f"{name}: {exc}")
