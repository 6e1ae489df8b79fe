"""Dialogue: templates without a model, mock clients, token budget, fallbacks, record/replay (SPEC 5, 10)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from agentflux import AgentfluxError
from agentflux.workshop import (
    Completion,
    DialogueEngine,
    DialogueLine,
    LLMClient,
    LLMError,
    MockLLMClient,
    RecordingLLMClient,
    ReplayLLMClient,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopFlux,
    WorkshopTask,
    create_sage,
    create_scout,
    create_workshop,
)

from ._helpers import assert_metrics_agree, fallbacks, run_task

E = WorkshopEventType
TASK = "Research a caching layer for the search results"
MESSAGES = [{"role": "user", "content": "hello there"}]


def dialogue(events: list[WorkshopEvent]) -> list[WorkshopEvent]:
    return [e for e in events if e.type is E.DIALOGUE]


class FailingClient:
    """Fails every call, or only the calls whose index is in ``failing``."""

    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing
        self.calls = 0

    async def complete(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int, seed: int | None = None
    ) -> Completion:
        index = self.calls
        self.calls += 1
        if self.failing is None or index in self.failing:
            raise LLMError(f"model unavailable (call {index})")
        return Completion(f"answer {index}", 5, 3)


# ----------------------------------------------------------------------------- engine itself


async def test_without_a_client_builders_speak_templates() -> None:
    engine = DialogueEngine()
    scout = create_scout()
    line = await engine.speak(scout, "start", "ctx", random.Random(1), topic="caching")
    assert isinstance(line, DialogueLine)
    assert line.source == "template"
    assert line.tokens == 0
    assert line.fallback is None
    assert not line.called
    assert line.text in [t.format(topic="caching") for t in scout.templates["start"]]
    assert (engine.calls, engine.tokens_used, engine.fallbacks) == (0, 0, 0)


async def test_a_run_without_a_client_is_all_templates_and_zero_tokens() -> None:
    async with WorkshopFlux(create_workshop(), seed=1) as wf:
        events = await run_task(wf, TASK)
        lines = dialogue(events)
        assert lines
        assert {e.metadata["source"] for e in lines} == {"template"}
        assert all(e.metadata["tokens"] == 0 for e in lines)
        assert not any("fallback" in e.metadata for e in lines)
        metrics = wf.get_metrics()
        assert (metrics.dialogue_tokens, metrics.total_tokens, metrics.llm_calls, metrics.llm_fallbacks) == (0, 0, 0, 0)


async def test_mock_client_cycles_a_list() -> None:
    client = MockLLMClient(["one", "two three"])
    assert isinstance(client, LLMClient)
    texts = [(await client.complete(MESSAGES, max_tokens=10)).text for _ in range(5)]
    assert texts == ["one", "two three", "one", "two three", "one"]
    completion = await client.complete(MESSAGES, max_tokens=10)
    assert (completion.prompt_tokens, completion.completion_tokens) == (2, 2)  # words, like a tiny tokenizer
    assert completion.total_tokens == 4
    assert len(client.calls) == 6
    assert client.calls[0] == MESSAGES


async def test_mock_client_with_a_callable() -> None:
    client = MockLLMClient(lambda messages: f"you said {messages[-1]['content']}")
    completion = await client.complete(MESSAGES, max_tokens=10)
    assert completion.text == "you said hello there"


async def test_engine_uses_the_client_and_counts_its_tokens() -> None:
    engine = DialogueEngine(MockLLMClient(["Let's map it out."]))
    sage = create_sage()
    line = await engine.speak(sage, "start", "Task: x", random.Random(2), topic="x")
    assert (line.text, line.source, line.fallback, line.called) == ("Let's map it out.", "llm", None, True)
    assert line.tokens > 0
    assert engine.tokens_used == line.tokens
    assert engine.calls == 1
    system = engine.client.calls[0][0]  # type: ignore[union-attr]
    assert system["role"] == "system"
    assert sage.personality in system["content"]


async def test_an_empty_answer_falls_back_to_a_template() -> None:
    engine = DialogueEngine(MockLLMClient([""]))
    line = await engine.speak(create_scout(), "start", "ctx", random.Random(1), topic="t")
    assert line.source == "template"
    assert line.fallback
    assert line.called  # the model was asked; its answer was unusable
    assert engine.fallbacks == 1


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="token_budget"):
        DialogueEngine(token_budget=-1)


# ------------------------------------------------------------------------------- token budget


async def test_token_budget_is_enforced_before_each_call() -> None:
    client = MockLLMClient(["Fine by me, let us go."])
    engine = DialogueEngine(client, token_budget=600)
    async with WorkshopFlux(create_workshop(), engine, seed=3) as wf:
        events = await run_task(wf, TASK)
    lines = dialogue(events)
    sources = [e.metadata["source"] for e in lines]
    assert "llm" in sources
    assert "template" in sources
    first_template = sources.index("template")
    # once over budget, every later line is a template that says why
    assert set(sources[first_template:]) == {"template"}
    for event in lines[first_template:]:
        assert "token budget" in event.metadata["fallback"]
        assert event.metadata["tokens"] == 0
    assert all(e.metadata["tokens"] > 0 for e in lines[:first_template])
    largest_call = max(sum(len(m["content"].split()) for m in call) for call in client.calls) + 6
    assert engine.tokens_used <= engine.token_budget + largest_call  # type: ignore[operator]
    assert engine.calls == len(client.calls)
    metrics = wf.get_metrics()
    refused = fallbacks(events)
    assert {e.type for e in refused} == {E.DIALOGUE, E.ARTIFACT_PRODUCED}  # artifacts ask within the budget too
    assert all("token budget" in e.metadata["fallback"] for e in refused)
    assert metrics.llm_fallbacks == len(refused)
    assert metrics.llm_calls == len(client.calls)  # refusals are not calls
    assert_metrics_agree(metrics, events)


async def test_a_zero_budget_never_calls_the_client() -> None:
    client = MockLLMClient()
    engine = DialogueEngine(client, token_budget=0)
    async with WorkshopFlux(create_workshop(), engine, seed=4) as wf:
        events = await run_task(wf, "Deploy the search service")
    assert client.calls == []
    assert all("token budget" in e.metadata["fallback"] for e in dialogue(events))
    assert wf.get_metrics().total_tokens == 0


async def test_llm_calls_counts_only_calls_that_were_made() -> None:
    """Regression: budget refusals (no call made) used to be counted as LLM calls."""
    client = MockLLMClient()
    async with WorkshopFlux(create_workshop(), DialogueEngine(client, token_budget=0), seed=4) as wf:
        events = await run_task(wf, "Deploy the search service")
    assert client.calls == []
    metrics = wf.get_metrics()
    assert metrics.llm_calls == 0
    assert metrics.llm_fallbacks == len(fallbacks(events)) > 0
    assert_metrics_agree(metrics, events)


async def test_llm_calls_count_dialogue_and_artifact_calls() -> None:
    client = MockLLMClient(["Sure."])
    async with WorkshopFlux(create_workshop(), DialogueEngine(client), seed=4) as wf:
        events = await run_task(wf, "Deploy the search service")
    metrics = wf.get_metrics()
    assert metrics.llm_calls == len(client.calls) > 0
    assert metrics.llm_fallbacks == 0
    assert metrics.total_tokens > metrics.dialogue_tokens > 0  # the artifact call's tokens count in the total
    assert_metrics_agree(metrics, events)


async def test_tokens_never_exceed_the_budget_by_more_than_one_call() -> None:
    for budget in (0, 50, 150, 400, 1000):
        client = MockLLMClient(["a b c d e f g h"])
        engine = DialogueEngine(client, token_budget=budget)
        async with WorkshopFlux(create_workshop(), engine, seed=budget) as wf:
            await run_task(wf, TASK)
        per_call = [sum(len(m["content"].split()) for m in call) + 8 for call in client.calls]
        assert engine.tokens_used == sum(per_call)
        # the check happens before a call: everything but the last call fit under the budget
        assert sum(per_call[:-1]) <= budget
        assert engine.tokens_used <= budget + (max(per_call) if per_call else 0)


# ------------------------------------------------------------------------------------ failures


async def test_an_llm_error_falls_back_to_a_template_and_says_so() -> None:
    client = FailingClient()
    engine = DialogueEngine(client, max_consecutive_failures=10**6)  # every line calls the client
    async with WorkshopFlux(create_workshop(), engine, seed=5) as wf:
        events = await run_task(wf, TASK)
    assert events[-1].metadata["outcome"] == "completed"
    lines = dialogue(events)
    assert {e.metadata["source"] for e in lines} == {"template"}
    for event in lines:
        assert "LLM error" in event.metadata["fallback"]
        assert "model unavailable" in event.metadata["fallback"]
    metrics = wf.get_metrics()
    assert metrics.llm_fallbacks == len(fallbacks(events)) == len(lines) + metrics.artifacts_produced
    assert metrics.llm_calls == client.calls  # every failed call was a call
    assert metrics.dialogue_tokens == 0
    assert_metrics_agree(metrics, events)
    # the artifacts fall back to their templates too
    artifacts = [e for e in events if e.type is E.ARTIFACT_PRODUCED]
    assert all("LLM error" in e.metadata["fallback"] for e in artifacts)
    assert all("caching" in e.artifact.content.lower() for e in artifacts if e.artifact is not None)


async def test_some_failures_mix_llm_lines_and_visible_fallbacks() -> None:
    client = FailingClient(failing={1, 4})
    engine = DialogueEngine(client)
    async with WorkshopFlux(create_workshop(), engine, seed=6) as wf:
        events = await run_task(wf, "Deploy the search service")
    lines = dialogue(events)
    fell_back = [e for e in lines if e.metadata.get("fallback")]
    assert fell_back
    assert all(e.metadata["source"] == "template" for e in fell_back)
    assert [e for e in lines if e.metadata["source"] == "llm"]
    assert wf.get_metrics().llm_fallbacks == len(fallbacks(events)) >= len(fell_back)
    assert wf.get_metrics().llm_calls == client.calls
    assert_metrics_agree(wf.get_metrics(), events)


def test_llm_error_is_an_agentflux_error() -> None:
    assert issubclass(LLMError, AgentfluxError)


# ------------------------------------------------------------------------------- record / replay


def answer_by_prompt(messages: Sequence[dict[str, str]]) -> str:
    return f"Reply to {len(messages[-1]['content'])} characters."


async def replayable_run(client: LLMClient, seed: int = 7, description: str = TASK) -> list[tuple[object, ...]]:
    async with WorkshopFlux(create_workshop(), DialogueEngine(client), seed=seed) as wf:
        events = await run_task(wf, WorkshopTask(description, id="recorded"))
    return [e.replayable() for e in events]


async def test_record_then_replay_gives_the_same_event_stream(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    recorded = await replayable_run(RecordingLLMClient(MockLLMClient(answer_by_prompt), path))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records
    assert all({"key", "text", "prompt_tokens", "completion_tokens"} <= set(r) for r in records)
    replay = ReplayLLMClient(path)
    replayed = await replayable_run(replay)
    assert replayed == recorded
    sources = {dict(event[5]).get("source") for event in replayed if event[0] is E.DIALOGUE}
    assert sources == {"llm"}  # the replay answered every call


async def test_recorded_failures_are_replayed_as_failures(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    recorded = await replayable_run(RecordingLLMClient(FailingClient(failing={0, 3}), path))
    assert sum("error" in json.loads(line) for line in path.read_text().splitlines()) == 2
    assert await replayable_run(ReplayLLMClient(path)) == recorded


async def test_a_diverging_replay_falls_back_and_says_replay_diverged(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    await replayable_run(RecordingLLMClient(MockLLMClient(answer_by_prompt), path))
    replay = ReplayLLMClient(path)
    with pytest.raises(LLMError, match="replay diverged"):
        await replay.complete([{"role": "user", "content": "something else"}], max_tokens=80)
    async with WorkshopFlux(create_workshop(), DialogueEngine(ReplayLLMClient(path)), seed=7) as wf:
        events = await run_task(wf, WorkshopTask("Research a different thing entirely", id="recorded"))
    lines = dialogue(events)
    assert "replay diverged" in lines[0].metadata["fallback"]
    assert all(e.metadata["source"] == "template" for e in lines)
    assert events[-1].metadata["outcome"] == "completed"


async def test_a_replay_that_runs_out_raises(tmp_path: Path) -> None:
    path = tmp_path / "llm.jsonl"
    recorder = RecordingLLMClient(MockLLMClient(["only"]), path)
    await recorder.complete(MESSAGES, max_tokens=5)
    replay = ReplayLLMClient(path)
    assert (await replay.complete(MESSAGES, max_tokens=5)).text == "only"
    with pytest.raises(LLMError, match="no more answers"):
        await replay.complete(MESSAGES, max_tokens=5)


def test_an_unreadable_recording_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recording"):
        ReplayLLMClient(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="recording"):
        ReplayLLMClient(bad)


async def test_a_client_raising_anything_falls_back_instead_of_crashing() -> None:
    engine = DialogueEngine(MockLLMClient(lambda messages: str(1 / 0)))
    async with WorkshopFlux(create_workshop(), engine, seed=5) as wf:
        events = await run_task(wf, TASK)
    assert events[-1].metadata["outcome"] == "completed"
    reasons = [e.metadata["fallback"] for e in events if e.metadata.get("fallback")]
    assert reasons
    assert "ZeroDivisionError" in reasons[0]
