"""Durable workshop tasks: a snapshot at every boundary, restored in a new process (issue 13.4)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agentflux import FluxStateError, JsonCodec, Purgatory, open_purgatory
from agentflux.workshop import (
    TaskRunner,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopFlux,
    WorkshopPhase,
    create_workshop,
)
from agentflux.workshop._snapshot import WorkshopSnapshotError, load_snapshot

from ._helpers import collect

E = WorkshopEventType
TASK = "Research how customers use saved searches and ship an improved version"  # five phases, Scout leads
GATES = [WorkshopPhase.INTEGRATING]


def gated(purgatory: Purgatory, seed: int, engine: Any = None) -> WorkshopFlux:
    return WorkshopFlux(create_workshop(), engine, seed=seed, purgatory=purgatory, approval_gates=GATES)


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tasks.db'}"


async def until_event(flux: WorkshopFlux, kind: WorkshopEventType) -> list[WorkshopEvent]:
    """Events of ``flux.run()`` up to and including the first of ``kind``."""
    seen: list[WorkshopEvent] = []
    async with asyncio.timeout(5):
        async for event in flux.run():
            seen.append(event)
            if event.type is kind:
                return seen
    raise AssertionError(f"the run ended without {kind}")


async def uninterrupted(seed: int) -> tuple[list[Any], list[tuple[str, str]]]:
    """The replayable events and the artifacts of a run approved at its gate, never stopped."""
    async with open_purgatory("memory://") as purgatory, gated(purgatory, seed) as flux:
        await flux.start(TASK)
        events = await until_event(flux, E.APPROVAL_REQUESTED)
        assert flux.pending_approval is not None
        await flux.resolve(flux.pending_approval, "approve")
        events += await collect(flux.run())
        return [e.replayable() for e in events], [(a.title, a.content) for a in flux.artifacts]


async def park(store: str, seed: int = 7) -> tuple[str, str, list[WorkshopEvent]]:
    """Run a task to its gate in one 'process' and stop it there: (task id, token id, events)."""
    async with open_purgatory(store) as purgatory, gated(purgatory, seed) as flux:
        plan = await flux.start(TASK)
        events = await until_event(flux, E.APPROVAL_REQUESTED)
        token = flux.pending_approval
        assert token is not None
        return plan.task.id, token, events


async def restored(purgatory: Purgatory, task_id: str) -> WorkshopFlux:
    text = await purgatory.store.load_task(task_id)
    assert text is not None
    return await WorkshopFlux.restore(text, purgatory=purgatory)


async def test_a_task_restored_at_its_gate_ends_exactly_as_an_uninterrupted_run(tmp_path: Path) -> None:
    expected_events, expected_artifacts = await uninterrupted(seed=7)
    task_id, token_id, before = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as purgatory:
        async with await restored(purgatory, task_id) as flux:
            assert flux.pending_approval == token_id
            assert flux.current_phase is WorkshopPhase.REFINING
            assert len(flux.artifacts) == 4
            await flux.resolve(token_id, "approve", by="test")
            after = await collect(flux.run())
            assert [e.replayable() for e in before + after] == expected_events
            assert [(a.title, a.content) for a in flux.artifacts] == expected_artifacts
            assert flux.get_status()["outcome"] == "completed"
            metrics = flux.get_metrics()
            assert (metrics.phases_completed, metrics.approvals_resolved, metrics.artifacts_produced) == (5, 1, 5)
        final = load_snapshot(await purgatory.store.load_task(task_id) or "")
        assert final["state"]["outcome"] == "completed"
        assert len(final["state"]["artifacts"]) == 5
        assert any(line["phase"] == "integrating" for line in final["state"]["transcript"])


async def test_an_approval_given_while_no_process_ran_the_task_is_acted_on_at_restore(tmp_path: Path) -> None:
    task_id, token_id, _ = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as other:
        await other.resolve(token_id, "approve", by="someone else")
    async with open_purgatory(url(tmp_path)) as purgatory, await restored(purgatory, task_id) as flux:
        events = await collect(flux.run())  # nobody resolves anything here
        assert events[0].type is E.APPROVAL_RESOLVED
        assert events[-1].type is E.TASK_COMPLETED
        assert events[-1].metadata["outcome"] == "completed"
        assert len(flux.artifacts) == 5


async def test_a_gate_cancelled_while_no_process_ran_the_task_ends_it_as_cancelled(tmp_path: Path) -> None:
    task_id, token_id, _ = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as other:
        await other.cancel(token_id, "not this week")
    async with open_purgatory(url(tmp_path)) as purgatory, await restored(purgatory, task_id) as flux:
        events = await collect(flux.run())
        assert [e.type for e in events] == [E.TASK_COMPLETED]
        assert events[0].metadata["outcome"] == "cancelled"
        assert "approval cancelled" in events[0].message
        assert load_snapshot(await purgatory.store.load_task(task_id) or "")["state"]["outcome"] == "cancelled"


async def test_a_gate_whose_token_never_reached_the_store_is_asked_again(tmp_path: Path) -> None:
    task_id, token_id, _ = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as purgatory:
        text = await purgatory.store.load_task(task_id)
        assert text is not None
        data = json.loads(text)
        data["state"]["parked_token"] = "f" * 32  # as if the process died between snapshot and park
        flux = await WorkshopFlux.restore(data, purgatory=purgatory)
        async with flux:
            assert flux.pending_approval is None
            events = await until_event(flux, E.APPROVAL_REQUESTED)
            fresh = flux.pending_approval
            assert fresh not in (None, token_id, "f" * 32)
            assert [t.id for t in await purgatory.list_pending()] == [token_id, fresh]
            assert events[-1].metadata["token_id"] == fresh


async def test_a_task_stopped_mid_phase_goes_on_from_its_last_boundary_to_the_same_end(tmp_path: Path) -> None:
    _, expected_artifacts = await uninterrupted(seed=11)
    async with open_purgatory(url(tmp_path)) as purgatory, gated(purgatory, 11) as flux:
        plan = await flux.start(TASK)
        seen = await until_event(flux, E.PHASE_STARTED)  # exploring
        seen += await until_event(flux, E.PHASE_STARTED)  # designing
        seen += [e async for e in flux.step()]  # a step into designing, after the boundary
    async with open_purgatory(url(tmp_path)) as purgatory, await restored(purgatory, plan.task.id) as flux:
        assert flux.current_phase is WorkshopPhase.DESIGNING
        assert [a.phase for a in flux.artifacts] == [WorkshopPhase.EXPLORING]
        await until_event(flux, E.APPROVAL_REQUESTED)
        assert flux.pending_approval is not None
        await flux.resolve(flux.pending_approval, "yes")
        await collect(flux.run())
        assert [(a.title, a.content) for a in flux.artifacts] == expected_artifacts


async def test_an_ended_task_is_restored_as_it_ended(tmp_path: Path) -> None:
    task_id, token_id, _ = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as purgatory:
        async with await restored(purgatory, task_id) as flux:
            await flux.resolve(token_id, "reject")
            await collect(flux.run())
        async with await restored(purgatory, task_id) as again:
            assert again.get_status()["outcome"] == "rejected"
            assert await collect(again.run()) == []
            with pytest.raises(FluxStateError):
                await again.perturb("advance")


async def test_the_gate_token_alone_carries_the_whole_task(tmp_path: Path) -> None:
    task_id, token_id, _ = await park(url(tmp_path))
    async with open_purgatory(url(tmp_path)) as purgatory:
        token = await purgatory.get(token_id)
        frozen = JsonCodec().decode(token.frozen_state, context=token_id)
        assert frozen["task"] == task_id
        assert frozen["phase"] == "integrating"
        assert frozen["snapshot"]["state"]["parked_token"] == token_id
        assert frozen["snapshot"]["state"] == json.loads(await purgatory.store.load_task(task_id) or "")["state"]


def test_snapshot_before_a_task_is_refused() -> None:
    with pytest.raises(FluxStateError):
        WorkshopFlux(create_workshop()).snapshot()


async def _snapshot() -> dict[str, Any]:
    async with (
        open_purgatory("memory://") as purgatory,
        WorkshopFlux(create_workshop(), seed=1, purgatory=purgatory) as flux,
    ):
        await flux.start(TASK)
        await until_event(flux, E.ARTIFACT_PRODUCED)
        return flux.snapshot()


def _spoil(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("version", 2, "version 2"),
        ("state.phase", "sleeping", "state.phase"),
        ("state.task.description", "", "state.task"),
        ("state.task.created_at", "yesterday", "state.task.created_at"),
        ("state.task.created_at", "2026-01-01T00:00:00", "with an offset"),
        ("state.active", "Bob", "state.active"),
        ("state.builder_states.Scout", "dancing", "state.builder_states.Scout"),
        ("state.artifacts.0.content", 5, "state.artifacts[0].content"),
        ("state.steps_in_phase", -1, "state.steps_in_phase"),
        ("state.work_needed", True, "state.work_needed"),
        ("state.metrics.total_events", "many", "state.metrics.total_events"),
        ("state.plan.phases", [], "state.plan"),
        ("state.transcript.0.phase", "nowhere", "state.transcript"),
        ("state.lines", "not a list", "state.lines"),
        ("rng", [3, [1, 2], None], "rng"),
        ("rng", "seeded", "rng"),
        ("options.max_steps_per_phase", 0, "options.max_steps_per_phase"),
        ("options.gates", ["never"], "options.gates[0]"),
        ("options.seed", _DELETE, "options.seed"),
        ("dialogue.calls", -3, "dialogue.calls"),
        ("error", 7, "snapshot.error"),
        ("state", [], "state must be an object"),
    ],
)
async def test_a_damaged_snapshot_is_refused_naming_the_field(path: str, value: Any, named: str) -> None:
    data = await _snapshot()
    _spoil(data, path, value)
    async with open_purgatory("memory://") as purgatory:
        with pytest.raises(WorkshopSnapshotError) as caught:
            await WorkshopFlux.restore(json.dumps(data), purgatory=purgatory)
        assert named in str(caught.value)
        assert await purgatory.store.load_tasks() == []


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "{" * 100_000, '{"version": 1}'])
async def test_snapshot_text_that_is_not_a_snapshot_is_refused(text: str) -> None:
    async with open_purgatory("memory://") as purgatory:
        with pytest.raises(WorkshopSnapshotError):
            await WorkshopFlux.restore(text, purgatory=purgatory)


async def test_lone_surrogates_from_an_llm_or_a_server_become_replacement_characters() -> None:
    from agentflux.workshop import DialogueEngine, MockLLMClient

    engine = DialogueEngine(MockLLMClient(lambda messages: "bad \ud800 text"))
    async with open_purgatory("memory://") as purgatory, gated(purgatory, 2, engine) as flux:
        await flux.start(TASK)
        events = await until_event(flux, E.APPROVAL_REQUESTED)
        lines = [e.message for e in events if e.type is E.DIALOGUE]
        assert "bad \ufffd text" in lines
        assert all("\ud800" not in a.content for a in flux.artifacts)
        text = await purgatory.store.load_task(flux.get_status()["task_id"])
        assert text is not None
        text.encode("utf-8")  # storable as it is
    with pytest.raises(ValueError, match="lone surrogate"):
        create_workshop().assign("a task \udc80")


# ----------------------------------------------------------------------------- the runner


async def until(record: Any, *statuses: str) -> None:
    async with asyncio.timeout(10):
        while record.status not in statuses:  # noqa: ASYNC110 - the record is plain data
            await asyncio.sleep(0.01)


async def test_a_new_runner_lists_past_tasks_and_takes_up_the_waiting_one(tmp_path: Path) -> None:
    async with open_purgatory(url(tmp_path)) as purgatory:
        first = TaskRunner(purgatory)
        done = await first.submit("Add a login page", seed=1)
        waiting = await first.submit(TASK, seed=7, gates=["integrating"])
        await until(done, "completed")
        await until(waiting, "waiting")
        token = waiting.pending_approval
        done_titles = [a.title for a in done.artifacts]
        await first.aclose()
        assert waiting.status == "stopped"
    async with open_purgatory(url(tmp_path)) as purgatory:
        second = TaskRunner(purgatory)
        taken = await second.start()
        assert [r.id for r in taken] == [waiting.id]
        assert list(second.tasks) == [done.id, waiting.id]
        listed_done, listed_waiting = second.tasks[done.id], second.tasks[waiting.id]
        assert listed_done.status == "completed"
        assert listed_done.restored
        assert [a.title for a in listed_done.artifacts] == done_titles
        detail = listed_done.detail()
        assert detail["metrics"]["phases_completed"] == len(detail["plan"]["phases"])
        assert detail["dialogue"]
        assert all(artifact["content"] for artifact in detail["artifacts"])
        assert listed_waiting.status == "waiting"
        assert listed_waiting.pending_approval == token
        assert token is not None
        await purgatory.resolve(token, "approve", by="test")
        await until(listed_waiting, "completed")
        assert len(listed_waiting.artifacts) == 5
        assert await second.start() == []  # idempotent: nothing taken twice
        await second.aclose()


async def test_cancelling_a_running_tasks_gate_ends_it_as_cancelled(tmp_path: Path) -> None:
    async with open_purgatory(url(tmp_path)) as purgatory:
        runner = TaskRunner(purgatory)
        await runner.start()
        record = await runner.submit("Deploy the payments service", seed=3, gates=["integrating"])
        await until(record, "waiting")
        assert record.pending_approval is not None
        await purgatory.cancel(record.pending_approval, "not today", by="test")
        await until(record, "cancelled")
        assert record.pending_approval is None
        await runner.aclose()
    async with open_purgatory(url(tmp_path)) as purgatory:
        again = TaskRunner(purgatory)
        assert await again.start() == []
        assert again.tasks[record.id].status == "cancelled"
        await again.aclose()


async def test_an_unreadable_snapshot_is_listed_as_failed_and_the_rest_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_purgatory(url(tmp_path)) as purgatory:
        await purgatory.store.save_task("broken", '{"version": 1, "state": {}}')
        runner = TaskRunner(purgatory)
        good = await runner.submit("Add a login page", seed=1)
        await until(good, "completed")
        await runner.aclose()
    async with open_purgatory(url(tmp_path)) as purgatory:
        runner = TaskRunner(purgatory)
        with caplog.at_level(logging.ERROR, logger="agentflux.workshop"):
            await runner.start()
        assert runner.tasks["broken"].status == "failed"
        assert "state.task" in (runner.tasks["broken"].error or "")
        assert runner.tasks[good.id].status == "completed"
        assert "broken cannot be restored" in caplog.text
        await runner.aclose()


async def test_a_failed_task_stays_failed_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: WorkshopFlux) -> Any:
        raise RuntimeError("the model went away")
        yield  # pragma: no cover - makes this an async generator

    async with open_purgatory(url(tmp_path)) as purgatory:
        runner = TaskRunner(purgatory)
        with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, logger="agentflux.workshop"):
            patch.setattr(WorkshopFlux, "run", broken)
            record = await runner.submit("Add a login page", seed=1)
            await until(record, "failed")
            await runner.aclose()
    async with open_purgatory(url(tmp_path)) as purgatory:
        again = TaskRunner(purgatory)
        assert await again.start() == []
        assert again.tasks[record.id].status == "failed"
        assert again.tasks[record.id].error == "RuntimeError: the model went away"
        await again.aclose()


async def test_every_boundary_is_saved_before_the_task_moves_on(tmp_path: Path) -> None:
    saved: list[tuple[str, Any]] = []
    async with open_purgatory(url(tmp_path)) as purgatory:
        original = purgatory.store.save_task

        async def spy(task_id: str, data: str) -> None:
            state = json.loads(data)["state"]
            saved.append((state["phase"], state["parked_token"] is not None))
            await original(task_id, data)

        purgatory.store.save_task = spy  # type: ignore[method-assign]
        async with WorkshopFlux(create_workshop(), seed=7, purgatory=purgatory, approval_gates=GATES) as flux:
            await flux.start(TASK)
            await until_event(flux, E.APPROVAL_REQUESTED)
            assert flux.pending_approval is not None
            await flux.resolve(flux.pending_approval, "approve")
            await collect(flux.run())
    phases = ["exploring", "designing", "prototyping", "refining"]
    assert saved == [
        ("idle", False),
        *[(phase, False) for phase in phases],
        ("refining", True),  # the gate
        ("integrating", False),
        ("complete", False),
    ]


async def test_a_task_with_llm_dialogue_keeps_its_options_across_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agentflux.workshop import MockLLMClient

    made: list[dict[str, Any]] = []

    def factory(options: Any) -> MockLLMClient:
        made.append(dict(options))
        return MockLLMClient(lambda messages: "from the model")

    async with open_purgatory(url(tmp_path)) as purgatory:
        runner = TaskRunner(purgatory, llm=factory)
        record = await runner.submit(TASK, seed=4, gates=["integrating"], llm={"model": "m", "token_budget": 10_000})
        await until(record, "waiting")
        await runner.aclose()
    async with open_purgatory(url(tmp_path)) as purgatory:
        again = TaskRunner(purgatory, llm=factory)
        (taken,) = await again.start()
        assert made == [{"model": "m", "token_budget": 10_000}] * 2
        assert taken.flux is not None
        engine = taken.flux.dialogue
        assert engine.token_budget == 10_000
        assert engine.tokens_used > 0  # the budget spent before the restart still counts
        await again.aclose()
    async with open_purgatory(url(tmp_path)) as purgatory:
        plain = TaskRunner(purgatory)  # this one has no LLM: the task goes on with templates
        with caplog.at_level(logging.WARNING, logger="agentflux.workshop"):
            (taken,) = await plain.start()
        assert "asked for an LLM" in caplog.text
        assert taken.flux is not None
        assert taken.flux.dialogue.client is None
        assert taken.pending_approval is not None
        await purgatory.resolve(taken.pending_approval, "approve")
        await until(taken, "completed")
        await plain.aclose()
