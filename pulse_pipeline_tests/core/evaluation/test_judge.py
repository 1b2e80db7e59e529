"""LLM judge: requests, parsing, retries and reports against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydantic
import pytest

from pulse_pipeline.core.evaluation.judge import (
    NOT_CONFIGURED,
    JudgeItem,
    JudgeSettings,
    JudgeUnavailable,
    judge_answers,
    normalize_url,
    parse_scores,
)
from pulse_pipeline.core.evaluation.scoring import _llm_judge
from pulse_pipeline.core.evaluation.sets import EvalExample, EvalSet
from pulse_pipeline.settings import Settings, get_settings

KEY = "sk-test-secret-0123456789"
JUDGE_VARS = (
    "PULSE_JUDGE_URL",
    "PULSE_JUDGE_API_KEY",
    "PULSE_JUDGE_MODEL",
    "PULSE_JUDGE_TIMEOUT",
    "PULSE_JUDGE_MAX_CONCURRENCY",
    "PULSE_JUDGE_RETRIES",
)


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


# A behaviour answers a chat request: (status, reply text) or (status, JSON error body).
Behaviour = Callable[[Seen], tuple[int, Any]]


def tag(text: str, name: str) -> str:
    match = re.search(rf"<{name}>\n(.*?)\n</{name}>", text, re.DOTALL)
    assert match, f"<{name}> missing from the judge's user message:\n{text}"
    return match.group(1)


def fair_judge(seen: Seen) -> tuple[int, Any]:
    """Correctness 5 when the answer holds every number of the reference, else 1; relevance 5,
    completeness 3; the rationale echoes the question so tests can tell which item it graded."""
    user = seen.body["messages"][1]["content"]
    question, reference, answer = (
        tag(user, "question"),
        tag(user, "reference_answer"),
        tag(user, "candidate_answer"),
    )
    numbers = re.findall(r"\d+", reference)
    correct = 5 if numbers and set(numbers) <= set(re.findall(r"\d+", answer)) else 1
    scores = {"relevance": 5, "correctness": correct, "completeness": 3, "rationale": f"graded: {question}"}
    return 200, json.dumps(scores)


class FakeJudge:
    """An OpenAI-compatible server on 127.0.0.1 with a scripted chat behaviour."""

    def __init__(self, behaviour: Behaviour = fair_judge):
        self.behaviour = behaviour
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def chats(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/chat/completions"]

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _record(self, body: dict[str, Any] | None) -> Seen:
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with judge.lock:
                    judge.seen.append(seen)
                return seen

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._record(None)
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "judge-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = self._record(body)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with judge.lock:
                    judge.in_flight += 1
                    judge.peak = max(judge.peak, judge.in_flight)
                try:
                    status, reply = judge.behaviour(seen)
                finally:
                    with judge.lock:
                        judge.in_flight -= 1
                if status != 200:
                    self._send(status, reply)
                    return
                message = {"role": "assistant", "content": reply}
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(judge.seen)}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    },
                )

        return Handler


@pytest.fixture(autouse=True)
def no_judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in JUDGE_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    server = FakeJudge()
    yield server
    server.stop()


def settings_for(judge: FakeJudge, **overrides: Any) -> JudgeSettings:
    return JudgeSettings(**{"url": judge.url, "timeout": 5.0, "backoff": 0.01, **overrides})


ITEMS = [
    JudgeItem(
        "fraud", "How many days do I have to report fraud?", "Report it within 30 days.", "You have 30 days."
    ),
    JudgeItem("limit", "What is my daily limit?", "The limit is 500 EUR per day.", "Your limit is 1000 EUR."),
    JudgeItem("pin", "How long is a PIN?", "A PIN has 4 or 6 digits.", "Either 4 or 6 digits."),
]


def assert_fair_scores(result: Any) -> None:
    assert result.judged == 3 and result.unparsed == 0 and result.failed == 0
    assert [result.scores[i]["correctness"] for i in ("fraud", "limit", "pin")] == [5, 1, 5]
    assert result.judge_relevance == pytest.approx(1.0)
    assert result.judge_correctness == pytest.approx(2 / 3)
    assert result.judge_completeness == pytest.approx(0.5)
    assert result.judge_overall == pytest.approx((1.0 + 2 / 3 + 0.5) / 3)


# -- settings ----------------------------------------------------------------------------------------


def judge_from_env() -> JudgeSettings | None:
    get_settings.cache_clear()  # read the variables set since the last call
    return get_settings().judge()


def test_no_judge_when_the_url_is_unset_or_blank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert judge_from_env() is None
    monkeypatch.setenv("PULSE_JUDGE_URL", "  ")
    assert judge_from_env() is None
    assert NOT_CONFIGURED == "PULSE_JUDGE_URL is not set"


def test_settings_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_JUDGE_URL", "http://judge:8000/")
    settings = judge_from_env()
    assert settings == JudgeSettings(url="http://judge:8000/v1")
    assert (settings.url, settings.api_key, settings.model) == ("http://judge:8000/v1", None, None)
    assert (settings.timeout, settings.max_concurrency, settings.retries) == (60.0, 4, 2)

    monkeypatch.setenv("PULSE_JUDGE_API_KEY", KEY)
    monkeypatch.setenv("PULSE_JUDGE_MODEL", "qwen2.5-7b")
    monkeypatch.setenv("PULSE_JUDGE_TIMEOUT", "12.5")
    monkeypatch.setenv("PULSE_JUDGE_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("PULSE_JUDGE_RETRIES", "0")
    settings = judge_from_env()
    assert (settings.api_key, settings.model) == (KEY, "qwen2.5-7b")
    assert (settings.timeout, settings.max_concurrency, settings.retries) == (12.5, 8, 0)
    assert KEY not in repr(settings) and KEY not in repr(get_settings())
    assert KEY in get_settings().secret_values()  # masked wherever it shows up


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("PULSE_JUDGE_MAX_CONCURRENCY", "many"),
        ("PULSE_JUDGE_MAX_CONCURRENCY", "0"),
        ("PULSE_JUDGE_TIMEOUT", "soon"),
        ("PULSE_JUDGE_TIMEOUT", "0"),
        ("PULSE_JUDGE_RETRIES", "-1"),
        ("PULSE_JUDGE_RETRIES", "2.5"),
    ],
)
def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, bad: str) -> None:
    monkeypatch.setenv("PULSE_JUDGE_URL", "http://judge:8000")
    monkeypatch.setenv(name, bad)
    with pytest.raises(pydantic.ValidationError, match=name.lower()):
        Settings()


def test_a_judge_url_that_is_no_http_url_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_JUDGE_URL", "judge:8000")
    with pytest.raises(ValueError, match="PULSE_JUDGE_URL must be an http"):
        judge_from_env()


# -- in the evaluation -------------------------------------------------------------------------------


def _results() -> dict[str, Any]:
    return {"skipped": [], "metrics": {"test": {"candidate": {}}}}


EVAL_SET = EvalSet(
    "test",
    "items",
    [EvalExample(i.id, "qa_pair", [{"role": "user", "content": i.question}], i.reference) for i in ITEMS],
)


def test_the_evaluation_skips_the_judge_without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_JUDGE_URL", "http://127.0.0.1:9")  # the scorer reads no variable
    results = _results()
    _llm_judge(None, results, EVAL_SET, [i.answer for i in ITEMS], lambda _: None)
    _llm_judge(None, results, EVAL_SET, [i.answer for i in ITEMS], lambda _: None)  # one note, not two
    assert results["skipped"] == [{"what": "llm_judge", "reason": "PULSE_JUDGE_URL is not set"}]
    assert results["metrics"]["test"]["candidate"] == {} and "judge" not in results


def test_the_evaluation_judges_with_the_settings_it_is_given(judge: FakeJudge) -> None:
    results, logged = _results(), []
    _llm_judge(settings_for(judge), results, EVAL_SET, [i.answer for i in ITEMS], logged.append)
    assert results["skipped"] == [] and set(results["judge"]) == {"test"}
    assert results["metrics"]["test"]["candidate"]["judge_correctness"] == pytest.approx(2 / 3)
    assert logged == ["test: LLM judge judge-model: 3 judged, 0 unparsed"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/", "http://h:8000/v1"),
        ("http://h:8000/v1", "http://h:8000/v1"),
        ("http://h:8000/v1/", "http://h:8000/v1"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
        ("http://h:11434/api", "http://h:11434/api/v1"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


# -- parsing -----------------------------------------------------------------------------------------

PLAIN = '{"relevance": 4, "correctness": 2, "completeness": 3, "rationale": "misses the fee"}'


@pytest.mark.parametrize(
    "reply",
    [
        PLAIN,
        f"```json\n{PLAIN}\n```",
        f"Here is my grading:\n{PLAIN}\nLet me know if you need more.",
        f'<think>The format is {{"relevance": 1}}... {{"a": 1}}</think>\n{PLAIN}',
        f'Example: {{"note": "x"}} then {PLAIN} and {{"relevance": 1, "correctness": 1, "completeness": 1}}',
        '{"Relevance": "4", "CORRECTNESS": 2.0, "completeness": 3, "rationale": "misses the fee"}',
    ],
)
def test_parse_scores_finds_the_object(reply: str) -> None:
    assert parse_scores(reply) == {
        "relevance": 4,
        "correctness": 2,
        "completeness": 3,
        "rationale": "misses the fee",
    }


def test_parse_scores_clamps_and_rounds() -> None:
    scores = parse_scores('{"relevance": 7, "correctness": 0, "completeness": 3.5}')
    assert scores == {"relevance": 5, "correctness": 1, "completeness": 4, "rationale": ""}


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I cannot grade this answer.",
        '{"relevance": 4, "correctness": 2}',  # a criterion missing
        '{"relevance": "high", "correctness": 2, "completeness": 3}',
        '{"relevance": true, "correctness": 2, "completeness": 3}',
        '{"relevance": 4, "correctness": 2, "completeness": 3',  # truncated
        "[4, 2, 3]",
    ],
)
def test_parse_scores_rejects(reply: str) -> None:
    assert parse_scores(reply) is None


# -- against the server ------------------------------------------------------------------------------


def test_request_carries_the_item_and_the_rubric(judge: FakeJudge) -> None:
    result = judge_answers(ITEMS, settings_for(judge))
    assert_fair_scores(result)
    assert result.model == "judge-model"  # discovered from GET /models
    assert result.url == judge.url
    assert result.scores["limit"]["rationale"] == "graded: What is my daily limit?"
    assert [s.path for s in judge.seen if s.method == "GET"] == ["/v1/models"]
    assert len(judge.chats) == 3
    for seen in judge.chats:
        body = seen.body
        assert body["model"] == "judge-model"
        assert body["temperature"] == 0
        assert body["response_format"] == {"type": "json_object"}
        system = body["messages"][0]
        assert system["role"] == "system"
        for word in ("relevance", "correctness", "completeness", "1 to 5", "reference", "JSON"):
            assert word in system["content"]
        assert "authorization" not in seen.headers
    users = {
        tag(s.body["messages"][1]["content"], "question"): s.body["messages"][1]["content"]
        for s in judge.chats
    }
    for item in ITEMS:
        user = users[item.question]
        assert tag(user, "reference_answer") == item.reference
        assert tag(user, "candidate_answer") == item.answer


def test_model_from_settings_and_url_without_v1(judge: FakeJudge) -> None:
    settings = settings_for(judge, url=judge.url.removesuffix("/v1"), model="my-judge", api_key=KEY)
    result = judge_answers(ITEMS, settings)
    assert_fair_scores(result)
    assert result.model == "my-judge"
    assert not [s for s in judge.seen if s.method == "GET"]  # no model discovery
    assert {s.body["model"] for s in judge.chats} == {"my-judge"}
    assert {s.headers["authorization"] for s in judge.chats} == {f"Bearer {KEY}"}


def test_fenced_replies(judge: FakeJudge) -> None:
    def fenced(seen: Seen) -> tuple[int, Any]:
        status, reply = fair_judge(seen)
        return status, f"Sure! Here is the grading.\n```json\n{reply}\n```\nHope it helps."

    judge.behaviour = fenced
    assert_fair_scores(judge_answers(ITEMS, settings_for(judge)))


def test_unparseable_reply_is_counted_not_dropped(judge: FakeJudge) -> None:
    rambling = "I am unable to grade this answer because " + "it is complicated. " * 30

    def confused_on_limit(seen: Seen) -> tuple[int, Any]:
        if "1000 EUR" in seen.body["messages"][1]["content"]:
            return 200, rambling
        return fair_judge(seen)

    judge.behaviour = confused_on_limit
    result = judge_answers(ITEMS, settings_for(judge))
    assert (result.judged, result.unparsed, result.failed) == (2, 1, 0)
    assert list(result.scores) == ["fraud", "limit", "pin"]
    assert result.scores["limit"] is None
    assert result.unparsed_items == [{"id": "limit", "reply": rambling[:200]}]
    assert result.judge_correctness == pytest.approx(1.0)  # over the two judged items
    report = result.to_report()
    assert report["unparsed"] == 1 and report["unparsed_items"][0]["id"] == "limit"


def test_response_format_rejected_once_then_dropped(judge: FakeJudge) -> None:
    def no_json_mode(seen: Seen) -> tuple[int, Any]:
        if "response_format" in seen.body:
            return 400, {"error": {"message": "response_format is not supported", "type": "BadRequestError"}}
        return fair_judge(seen)

    judge.behaviour = no_json_mode
    result = judge_answers(ITEMS, settings_for(judge, max_concurrency=3))
    assert_fair_scores(result)
    assert ["response_format" in s.body for s in judge.chats] == [True, False, False, False]


def test_a_400_for_another_reason_is_a_failure(judge: FakeJudge) -> None:
    judge.behaviour = lambda seen: (400, {"error": {"message": "prompt too long"}})
    result = judge_answers(ITEMS, settings_for(judge))
    assert (result.judged, result.failed) == (0, 3)
    assert "HTTP 400" in result.first_error and "prompt too long" in result.first_error
    assert result.to_metrics() == {}
    # the field was tried again without response_format once per item, and never dropped for good
    assert sorted("response_format" in s.body for s in judge.chats) == [False] * 3 + [True] * 3


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(judge: FakeJudge, status: int) -> None:
    calls = iter(range(1000))

    def flaky(seen: Seen) -> tuple[int, Any]:
        if next(calls) == 0:
            return status, {"error": {"message": "busy, try again"}}
        return fair_judge(seen)

    judge.behaviour = flaky
    result = judge_answers(ITEMS, settings_for(judge))
    assert_fair_scores(result)
    assert len(judge.chats) == 4


def test_retries_run_out(judge: FakeJudge) -> None:
    judge.behaviour = lambda seen: (503, {"error": {"message": "model is loading"}})
    result = judge_answers(ITEMS, settings_for(judge, retries=2))
    assert (result.judged, result.unparsed, result.failed) == (0, 0, 3)
    assert len(judge.chats) == 3 * 3
    assert result.first_error.startswith(f"HTTP 503 from POST {judge.url}/chat/completions")
    assert "model is loading" in result.first_error
    assert [f["id"] for f in result.failed_items] == ["fraud", "limit", "pin"]


def test_unauthorized_is_not_retried_and_hides_the_key(judge: FakeJudge) -> None:
    judge.behaviour = lambda seen: (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    result = judge_answers(ITEMS, settings_for(judge, api_key=KEY, model="m"))
    assert (result.judged, result.failed) == (0, 3)
    assert len(judge.chats) == 3  # one attempt per item
    assert {s.headers["authorization"] for s in judge.chats} == {f"Bearer {KEY}"}
    assert "HTTP 401" in result.first_error
    assert KEY not in json.dumps(result.to_report())


def test_unreachable_endpoint_raises(judge: FakeJudge) -> None:
    judge.stop()
    for model in (None, "my-judge"):  # fails on GET /models, or on the first chat request
        settings = settings_for(judge, api_key=KEY, model=model, retries=1)
        with pytest.raises(JudgeUnavailable) as raised:
            judge_answers(ITEMS, settings)
        message = str(raised.value)
        assert message.startswith(f"judge at {judge.url} unreachable: ConnectError")
        assert "\n" not in message and KEY not in message


def test_model_discovery_failure_raises(judge: FakeJudge) -> None:
    with pytest.raises(JudgeUnavailable, match="HTTP 404 .* set PULSE_JUDGE_MODEL"):
        judge_answers(ITEMS, settings_for(judge, url=judge.url.removesuffix("/v1") + "/nowhere/v1"))


def test_concurrency_keeps_input_order(judge: FakeJudge) -> None:
    items = [
        JudgeItem(f"q{i}", f"question {i}", f"It is {i}.", f"It is {i if i % 3 else i + 1}.")
        for i in range(9)
    ]

    def slow_for_early_items(seen: Seen) -> tuple[int, Any]:
        index = int(tag(seen.body["messages"][1]["content"], "question").split()[1])
        time.sleep(0.03 * (len(items) - index))  # later items finish first
        return fair_judge(seen)

    judge.behaviour = slow_for_early_items
    result = judge_answers(items, settings_for(judge, max_concurrency=4))
    assert list(result.scores) == [item.id for item in items]
    for i, item in enumerate(items):
        assert result.scores[item.id]["rationale"] == f"graded: question {i}"
        assert result.scores[item.id]["correctness"] == (5 if i % 3 else 1)
    assert 2 <= judge.peak <= 4


def test_report_and_metrics(judge: FakeJudge) -> None:
    items = [
        JudgeItem(f"q{i}", f"question {i}", f"It is {i}.", f"It is {i if i % 2 else 99}.") for i in range(12)
    ]
    result = judge_answers(items, settings_for(judge))
    metrics = result.to_metrics()
    assert set(metrics) == {"judge_relevance", "judge_correctness", "judge_completeness", "judge_overall"}
    assert metrics["judge_correctness"] == pytest.approx(0.5)
    report = json.loads(json.dumps(result.to_report()))
    assert (report["total"], report["judged"], report["unparsed"], report["failed"]) == (12, 12, 0, 0)
    assert report["model"] == "judge-model" and report["metrics"] == pytest.approx(metrics)
    lowest = report["lowest"]
    assert len(lowest) == 10
    assert [entry["id"] for entry in lowest[:6]] == ["q0", "q2", "q4", "q6", "q8", "q10"]
    assert lowest[0] == {
        "id": "q0",
        "relevance": 5,
        "correctness": 1,
        "completeness": 3,
        "overall": pytest.approx((1.0 + 0.0 + 0.5) / 3, abs=1e-4),
        "rationale": "graded: question 0",
    }
    assert report["scores"]["q1"]["correctness"] == 5


def test_empty_and_duplicate_items(judge: FakeJudge) -> None:
    result = judge_answers([], settings_for(judge))
    assert (result.judged, result.to_metrics(), judge.seen) == (0, {}, [])
    with pytest.raises(ValueError, match=r"unique ids.*'fraud'"):
        judge_answers([ITEMS[0], ITEMS[0]], settings_for(judge))
