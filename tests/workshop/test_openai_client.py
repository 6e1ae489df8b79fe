"""``OpenAICompatibleClient`` against a local OpenAI-compatible HTTP server (SPEC 5, 10 Workshop)."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentflux.workshop import (
    DialogueEngine,
    Fallback,
    LLMClient,
    LLMError,
    OpenAICompatibleClient,
    WorkshopEventType,
    WorkshopFlux,
    create_scout,
    create_workshop,
)

from ._helpers import FakeLLM, Stream, assert_metrics_agree, reply_for, run_task, serving

E = WorkshopEventType
TASK = "Research a caching layer for the search results"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def answer(text: str, prompt: int = 3, completion: int = 2) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": text}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    with serving() as fake:
        yield fake


@pytest.fixture
async def client(server: FakeLLM) -> AsyncIterator[OpenAICompatibleClient]:
    llm = OpenAICompatibleClient(base_url=server.url, model="m", api_key="k", max_retries=1, backoff=0.001)
    yield llm
    await llm.aclose()


async def test_a_call_sends_model_messages_max_tokens_and_the_key(
    server: FakeLLM, client: OpenAICompatibleClient
) -> None:
    assert isinstance(client, LLMClient)
    completion = await client.complete(MESSAGES, max_tokens=33, seed=5)
    (exchange,) = server.exchanges
    assert exchange.path == "/v1/chat/completions"
    assert exchange.headers["authorization"] == "Bearer k"
    assert exchange.body["model"] == "m"
    assert exchange.body["messages"] == MESSAGES
    assert exchange.body["max_tokens"] == 33
    assert exchange.body["seed"] == 5
    text, prompt, done = reply_for(exchange.body)
    assert completion.text == text
    assert (completion.prompt_tokens, completion.completion_tokens) == (prompt, done)
    assert completion.total_tokens == prompt + done


async def test_a_full_run_speaks_with_the_servers_words_and_counts_its_tokens(
    server: FakeLLM, client: OpenAICompatibleClient
) -> None:
    async with WorkshopFlux(create_workshop(), DialogueEngine(client), seed=1) as wf:
        events = await run_task(wf, TASK)
    assert events[-1].metadata["outcome"] == "completed"
    dialogue_calls = [x for x in server.ok if x.body["max_tokens"] <= 100]
    artifact_calls = [x for x in server.ok if x.body["max_tokens"] > 100]
    assert len(server.ok) == len(server.exchanges)  # every call succeeded
    lines = [e for e in events if e.type is E.DIALOGUE]
    assert [e.message for e in lines] == [x.text for x in dialogue_calls]
    assert {e.metadata["source"] for e in lines} == {"llm"}
    for event, exchange in zip(lines, dialogue_calls, strict=True):
        assert event.metadata["tokens"] == exchange.prompt_tokens + exchange.completion_tokens
    metrics = wf.get_metrics()
    assert metrics.dialogue_tokens == sum(x.prompt_tokens + x.completion_tokens for x in dialogue_calls)
    assert metrics.total_tokens == sum(x.prompt_tokens + x.completion_tokens for x in server.ok)
    assert metrics.total_tokens > metrics.dialogue_tokens
    assert metrics.llm_fallbacks == 0
    assert metrics.llm_calls == len(server.exchanges)
    # artifacts are written by the model too, and carry its text
    artifacts = [e.artifact for e in events if e.type is E.ARTIFACT_PRODUCED]
    assert [a.content for a in artifacts if a is not None] == [x.text for x in artifact_calls]
    assert_metrics_agree(metrics, events)
    # every request spoke as a builder with the task in the prompt
    for exchange in server.exchanges:
        assert exchange.body["messages"][0]["role"] == "system"
        assert TASK in exchange.body["messages"][1]["content"]


async def test_a_server_that_always_fails_leaves_a_template_run() -> None:
    with serving(FakeLLM(lambda index, body: (500, {"error": "boom"}))) as server:
        llm = OpenAICompatibleClient(server.url, "m", "k", max_retries=1, backoff=0.001)
        try:
            # No circuit breaker here: every line really calls the failing server.
            engine = DialogueEngine(llm, max_consecutive_failures=10**6)
            async with WorkshopFlux(create_workshop(), engine, seed=2) as wf:
                events = await run_task(wf, "Deploy the search service")
        finally:
            await llm.aclose()
    assert events[-1].type is E.TASK_COMPLETED
    assert events[-1].metadata["outcome"] == "completed"
    lines = [e for e in events if e.type is E.DIALOGUE]
    assert lines
    assert all(e.metadata["source"] == "template" for e in lines)
    assert all("500" in e.metadata["fallback"] for e in lines)
    metrics = wf.get_metrics()
    assert metrics.llm_fallbacks == len(lines) + metrics.artifacts_produced  # artifacts fell back too
    assert metrics.llm_calls == metrics.llm_fallbacks  # each was a real call that failed
    assert metrics.total_tokens == 0
    assert_metrics_agree(metrics, events)
    assert len(server.exchanges) == 2 * (len(lines) + metrics.artifacts_produced)  # each call tried twice


async def test_transient_failures_are_retried() -> None:
    def flaky(index: int, body: dict[str, Any]) -> tuple[int, Any]:
        return (503, {"error": "busy"}) if index < 2 else (200, answer("third time lucky", 4, 3))

    with serving(FakeLLM(flaky)) as server:
        llm = OpenAICompatibleClient(server.url, "m", "k", max_retries=2, backoff=0.001)
        try:
            completion = await llm.complete(MESSAGES, max_tokens=10)
        finally:
            await llm.aclose()
    assert completion.text == "third time lucky"
    assert completion.total_tokens == 7
    assert len(server.exchanges) == 3
    assert all(x.body == server.exchanges[0].body for x in server.exchanges)


async def test_429_is_retried_until_the_retries_run_out() -> None:
    with serving(FakeLLM(lambda index, body: (429, {"error": "slow down"}))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=2, backoff=0.001)
        try:
            with pytest.raises(LLMError, match="3 attempts"):
                await llm.complete(MESSAGES, max_tokens=10)
        finally:
            await llm.aclose()
    assert len(server.exchanges) == 3


async def test_a_client_error_is_not_retried() -> None:
    with serving(FakeLLM(lambda index, body: (400, {"error": "bad request: no such model"}))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=2, backoff=0.001)
        try:
            with pytest.raises(LLMError, match="400") as info:
                await llm.complete(MESSAGES, max_tokens=10)
        finally:
            await llm.aclose()
    assert "no such model" in str(info.value)
    assert len(server.exchanges) == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"this is not json",
        {"choices": []},
        {"choices": [{"message": {}}]},
        {"choices": [{"message": {"content": None}}]},
        {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "many"}},
    ],
)
async def test_a_malformed_answer_raises_llm_error(payload: Any) -> None:
    with serving(FakeLLM(lambda index, body: (200, payload))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=2, backoff=0.001)
        try:
            with pytest.raises(LLMError, match="malformed"):
                await llm.complete(MESSAGES, max_tokens=10)
        finally:
            await llm.aclose()
    assert len(server.exchanges) == 1


async def test_an_unreachable_server_raises_llm_error(server: FakeLLM) -> None:
    llm = OpenAICompatibleClient("http://127.0.0.1:1/v1", "m", max_retries=1, backoff=0.001, timeout=2)
    try:
        with pytest.raises(LLMError, match="2 attempts"):
            await llm.complete(MESSAGES, max_tokens=10)
    finally:
        await llm.aclose()


async def test_the_environment_supplies_missing_arguments(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLUX_LLM_BASE_URL", server.url)
    monkeypatch.setenv("AGENTFLUX_LLM_MODEL", "env-model")
    monkeypatch.setenv("AGENTFLUX_LLM_API_KEY", "env-key")
    llm = OpenAICompatibleClient()
    try:
        assert llm.base_url == server.url
        assert llm.model == "env-model"
        await llm.complete(MESSAGES, max_tokens=8)
    finally:
        await llm.aclose()
    (exchange,) = server.exchanges
    assert exchange.body["model"] == "env-model"
    assert exchange.headers["authorization"] == "Bearer env-key"


async def test_arguments_win_over_the_environment(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLUX_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("AGENTFLUX_LLM_MODEL", "env-model")
    llm = OpenAICompatibleClient(server.url + "/", "arg-model", "arg-key")
    try:
        await llm.complete(MESSAGES, max_tokens=8)
    finally:
        await llm.aclose()
    (exchange,) = server.exchanges
    assert exchange.path == "/v1/chat/completions"  # a trailing slash on base_url is fine
    assert exchange.body["model"] == "arg-model"
    assert exchange.headers["authorization"] == "Bearer arg-key"


async def test_no_key_sends_no_authorization(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFLUX_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm = OpenAICompatibleClient(server.url, "m")
    try:
        await llm.complete(MESSAGES, max_tokens=8)
    finally:
        await llm.aclose()
    assert "authorization" not in server.exchanges[0].headers


def test_missing_model_or_base_url_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTFLUX_LLM_BASE_URL", "OPENAI_BASE_URL", "AGENTFLUX_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="model"):
        OpenAICompatibleClient("http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleClient(model="m")
    with pytest.raises(ValueError, match="max_retries"):
        OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", timeout=0)


def test_the_fake_server_answers_deterministically() -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 10}
    assert reply_for(body) == reply_for(json.loads(json.dumps(body)))


async def test_a_dead_server_is_skipped_after_a_few_failures_and_the_run_finishes_fast() -> None:
    with serving(FakeLLM(lambda index, body: (500, {"error": "boom"}))) as server:
        llm = OpenAICompatibleClient(server.url, "m", "k", max_retries=1, backoff=0.05)
        try:
            async with WorkshopFlux(create_workshop(), DialogueEngine(llm), seed=2) as wf:
                events = await run_task(wf, "Deploy the search service")
        finally:
            await llm.aclose()
    assert events[-1].metadata["outcome"] == "completed"
    fell_back = [e for e in events if e.metadata.get("fallback")]
    reasons = [e.metadata["fallback"] for e in fell_back]
    assert all("500" in r for r in reasons[:3])  # the first three calls failed for real
    assert any("skipped after 3 failed calls" in r for r in reasons[3:])
    metrics = wf.get_metrics()
    assert metrics.llm_fallbacks == len(fell_back)
    # Far fewer calls than lines: only every tenth skipped line tries the server again.
    assert metrics.llm_calls <= 3 + len(fell_back) // 10 + 1
    assert len(server.exchanges) == 2 * metrics.llm_calls


def test_an_invalid_base_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleClient("http://[::1/v1", "m")


# ------------------------------------------------------------------ bounded answers and deadlines


def endless(chunk: bytes, at_most: int, every: float = 0.0) -> Iterator[bytes]:
    """``chunk`` again and again (``at_most`` times, so a regression cannot exhaust memory)."""
    for _ in range(at_most):
        if every:
            time.sleep(every)  # a slow server, not synchronisation
        yield chunk


async def test_an_answer_far_larger_than_max_tokens_allows_is_refused_with_a_template_fallback() -> None:
    huge = answer("x" * (10 * 1024 * 1024), 3, 50)
    with serving(FakeLLM(lambda index, body: (200, huge))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=2, backoff=0.001)
        try:
            with pytest.raises(LLMError, match=r"more than 68736 bytes, larger than max_tokens=50 allows"):
                await llm.complete(MESSAGES, max_tokens=50)
            engine = DialogueEngine(llm)
            line = await engine.speak(create_scout(), "start", "ctx", random.Random(1), topic="caching")
        finally:
            await llm.aclose()
    assert line.source == "template"
    assert line.called
    assert line.fallback is not None
    assert "larger than max_tokens=80 allows" in line.fallback
    assert engine.tokens_used == 0
    assert len(server.exchanges) == 2  # refused at once, not retried
    assert server.exchanges[0].headers["accept-encoding"] == "identity"  # no compressed bomb either


async def test_text_longer_than_max_tokens_allows_is_truncated_visibly() -> None:
    long = answer("word " * 4000, 3, 50)  # 20,000 characters: the body is within the limit
    with serving(FakeLLM(lambda index, body: (200, long))) as server:
        llm = OpenAICompatibleClient(server.url, "m")
        try:
            completion = await llm.complete(MESSAGES, max_tokens=50)
        finally:
            await llm.aclose()
    assert completion.text.endswith("… [truncated]")
    assert len(completion.text) == 1024 + 32 * 50
    assert completion.text.startswith("word word")
    assert completion.completion_tokens == 50


async def test_an_endless_chunked_body_is_cut_off_at_the_limit_in_bounded_memory() -> None:
    stream = Stream(endless(b" " * 65536, at_most=1024))  # 64 MiB at most
    with serving(FakeLLM(lambda index, body: (200, stream))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=0, timeout=20)
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(LLMError, match="larger than max_tokens=50 allows"):
                await llm.complete(MESSAGES, max_tokens=50)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await llm.aclose()
    assert elapsed < 5
    assert peak < 4 * 1024 * 1024
    assert stream.sent < 32 * 1024 * 1024  # the client hung up long before the end


async def test_timeout_is_a_deadline_for_the_whole_call_and_says_so() -> None:
    stream = Stream(endless(b" ", at_most=30, every=0.4))  # a byte every 0.4 s, for 12 s
    with serving(FakeLLM(lambda index, body: (200, stream))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=2, backoff=0.001, timeout=2)
        started = time.monotonic()
        try:
            with pytest.raises(LLMError) as info:
                await llm.complete(MESSAGES, max_tokens=50)
            elapsed = time.monotonic() - started
        finally:
            await llm.aclose()
    assert 1.9 < elapsed < 3.5
    message = str(info.value)
    assert "timed out" in message
    assert "2 s deadline" in message
    assert "1 attempt" in message


async def test_backoff_counts_against_the_deadline() -> None:
    with serving(FakeLLM(lambda index, body: (503, {"error": "busy"}))) as server:
        llm = OpenAICompatibleClient(server.url, "m", max_retries=5, backoff=1.0, timeout=1.5)
        started = time.monotonic()
        try:
            with pytest.raises(LLMError, match=r"after 2 attempts, no time left in the 1\.5 s deadline") as info:
                await llm.complete(MESSAGES, max_tokens=10)
            elapsed = time.monotonic() - started
        finally:
            await llm.aclose()
    assert elapsed < 1.5  # not 1 + 2 + 4 + 8 + 16 s of backoff
    assert "503" in str(info.value)
    assert len(server.exchanges) == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -(10**6), "completion_tokens": -(10**6)},
        {},
        {"prompt_tokens": 10**30, "completion_tokens": 10**30},
        {"prompt_tokens": float("inf"), "completion_tokens": float("inf")},
        {"prompt_tokens": True, "completion_tokens": None},
    ],
)
async def test_absurd_usage_is_estimated_or_clamped(usage: dict[str, Any]) -> None:
    payload = {"choices": [{"message": {"content": "a short answer"}}], "usage": usage}
    with serving(FakeLLM(lambda index, body: (200, payload))) as server:
        llm = OpenAICompatibleClient(server.url, "m")
        try:
            completion = await llm.complete(MESSAGES, max_tokens=50)
        finally:
            await llm.aclose()
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert 0 < completion.prompt_tokens <= 4 * chars + 64 * len(MESSAGES)
    assert 0 < completion.completion_tokens <= 50
    assert completion.total_tokens == completion.prompt_tokens + completion.completion_tokens


async def test_negative_usage_cannot_defeat_the_token_budget() -> None:
    payload = answer("a short answer", -(10**6), -(10**6))
    with serving(FakeLLM(lambda index, body: (200, payload))) as server:
        llm = OpenAICompatibleClient(server.url, "m")
        engine = DialogueEngine(llm, token_budget=200)
        try:
            for _ in range(50):
                before = engine.tokens_used
                result = await engine.ask(MESSAGES, max_tokens=50, seed=None)
                assert engine.tokens_used >= before
                if isinstance(result, Fallback):
                    break
        finally:
            await llm.aclose()
    assert isinstance(result, Fallback)
    assert "token budget" in result.reason
    assert len(server.exchanges) < 50
