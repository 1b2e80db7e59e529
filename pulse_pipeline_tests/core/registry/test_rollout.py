"""Safe rollout on several vLLM replicas (core/registry/rollout.py, promotion.py): every replica
loads the new version under its immutable name and answers the family's golden smoke prompts
before current.json, the records, the audit trail and MLflow move; a replica that fails leaves all
of them unchanged and the promotion is partial.

The plan and its result are plain data, tested first. Then promotions against replicas that
misbehave on purpose: a closed port, and `StubReplica`, a few lines of vLLM's API on 127.0.0.1 that
refuse to load (HTTP 500) or answer nothing. The slow tests put a REAL vLLM server (the session's,
SmolLM2-135M with a real LoRA adapter) beside them; the healthy pair is that server named twice
(two clients, one server: the degenerate case, as a second vLLM would not fit this machine).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from typer.testing import CliRunner

from pulse_pipeline.core.families import load_config
from pulse_pipeline.core.registry import Registry, State, Targets, mlflow_models, read_current
from pulse_pipeline.core.registry.rollout import (
    GENERIC,
    ReplicaRollout,
    Rollout,
    SmokeTest,
    golden_smoke_tests,
    plan,
    smoke_test,
)
from pulse_pipeline.core.serving import VllmServer, open_replicas, served_name
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.core.registry.conftest import T0, results, trained
from pulse_pipeline_tests.vllm_server import TEST_API_KEY, VllmTestServer, _free_port

CHAT = "access-qa"  # a chat family of the project's pulse.yaml, with a golden file
V = [f"{CHAT}-2026112{d}-0930" for d in range(1, 4)]


# -- the plan and its result ------------------------------------------------------------------------


def _pointer(version: str, previous: str | None = None, challenger: str | None = None, share: float = 0.1):
    current: dict[str, Any] = {"version": version, "previous_version": previous}
    if challenger:
        current["traffic"] = [
            {"version": version, "share": 1 - share},
            {"version": challenger, "share": share},
        ]
    return current


@pytest.mark.parametrize(
    ("before", "after", "serve", "new"),
    [
        (None, _pointer(V[0]), [V[0]], [V[0]]),  # the first promotion
        (_pointer(V[0]), _pointer(V[1], V[0]), [V[1]], [V[1]]),  # a promotion
        (_pointer(V[0]), _pointer(V[0], challenger=V[1]), [V[0], V[1]], [V[1]]),  # a canary: both served
        (_pointer(V[0], challenger=V[1]), _pointer(V[0]), [V[0]], []),  # the canary ends
        (_pointer(V[1], V[0]), _pointer(V[0], V[1]), [V[0]], [V[0]]),  # a rollback
        (_pointer(V[0]), _pointer(V[0]), [V[0]], []),  # a re-sync
    ],
    ids=["first", "promote", "canary", "end-canary", "rollback", "resync"],
)
def test_the_plan_serves_what_the_new_pointer_serves_and_knows_what_is_new(before, after, serve, new):
    planned = plan(CHAT, before, after, lambda v: f"/adapters/{CHAT}/{v}", GENERIC)
    assert planned.serve == {v: f"/adapters/{CHAT}/{v}" for v in serve}
    assert list(planned.new) == new


def test_a_rollout_is_partial_when_any_replica_failed_and_says_which():
    ok = ReplicaRollout("http://a:8000", loaded=[f"{CHAT}@{V[1]}"])
    assert (Rollout([ok, ReplicaRollout("http://b:8000")]).partial, Rollout([ok]).status) == (
        False,
        "updated",
    )
    failed = ReplicaRollout("http://b:8000", error="vLLM server at http://b:8000 unreachable: ConnectError")
    stuck = ReplicaRollout("http://c:8000", left_loaded=[f"{CHAT}@{V[1]}: vLLM server at http://c:8000 ..."])
    done = Rollout([ok, failed, stuck])
    assert done.partial and done.failed == [failed]
    assert done.status == (
        "partial: 1 of 3 replicas failed: vLLM server at http://b:8000 unreachable: ConnectError; "
        f"http://c:8000: ok (left loaded, unused: {CHAT}@{V[1]}: vLLM server at http://c:8000 ...)"
    )
    assert done.summary == "partial: 1/3 replicas failed" and len(done.summary) <= 32  # the audit column
    assert [r["url"] for r in done.report()] == ["http://a:8000", "http://b:8000", "http://c:8000"]
    assert done.report()[1]["status"].startswith("vLLM server at http://b:8000 unreachable")


def test_smoke_tests_are_the_golden_prompts_of_chat_families_only(config):
    access = smoke_test(config.family(CHAT), config)
    assert (
        access is not None
        and len(access.prompts) == 4
        and access.source == "access-qa.jsonl, first 4 prompts"
    )
    first = access.prompts[0]
    assert first[0]["role"] == "system" and first[-1]["role"] == "user"
    assert "How many CPU cores are on a Delta compute node?" in first[-1]["content"]
    assert smoke_test(config.family("intent-router"), config) is None  # an encoder: peft answers it
    assert smoke_test(config.family("article-scorer"), config) is None
    family = config.family(CHAT)
    bare = family.model_copy(
        update={"evaluation": family.evaluation.model_copy(update={"golden_file": None})}
    )
    generic = smoke_test(bare, config)
    assert generic is not None and generic.source == "a generic prompt (no golden file)"
    assert generic.prompts[0][0] == {"role": "system", "content": family.prompts["system"]}
    lookup = golden_smoke_tests(PROJECT / "pulse.yaml")
    assert lookup(CHAT) == access and lookup("intent-router") is None


# -- replicas that misbehave on purpose -------------------------------------------------------------


class StubReplica:
    """The few routes of vLLM's API a rollout uses, on 127.0.0.1: loads adapters (or answers 500
    when `refuse_load`), lists them, unloads them, and answers chats with "ready" (or nothing
    when `mute`). Every request is kept in `requests` as (method, path, lora_name)."""

    BASE = "/models/base"

    def __init__(self, *, refuse_load: bool = False, mute: bool = False) -> None:
        self.refuse_load, self.mute = refuse_load, mute
        self.adapters: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
                self.send_response(status)
                self.send_header(
                    "content-type", "application/json" if not isinstance(body, str) else "text/plain"
                )
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                stub.requests.append(("GET", self.path, None))
                models = [{"id": stub.BASE, "parent": None}] + [
                    {"id": name, "root": root, "parent": stub.BASE} for name, root in stub.adapters.items()
                ]
                self._reply(200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
                name = body.get("lora_name") or body.get("model")
                stub.requests.append(("POST", self.path, name))
                if self.path == "/v1/load_lora_adapter":
                    if stub.refuse_load:
                        error = {
                            "message": "No free LoRA slot on this replica",
                            "type": "InternalServerError",
                        }
                        return self._reply(500, {"error": error})
                    stub.adapters[name] = body["lora_path"]
                    return self._reply(200, f"Success: LoRA adapter '{name}' added successfully.")
                if self.path == "/v1/unload_lora_adapter":
                    if stub.adapters.pop(name, None) is None:
                        return self._reply(
                            404, {"error": {"message": f"{name} not found", "type": "NotFoundError"}}
                        )
                    return self._reply(200, f"Success: LoRA adapter '{name}' removed successfully.")
                if self.path == "/v1/chat/completions":
                    text = "" if stub.mute else "ready"
                    return self._reply(
                        200, {"choices": [{"message": {"role": "assistant", "content": text}}]}
                    )
                return self._reply(404, {"error": {"message": "no such route", "type": "NotFoundError"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def loads(self, name: str) -> int:
        return sum(1 for r in self.requests if r[1] == "/v1/load_lora_adapter" and r[2] == name)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs() -> Iterator[list[StubReplica]]:
    made: list[StubReplica] = []
    yield made
    for stub in made:
        stub.close()


def _stub(stubs: list[StubReplica], **how: bool) -> StubReplica:
    stubs.append(StubReplica(**how))
    return stubs[-1]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Registry]:
    """A registry on SQLite and a local folder (the replicas read adapters from its paths)."""
    from pulse_pipeline.core.artifacts import open_artifact_store
    from pulse_pipeline.core.store import Store

    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as db:
        yield Registry(db, open_artifact_store(str(tmp_path / "artifacts")))


def _on(registry: Registry, servers: list[VllmServer], mlflow_uri: str, smoke: Any = None) -> Registry:
    return Registry(registry.db, registry.artifacts, Targets(mlflow_uri, servers, smoke=smoke))


def _champion(tracking_uri: str, family: str = CHAT) -> str | None:
    return mlflow_models.aliases(tracking_uri, family).get("champion")


def _chat_versions(registry: Registry, tmp_path: Path, n: int) -> list[str]:
    return [trained(registry, tmp_path, m, "DEPLOY", family=CHAT, base_model="tiny") for m in range(n)]


def test_a_replica_that_refuses_keeps_the_old_version_everywhere_until_a_retry_succeeds(
    local, stubs, mlflow_uri, tmp_path
):
    good, bad = _stub(stubs), _stub(stubs, refuse_load=True)
    a, b = _chat_versions(local, tmp_path, 2)
    with open_replicas([good.url, bad.url]) as servers:
        registry = _on(local, servers, mlflow_uri)
        bad.refuse_load = False
        assert registry.promote(CHAT, a, by="alice").serving == "updated"
        bad.refuse_load = True
        before = read_current(registry.artifacts, CHAT)

        out = registry.promote(CHAT, b, by="alice", reason="better")
        assert (out.partial, out.action, out.changed, out.version, out.attempted) == (
            True,
            "partial",
            False,
            a,
            b,
        )
        assert out.serving.startswith(f"partial: 1 of 2 replicas failed: vLLM server at {bad.url}: ")
        assert "HTTP 500 InternalServerError: No free LoRA slot on this replica" in out.serving
        assert out.replicas == [
            {"url": good.url, "status": "ok"},
            {"url": bad.url, "status": out.replicas[1]["status"]},
        ]
        assert out.mlflow == "unchanged"
        # Nothing moved: the pointer, the records, MLflow; the healthy replica unloaded b again.
        assert read_current(registry.artifacts, CHAT) == before
        assert {r.version: r.state for r in registry.records.list(CHAT)} == {
            a: State.PRODUCTION,
            b: State.EVALUATED,
        }
        assert _champion(mlflow_uri) == a
        assert set(good.adapters) == {served_name(CHAT, a)} and good.loads(served_name(CHAT, b)) == 1
        entry = registry.audit.list(CHAT)[0]
        assert (entry.action, entry.from_version, entry.to_version, entry.by) == ("partial", a, b, "alice")
        assert entry.serving == "partial: 1/2 replicas failed"
        assert bad.url in entry.reason and entry.reason.endswith("(reason given: better)")

        bad.refuse_load = False  # the replica is repaired: promoting b again completes
        again = registry.promote(CHAT, b, by="alice")
        assert (again.partial, again.action, again.version, again.serving) == (False, "promote", b, "updated")
        assert read_current(registry.artifacts, CHAT)["version"] == b and _champion(mlflow_uri) == b
        for stub in (good, bad):
            assert set(stub.adapters) == {served_name(CHAT, a), served_name(CHAT, b)}
            assert sum(1 for r in stub.requests if r[1] == "/v1/chat/completions") >= 1  # smoke-tested
        assert [e.action for e in registry.audit.list(CHAT)] == ["promote", "partial", "promote"]


def test_an_unreachable_replica_stops_the_first_promotion(local, stubs, mlflow_uri, tmp_path):
    good = _stub(stubs)
    (a,) = _chat_versions(local, tmp_path, 1)
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with open_replicas([good.url, closed]) as servers:
        registry = _on(local, servers, mlflow_uri)
        out = registry.promote(CHAT, a, by="alice")
    assert (out.partial, out.version, out.attempted, out.traffic) == (True, None, a, [])
    assert f"vLLM server at {closed} unreachable" in out.serving
    assert read_current(local.artifacts, CHAT) is None and good.adapters == {}
    assert local.records.get(CHAT, a).state is State.EVALUATED and _champion(mlflow_uri) is None
    assert registry.audit.list(CHAT)[0].action == "partial"


def test_a_replica_that_loads_but_answers_nothing_fails_the_smoke_test(local, stubs, mlflow_uri, tmp_path):
    good, mute = _stub(stubs), _stub(stubs, mute=True)
    (a,) = _chat_versions(local, tmp_path, 1)
    smoke = golden_smoke_tests(PROJECT / "pulse.yaml")
    with open_replicas([good.url, mute.url]) as servers:
        out = _on(local, servers, mlflow_uri, smoke).promote(CHAT, a, by="alice")
    assert out.partial and read_current(local.artifacts, CHAT) is None
    assert out.replicas[1]["status"] == (
        f"vLLM server at {mute.url}: {served_name(CHAT, a)} answered nothing to smoke prompt 1 of 4 "
        "(access-qa.jsonl, first 4 prompts)"
    )
    assert good.adapters == {} and mute.adapters == {}  # loaded on both, unloaded from both
    prompts = [r for r in good.requests if r[1] == "/v1/chat/completions"]
    assert len(prompts) == 4 and all(r[2] == served_name(CHAT, a) for r in prompts)


def test_a_rollback_never_reloads_a_name_and_refuses_one_loaded_from_elsewhere(
    local, stubs, mlflow_uri, tmp_path
):
    one, two = _stub(stubs), _stub(stubs)
    a, b = _chat_versions(local, tmp_path, 2)
    with open_replicas([one.url, two.url]) as servers:
        registry = _on(local, servers, mlflow_uri)
        registry.promote(CHAT, a, by="alice")
        registry.promote(CHAT, b, by="alice")
        back = registry.rollback(CHAT, by="bob")  # a is still loaded (the previous version is kept)
        assert (back.partial, back.version, back.previous_version) == (False, a, b)
        for stub in (one, two):
            assert stub.loads(served_name(CHAT, a)) == 1 and stub.loads(served_name(CHAT, b)) == 1
        # A name loaded from another folder is never replaced: the rollback forward is refused.
        two.adapters[served_name(CHAT, b)] = "/elsewhere/other-weights"
        forward = registry.rollback(CHAT, by="bob")
        assert forward.partial and forward.version == a
        assert "is already loaded from /elsewhere/other-weights" in forward.replicas[1]["status"]
        assert (
            two.loads(served_name(CHAT, b)) == 1
            and two.adapters[served_name(CHAT, b)] == "/elsewhere/other-weights"
        )
        assert served_name(CHAT, b) in one.adapters  # it was loaded before this attempt: left as it was


def test_families_vllm_does_not_serve_are_promoted_without_asking_it(local, stubs, mlflow_uri, tmp_path):
    stub = _stub(stubs, refuse_load=True)
    a = trained(local, tmp_path, 0, "DEPLOY")  # intent-router: an encoder with a head
    with open_replicas([stub.url]) as servers:
        out = _on(local, servers, mlflow_uri, golden_smoke_tests(PROJECT / "pulse.yaml")).promote(
            "intent-router", a, by="alice"
        )
    assert (out.partial, out.version, out.serving) == (False, a, "not on vLLM (not a chat family)")
    assert stub.requests == []


def test_pulse_promote_exits_1_naming_the_replica_and_leaves_current_alone(
    pulse_env, stubs, tmp_path, monkeypatch
):
    from pulse_pipeline.cli import app
    from pulse_pipeline.core.artifacts import LocalArtifactStore
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.settings import get_settings

    good, bad = _stub(stubs), _stub(stubs, refuse_load=True)
    with Store(get_settings().database_url) as store:
        registry = Registry(store, LocalArtifactStore(pulse_env / "artifacts"))
        a, b = _chat_versions(registry, tmp_path, 2)
    monkeypatch.setenv("PULSE_VLLM_URL", f"{good.url}, {bad.url}")
    get_settings.cache_clear()
    runner = CliRunner()
    bad.refuse_load = False
    first = runner.invoke(app, ["promote", "--family", CHAT, "--version", a, "--json"])
    assert first.exit_code == 0, first.output
    assert [r["status"] for r in json.loads(first.stdout)["vllm_replicas"]] == ["ok", "ok"]
    bad.refuse_load = True
    partial = runner.invoke(app, ["promote", "--family", CHAT, "--version", b])
    assert partial.exit_code == 1 and partial.stderr.count("\n") == 1, partial.output
    assert partial.stderr.startswith(f"pulse: {CHAT}: {b} not served, {a} stays production: partial: 1 of 2")
    assert f"vLLM server at {bad.url}" in partial.stderr
    assert f"vllm_replica       {good.url}: ok" in partial.stdout
    assert read_current(LocalArtifactStore(pulse_env / "artifacts"), CHAT)["version"] == a
    as_json = runner.invoke(app, ["promote", "--family", CHAT, "--version", b, "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["partial"] is True


def test_the_deployment_asset_fails_its_rollout_check_and_keeps_production(stubs, tmp_path, mlflow_uri):
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.defs.registry.assets import ROLLOUT_CHECK, deployment_asset
    from pulse_pipeline.defs.resources import (
        AnnotationStore,
        ArtifactStorage,
        ServingEnvironment,
        TrainingEnvironment,
    )

    good, bad = _stub(stubs), _stub(stubs, refuse_load=True)
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    family = load_config(PROJECT / "pulse.yaml").family(CHAT)
    with Store(url) as store:
        from pulse_pipeline.core.artifacts import open_artifact_store

        registry = Registry(store, open_artifact_store(str(tmp_path / "artifacts")))
        (a,) = _chat_versions(registry, tmp_path, 1)
        bad.refuse_load = False
        with open_replicas([good.url, bad.url]) as servers:
            _on(registry, servers, mlflow_uri).promote(CHAT, a, by="alice")
        bad.refuse_load = True
        b = trained(registry, tmp_path, 1, "DEPLOY", family=CHAT, base_model="tiny")  # judged against a

    @dg.asset(key=dg.AssetKey([CHAT, "eval_report"]))
    def eval_report() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"version": b, "decision": "DEPLOY"})

    result = dg.materialize(
        [eval_report, deployment_asset(family)],
        resources={
            "annotation_store": AnnotationStore(database_url=url),
            "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
            "training": TrainingEnvironment(home=str(tmp_path / "home"), mlflow_tracking_uri=mlflow_uri),
            "serving": ServingEnvironment(vllm_url=f"{good.url},{bad.url}"),
        },
        raise_on_error=False,
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == (ROLLOUT_CHECK, False)
    assert bad.url in check.metadata["vllm_replicas"].value
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey([CHAT, "deployment"])
    ]
    meta = event.materialization.metadata
    assert (meta["action"].value, meta["production_version"].value) == ("partial", a)
    assert meta["serving"].value.startswith("partial: 1 of 2 replicas failed: vLLM server at " + bad.url)
    assert read_current(registry.artifacts, CHAT)["version"] == a


# -- with a real vLLM server (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lora(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real rank-8 LoRA adapter for SmolLM2 (random non-zero weights: no training needed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora") / "adapter"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def _real_versions(registry: Registry, lora: Path, n: int) -> list[str]:
    """`n` versions of the chat family whose files are the real adapter, judged DEPLOY."""
    versions = []
    for minute in range(n):
        record = registry.begin(
            CHAT, dataset_version=f"d{minute}", base_model="smollm2-135m", training_config={}, created_by="test",
            when=T0 + dt.timedelta(minutes=minute),
        )  # fmt: skip
        meta = {
            "trained_at": T0.isoformat(),
            "samples_used": 10,
            "training_loss": 0.5,
            "dataset_version": f"d{minute}",
        }
        registry.publish(record, lora, meta)
        production = (registry.current(CHAT) or {}).get("version")
        judged = results("DEPLOY", production)
        registry.artifacts.write_text(
            f"adapters/{CHAT}/{record.version}/eval/results.json", json.dumps(judged)
        )
        registry.record_evaluation(CHAT, record.version, judged)
        versions.append(record.version)
    return versions


@pytest.fixture
def real(vllm_server: VllmTestServer) -> Iterator[VllmServer]:
    with VllmServer(vllm_server.url, api_key=TEST_API_KEY, timeout=60) as client:
        yield client
        for name in client.adapters():
            if name.startswith(f"{CHAT}@"):
                client.unload_adapter(name)


@pytest.mark.slow
def test_real_replica_beside_one_that_refuses_keeps_production_then_both_healthy_complete(
    real, vllm_server, lora, local, stubs, mlflow_uri
):
    a, b = _real_versions(local, lora, 2)
    config = load_config(PROJECT / "pulse.yaml")

    def smoke(family: str) -> SmokeTest | None:  # the first golden prompt: ~3 s each on this CPU server
        return smoke_test(config.family(family), config, limit=1)

    with VllmServer(vllm_server.url, api_key=TEST_API_KEY, timeout=60) as twin:
        both = _on(local, [real, twin], mlflow_uri, smoke)  # one server named twice: both healthy
        first = both.promote(CHAT, a, by="alice")
        assert (first.partial, first.version, first.serving) == (False, a, "updated")
        assert [r["status"] for r in first.replicas] == ["ok", "ok"]
        assert served_name(CHAT, a) in real.adapters() and _champion(mlflow_uri) == a

    bad = _stub(stubs, refuse_load=True)
    with VllmServer(bad.url) as refusing:
        mixed = _on(local, [real, refusing], mlflow_uri, smoke)
        out = mixed.promote(CHAT, b, by="alice")
    assert (out.partial, out.version, out.attempted) == (True, a, b)
    assert out.replicas[0] == {"url": real.display_url, "status": "ok"}  # b loaded and answered there...
    assert f"vLLM server at {bad.url}: POST /v1/load_lora_adapter" in out.replicas[1]["status"]
    assert served_name(CHAT, b) not in real.adapters()  # ...and was unloaded again: a still serves
    assert served_name(CHAT, a) in real.adapters()
    assert read_current(local.artifacts, CHAT)["version"] == a and _champion(mlflow_uri) == a
    assert local.audit.list(CHAT)[0].action == "partial"

    with VllmServer(vllm_server.url, api_key=TEST_API_KEY, timeout=60) as twin:
        done = _on(local, [real, twin], mlflow_uri, smoke).promote(CHAT, b, by="alice")
    assert (done.partial, done.version, done.previous_version, done.serving) == (False, b, a, "updated")
    assert {served_name(CHAT, a), served_name(CHAT, b)} <= set(real.adapters())
    assert read_current(local.artifacts, CHAT)["version"] == b and _champion(mlflow_uri) == b


@pytest.mark.slow
def test_real_replica_beside_one_that_answers_nothing_is_partial(real, lora, local, stubs, mlflow_uri):
    (a,) = _real_versions(local, lora, 1)
    mute = _stub(stubs, mute=True)
    smoke = SmokeTest(prompts=(({"role": "user", "content": "Name three colors."},),), source="one prompt")
    with VllmServer(mute.url) as silent:
        out = _on(local, [real, silent], mlflow_uri, lambda family: smoke).promote(CHAT, a, by="alice")
    assert out.partial and out.replicas[0]["status"] == "ok"
    assert "answered nothing to smoke prompt 1 of 1 (one prompt)" in out.replicas[1]["status"]
    assert served_name(CHAT, a) not in real.adapters() and mute.adapters == {}
    assert read_current(local.artifacts, CHAT) is None
