"""A rule-based stand-in for an LLM, for the tests of the decisions around it (the real oracles,
local and over HTTP, have their own tests): it labels the last user turn (its last `Text:` line,
if it has one) by keywords and counts every call per text."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable

from pulse_pipeline.core.oracle.oracles import Completion, OracleError


class RuleOracle:
    name = "rules"
    model = "rules"
    max_concurrency = 1

    def __init__(
        self, answer: Callable[[str], str], *, price_per_call: float = 0.0, stop_after: int | None = None
    ):
        self.answer = answer
        self.price_per_call = price_per_call
        self.stop_after = stop_after  # raise KeyboardInterrupt on this call (an interrupted run)
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def complete(self, messages, *, temperature, seed, max_tokens) -> Completion:
        content = messages[-1]["content"]
        text = (re.findall(r"Text: (.*)", content) or [content.strip()])[-1]
        with self.lock:
            if self.stop_after is not None and sum(self.calls.values()) >= self.stop_after:
                raise KeyboardInterrupt
            self.calls[text] += 1
        reply = self.answer(text)
        if reply == "ERROR":
            raise OracleError("HTTP 500 from POST http://oracle/v1/chat/completions: boom")
        return Completion(reply, prompt_tokens=100, completion_tokens=2, cost=self.price_per_call)

    def close(self) -> None:
        pass


def climate_words(text: str) -> str:
    """Right on every item of the climate corpus (edge items: by the climate words)."""
    return "climate" if re.search(r"carbon|CO2|solar|wind|heat pump|battery|net zero", text) else "other"


def everything_climate(text: str) -> str:
    return "climate"
