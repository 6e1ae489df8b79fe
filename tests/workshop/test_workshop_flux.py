"""``WorkshopFlux``: a task carried through its phases as a stream, on top of the flux (SPEC 5, 10)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from agentflux import AgentfluxError, FluxState, FluxStateError, SemaphoreResumeError, SemaphoreStatus, open_purgatory
from agentflux.workshop import (
    PHASE_ORDER,
    BuilderPhase,
    WorkshopArtifact,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopFlux,
    WorkshopMetrics,
    WorkshopPhase,
    WorkshopPlan,
    WorkshopTask,
    create_workshop,
)

from ._helpers import assert_metrics_agree, collect, run_task, types_of

E = WorkshopEventType
FIVE_PHASES = "Research a caching layer for the search results"  # Scout leads: all five phases
SPECIALTY = {
    "Scout": WorkshopPhase.EXPLORING,
    "Sage": WorkshopPhase.DESIGNING,
    "Spark": WorkshopPhase.PROTOTYPING,
    "Steady": WorkshopPhase.REFINING,
    "Sync": WorkshopPhase.INTEGRATING,
}


def phase_blocks(events: list[WorkshopEvent]) -> list[WorkshopPhase]:
    return [e.phase for e in events if e.type is E.PHASE_STARTED]


async def drive_by_steps(wf: WorkshopFlux, limit: int = 500) -> list[WorkshopEvent]:
    """With auto_advance=False: step, and perturb("advance") whenever a step has nothing to do."""
    events: list[WorkshopEvent] = []
    for _ in range(limit):
        got = [event async for event in wf.step()]
        events.extend(got)
        if any(e.type is E.TASK_COMPLETED for e in got):
            return events
        if not got:
            await wf.perturb("advance")
    raise AssertionError("the task did not complete")


# --------------------------------------------------------------------------------- full runs


async def test_a_full_run_yields_every_event_in_order() -> None:
    async with WorkshopFlux(create_workshop(), seed=1) as wf:
        plan = await wf.start(FIVE_PHASES)
        assert isinstance(plan, WorkshopPlan)
        assert plan.phases == PHASE_ORDER
        events = await collect(wf.run())
        assert events[0].type is E.TASK_ASSIGNED
        assert events[1].type is E.PLAN_CREATED
        assert events[-1].type is E.TASK_COMPLETED
        assert types_of(events).count(E.TASK_COMPLETED) == 1
        assert events[-1].metadata["outcome"] == "completed"
        assert phase_blocks(events) == list(PHASE_ORDER)
        assert [e.phase for e in events if e.type is E.PHASE_COMPLETED] == list(PHASE_ORDER)
        # each phase: started, then its artifact, then completed; handoffs between phases
        for phase in PHASE_ORDER:
            kinds = [e.type for e in events if e.phase is phase]
            assert kinds.index(E.PHASE_STARTED) < kinds.index(E.ARTIFACT_PRODUCED) < kinds.index(E.PHASE_COMPLETED)
        assert types_of(events).count(E.HANDOFF) == len(PHASE_ORDER) - 1
        timestamps = [e.timestamp for e in events]
        assert timestamps == sorted(timestamps)
        assert all(e.metadata["task"] == plan.task.id for e in events)
        metrics = wf.get_metrics()
        assert isinstance(metrics, WorkshopMetrics)
        assert metrics.total_events == len(events)
        assert metrics.phases_completed == 5
        assert metrics.total_steps > 0
        assert metrics.end_time is not None
        assert metrics.start_time is not None
        assert metrics.start_time <= metrics.end_time
        assert metrics.duration_seconds >= 0
        assert metrics.dialogue_tokens == 0  # template lines count nothing
        assert_metrics_agree(metrics, events)
        assert wf.current_phase is WorkshopPhase.COMPLETE
        status = wf.get_status()
        assert status["outcome"] == "completed"
        assert status["phase"] == "complete"
        assert status["task_id"] == plan.task.id


async def test_run_ends_after_completion_and_again_yields_nothing() -> None:
    async with WorkshopFlux(create_workshop(), seed=2) as wf:
        await run_task(wf, "Deploy the search service")
        assert await collect(wf.run()) == []
        assert [e async for e in wf.step()] == []


async def test_every_phase_produced_a_recorded_artifact_with_real_content() -> None:
    async with WorkshopFlux(create_workshop(), seed=3) as wf:
        events = await run_task(wf, FIVE_PHASES)
        produced = [e.artifact for e in events if e.type is E.ARTIFACT_PRODUCED]
        assert wf.artifacts == tuple(produced)
        assert [a.phase for a in wf.artifacts] == list(PHASE_ORDER)
        assert [a.builder for a in wf.artifacts] == list(SPECIALTY)
        for artifact in wf.artifacts:
            assert "caching" in artifact.content.lower()
            assert len(artifact.content) > 100
        assert len({a.content for a in wf.artifacts}) == 5
        assert wf.get_status()["artifacts"] == [a.title for a in wf.artifacts]


async def test_builders_start_in_their_own_specialty() -> None:
    async with WorkshopFlux(create_workshop(), seed=4) as wf:
        await wf.start(FIVE_PHASES)
        seen: list[tuple[str, WorkshopPhase]] = []
        while True:
            got = [e async for e in wf.step()]
            for event in got:
                if event.type is E.PHASE_STARTED:
                    assert event.builder is not None
                    assert SPECIALTY[event.builder] is event.phase
                    seen.append((event.builder, event.phase))
            if any(e.type is E.PHASE_STARTED for e in got):
                status = wf.get_status()
                active = status["active_builder"]
                assert status["builder_states"][active] == SPECIALTY[active].value
                assert wf.active_builder is not None
                assert wf.active_builder.archetype == active
                working = [b for b, s in status["builder_states"].items() if BuilderPhase(s).is_working]
                assert working == [active]  # one builder at a time
            if any(e.type is E.TASK_COMPLETED for e in got):
                break
        assert seen == list(SPECIALTY.items())
        assert all(s == "idle" for s in wf.get_status()["builder_states"].values())


# ------------------------------------------------------------------------------ determinism


async def replay_of(seed: int, task_id: str = "fixed-task") -> list[tuple[object, ...]]:
    async with WorkshopFlux(create_workshop(), seed=seed) as wf:
        events = await run_task(wf, WorkshopTask(FIVE_PHASES, id=task_id))
        return [event.replayable() for event in events]


async def test_same_seed_gives_the_same_event_stream() -> None:
    first = await replay_of(11)
    second = await replay_of(11)
    assert first == second
    assert len(first) > 20


async def test_different_seeds_may_differ() -> None:
    runs = [await replay_of(seed) for seed in (1, 2, 3)]
    assert len({tuple(run) for run in runs}) > 1


async def gated_replay_of(seed: int) -> list[tuple[object, ...]]:
    async with WorkshopFlux(create_workshop(), seed=seed, approval_gates=[WorkshopPhase.INTEGRATING]) as wf:
        await wf.start(WorkshopTask("Deploy the search service", id="fixed-task"))
        events, _ = await run_with_answer(wf, "approve")
        return [event.replayable() for event in events]


async def test_same_seed_gives_the_same_event_stream_with_approvals() -> None:
    first = await gated_replay_of(11)
    second = await gated_replay_of(11)
    assert [event[0] for event in first] == [event[0] for event in second]  # same shape, for a clear failure
    assert first == second


# ------------------------------------------------------------------------------------ step()


async def test_step_yields_the_events_of_one_step() -> None:
    async with WorkshopFlux(create_workshop(), seed=5) as wf:
        await wf.start(FIVE_PHASES)
        first = [e async for e in wf.step()]
        assert types_of(first) == [E.TASK_ASSIGNED, E.PLAN_CREATED, E.PHASE_STARTED, E.DIALOGUE]
        second = [e async for e in wf.step()]
        assert types_of(second) == [E.DIALOGUE]  # a step of work: the builder says something
        assert wf.get_metrics().total_steps == 2
        steps = [first, second]
        while not any(e.type is E.TASK_COMPLETED for e in steps[-1]):
            steps.append([e async for e in wf.step()])
        events = [e for step in steps for e in step]
        assert_metrics_agree(wf.get_metrics(), events)
        assert wf.get_metrics().total_steps == len(steps)


async def test_step_and_run_before_start_raise() -> None:
    async with WorkshopFlux(create_workshop()) as wf:
        with pytest.raises(FluxStateError):
            await collect(wf.run())
        with pytest.raises(FluxStateError):
            await collect(wf.step())
        with pytest.raises(FluxStateError):
            await wf.perturb("advance")
        assert wf.get_status()["task"] is None
        assert wf.get_metrics() == WorkshopMetrics()
        assert wf.artifacts == ()
        assert wf.current_phase is WorkshopPhase.IDLE


def test_max_steps_per_phase_is_validated() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_steps_per_phase"):
            WorkshopFlux(create_workshop(), max_steps_per_phase=bad)  # type: ignore[arg-type]


async def test_max_steps_per_phase_bounds_the_work_of_a_phase() -> None:
    async with WorkshopFlux(create_workshop(), seed=6, max_steps_per_phase=1) as wf:
        events = await run_task(wf, FIVE_PHASES)
        for phase in PHASE_ORDER:
            continues = [e for e in events if e.type is E.DIALOGUE and e.phase is phase]
            # start line, artifact line, handoff/complete line: no "continue" chatter at 1 step
            assert len(continues) == 3, [e.message for e in continues]


# ---------------------------------------------------------------------------------- perturb()


async def test_perturb_advance_returns_the_event_and_goes_through_the_flux() -> None:
    async with WorkshopFlux(create_workshop(), seed=7, auto_advance=False) as wf:
        await wf.start(FIVE_PHASES)
        inner_before = wf.get_status()["flux"].perturbations
        event = await wf.perturb("advance")
        assert event.type is E.PHASE_STARTED
        assert event.phase is WorkshopPhase.EXPLORING
        assert wf.get_metrics().perturbations == 1
        assert wf.get_status()["flux"].perturbations == inner_before + 1
        event = await wf.perturb("advance")  # writes the exploring artifact first, then moves on
        assert event.type is E.PHASE_STARTED
        assert event.phase is WorkshopPhase.DESIGNING
        assert [a.phase for a in wf.artifacts] == [WorkshopPhase.EXPLORING]
        assert wf.get_metrics().perturbations == 2
        assert wf.get_status()["flux"].perturbations == inner_before + 2


async def test_perturbation_driven_run_without_auto_advance() -> None:
    async with WorkshopFlux(create_workshop(), seed=8, auto_advance=False) as wf:
        await wf.start(FIVE_PHASES)
        events = await drive_by_steps(wf)
        assert events[0].type is E.TASK_ASSIGNED
        assert events[-1].type is E.TASK_COMPLETED
        assert phase_blocks(events) == list(PHASE_ORDER)
        metrics = wf.get_metrics()
        assert metrics.perturbations == len(PHASE_ORDER)  # one advance per phase
        assert_metrics_agree(metrics, events)
        assert len(wf.artifacts) == 5


async def test_without_auto_advance_run_waits_for_an_advance() -> None:
    async with WorkshopFlux(create_workshop(), seed=9, auto_advance=False) as wf:
        await wf.start("Deploy the search service")  # one phase
        received: list[WorkshopEvent] = []
        artifact_seen = asyncio.Event()

        async def consume() -> None:
            async for event in wf.run():
                received.append(event)
                if event.type is E.ARTIFACT_PRODUCED:
                    artifact_seen.set()

        async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume())
            await artifact_seen.wait()
            for _ in range(5):
                await asyncio.sleep(0)
            assert not consumer.done()  # waiting for an advance, not finishing by itself
            assert received[-1].type is not E.TASK_COMPLETED
            event = await wf.perturb("advance")
            assert event.type is E.TASK_COMPLETED
        assert received[-1] == event
        assert_metrics_agree(wf.get_metrics(), received)


async def test_perturb_complete_ends_the_task_and_metrics_agree() -> None:
    async with WorkshopFlux(create_workshop(), seed=10) as wf:
        await wf.start(FIVE_PHASES)
        events = [e async for e in wf.step()] + [e async for e in wf.step()]
        completed = await wf.perturb("complete")
        assert completed.type is E.TASK_COMPLETED
        assert completed.metadata["outcome"] == "completed"
        rest = await collect(wf.run())
        assert rest[-1] == completed
        events += rest
        assert types_of(events).count(E.TASK_COMPLETED) == 1
        metrics = wf.get_metrics()
        assert metrics.perturbations == 1
        assert_metrics_agree(metrics, events)
        assert wf.get_status()["outcome"] == "completed"
        with pytest.raises(FluxStateError):
            await wf.perturb("advance")
        with pytest.raises(FluxStateError):
            await wf.perturb("complete")


async def test_perturb_after_completion_raises() -> None:
    async with WorkshopFlux(create_workshop(), seed=1) as wf:
        await run_task(wf, "Deploy the search service")
        for action in ("advance", "complete", "inject_artifact"):
            with pytest.raises(FluxStateError):
                await wf.perturb(action, artifact="late")  # type: ignore[arg-type]
        with pytest.raises(FluxStateError):
            await wf.perturb("handoff", builder="Sage")


async def test_perturb_handoff_passes_the_work() -> None:
    async with WorkshopFlux(create_workshop(), seed=12) as wf:
        await wf.start(FIVE_PHASES)
        events = [e async for e in wf.step()]
        assert wf.get_status()["active_builder"] == "Scout"
        event = await wf.perturb("handoff", builder="Sage")
        assert event.type is E.HANDOFF
        assert event.builder == "Scout"
        assert event.metadata["to"] == "Sage"
        assert "Scout" in event.message
        assert "Sage" in event.message
        status = wf.get_status()
        assert status["active_builder"] == "Sage"
        assert status["builder_states"]["Scout"] == "idle"
        assert status["builder_states"]["Sage"] == "exploring"
        events += await collect(wf.run())
        assert events[-1].type is E.TASK_COMPLETED
        metrics = wf.get_metrics()
        assert metrics.perturbations == 1
        assert_metrics_agree(metrics, events)
        assert wf.artifacts[0].phase is WorkshopPhase.EXPLORING
        assert wf.artifacts[0].builder == "Sage"  # the one who took over wrote it


async def test_inject_artifact_with_a_string_and_with_an_artifact() -> None:
    async with WorkshopFlux(create_workshop(), seed=13) as wf:
        await wf.start(FIVE_PHASES)
        events = [e async for e in wf.step()]
        inner_before = wf.get_status()["flux"].perturbations
        note = await wf.perturb("inject_artifact", artifact="Remember the EU data rules.")
        assert note.type is E.ARTIFACT_PRODUCED
        assert note.artifact is not None
        assert note.artifact.content == "Remember the EU data rules."
        assert note.artifact.phase is WorkshopPhase.EXPLORING
        mine = WorkshopArtifact(WorkshopPhase.EXPLORING, "User", "Benchmarks", "p99 is 40 ms today")
        event = await wf.perturb("inject_artifact", artifact=mine)
        assert event.type is E.ARTIFACT_PRODUCED
        assert event.artifact == mine
        assert wf.artifacts == (note.artifact, mine)
        assert wf.get_metrics().perturbations == 2
        assert wf.get_status()["flux"].perturbations == inner_before + 2
        events += await collect(wf.run())
        assert_metrics_agree(wf.get_metrics(), events)
        assert wf.artifacts[:2] == (note.artifact, mine)
        assert len(wf.artifacts) == 2 + 5  # the injected ones, then one per phase


@pytest.mark.parametrize(
    ("action", "kwargs"),
    [
        ("dance", {}),
        ("step", {}),
        ("handoff", {}),
        ("handoff", {"builder": "Gandalf"}),
        ("inject_artifact", {}),
        ("inject_artifact", {"artifact": 42}),
    ],
)
async def test_invalid_perturbations_raise_value_error_and_change_nothing(
    action: str, kwargs: dict[str, object]
) -> None:
    async with WorkshopFlux(create_workshop(), seed=14) as wf:
        await wf.start(FIVE_PHASES)
        events = [e async for e in wf.step()]
        before = (wf.get_status(), wf.get_metrics())
        with pytest.raises(ValueError, match=action if action != "step" else "unknown"):
            await wf.perturb(action, **kwargs)  # type: ignore[arg-type]
        after = (wf.get_status(), wf.get_metrics())
        assert after[1] == before[1]
        assert after[0]["builder_states"] == before[0]["builder_states"]
        assert after[0]["flux"].perturbations == before[0]["flux"].perturbations
        events += await collect(wf.run())
        assert_metrics_agree(wf.get_metrics(), events)


async def test_concurrent_perturbations_are_applied_one_at_a_time() -> None:
    async with WorkshopFlux(create_workshop(), seed=15) as wf:
        await wf.start(FIVE_PHASES)
        notes = [f"note {i}" for i in range(10)]
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(wf.perturb("inject_artifact", artifact=n) for n in notes))
        assert [r.artifact.content for r in results if r.artifact is not None] == notes
        assert [a.content for a in wf.artifacts] == notes
        assert wf.get_metrics().perturbations == 10
        events = await collect(wf.run())
        assert_metrics_agree(wf.get_metrics(), events)


# ------------------------------------------------------------------------------ task lifecycle


async def test_a_new_task_can_start_after_one_completes_and_metrics_reset() -> None:
    async with WorkshopFlux(create_workshop(), seed=16) as wf:
        first = await run_task(wf, FIVE_PHASES)
        first_metrics = wf.get_metrics()
        assert first_metrics.phases_completed == 5
        second = await run_task(wf, "Deploy the search service")
        metrics = wf.get_metrics()
        assert metrics.phases_completed == 1
        assert metrics.total_events == len(second)
        assert metrics.start_time is not None
        assert first_metrics.end_time is not None
        assert metrics.start_time >= first_metrics.end_time
        assert_metrics_agree(metrics, second)
        assert {e.metadata["task"] for e in first}.isdisjoint({e.metadata["task"] for e in second})
        assert [a.phase for a in wf.artifacts] == [WorkshopPhase.INTEGRATING]  # artifacts are per task


async def test_start_while_a_task_is_running_raises() -> None:
    async with WorkshopFlux(create_workshop(), seed=17) as wf:
        plan = await wf.start(FIVE_PHASES)
        [e async for e in wf.step()]
        with pytest.raises(FluxStateError):
            await wf.start("Another task")
        assert wf.get_status()["task_id"] == plan.task.id
        events = await collect(wf.run())
        assert events[-1].type is E.TASK_COMPLETED


async def test_aclose_is_idempotent_and_stops_the_inner_flux() -> None:
    wf = WorkshopFlux(create_workshop(), seed=18)
    await wf.start(FIVE_PHASES)
    [e async for e in wf.step()]
    assert wf.get_status()["flux"].state is FluxState.FLOWING
    await wf.aclose()
    assert wf.get_status()["flux"].state is FluxState.STOPPED
    await wf.aclose()
    assert wf.get_status()["flux"].state is FluxState.STOPPED
    # the conftest's check then proves that no task of the inner flux is left running


# --------------------------------------------------------------------------------- approvals


async def run_with_answer(wf: WorkshopFlux, answer: str) -> tuple[list[WorkshopEvent], str]:
    events: list[WorkshopEvent] = []
    token_id = ""
    async with asyncio.timeout(5):
        async for event in wf.run():
            events.append(event)
            if event.type is E.APPROVAL_REQUESTED:
                token_id = event.metadata["token_id"]
                assert wf.pending_approval == token_id
                token = await wf.purgatory.get(token_id)
                assert token.status is SemaphoreStatus.PENDING
                assert token.options == ("approve", "reject")
                assert "integrating" in token.prompt
                await wf.resolve(token_id, answer)
    return events, token_id


async def test_an_approval_gate_parks_and_approve_continues_to_completion() -> None:
    async with WorkshopFlux(create_workshop(), seed=19, approval_gates=[WorkshopPhase.INTEGRATING]) as wf:
        await wf.start(FIVE_PHASES)
        events, token_id = await run_with_answer(wf, "approve")
        kinds = types_of(events)
        assert kinds.count(E.APPROVAL_REQUESTED) == 1
        assert kinds.count(E.APPROVAL_RESOLVED) == 1
        requested = kinds.index(E.APPROVAL_REQUESTED)
        # nothing of INTEGRATING happened before the approval, and it started after it
        assert all(e.phase is not WorkshopPhase.INTEGRATING for e in events[:requested])
        assert phase_blocks(events[requested:]) == [WorkshopPhase.INTEGRATING]
        assert events[requested].metadata["gate"] == "integrating"
        resolved = events[kinds.index(E.APPROVAL_RESOLVED)]
        assert resolved.metadata["approved"] is True
        assert resolved.metadata["token_id"] == token_id
        assert events[-1].type is E.TASK_COMPLETED
        assert events[-1].metadata["outcome"] == "completed"
        assert phase_blocks(events) == list(PHASE_ORDER)
        assert (await wf.purgatory.get(token_id)).status is SemaphoreStatus.RESOLVED
        assert wf.pending_approval is None
        metrics = wf.get_metrics()
        assert (metrics.approvals_requested, metrics.approvals_resolved) == (1, 1)
        assert_metrics_agree(metrics, events)
        assert wf.get_status()["flux"].semaphores_ejected == 1


async def test_reject_ends_the_task_as_rejected() -> None:
    async with WorkshopFlux(create_workshop(), seed=20, approval_gates=[WorkshopPhase.INTEGRATING]) as wf:
        await wf.start(FIVE_PHASES)
        events, _ = await run_with_answer(wf, "reject")
        assert events[-1].type is E.TASK_COMPLETED
        assert events[-1].metadata["outcome"] == "rejected"
        assert WorkshopPhase.INTEGRATING not in phase_blocks(events)
        assert [e.metadata["approved"] for e in events if e.type is E.APPROVAL_RESOLVED] == [False]
        assert wf.get_status()["outcome"] == "rejected"
        assert len(wf.artifacts) == 4
        assert_metrics_agree(wf.get_metrics(), events)


async def consume_until_parked(wf: WorkshopFlux, events: list[WorkshopEvent], parked: asyncio.Event) -> None:
    async for event in wf.run():
        events.append(event)
        if event.type is E.APPROVAL_REQUESTED:
            parked.set()


async def test_resolving_in_the_purgatory_resumes_the_waiting_run() -> None:
    """The inner flux watches its purgatory: a resolution made elsewhere continues the task."""
    async with WorkshopFlux(create_workshop(), seed=21, approval_gates=[WorkshopPhase.INTEGRATING]) as wf:
        await wf.start(FIVE_PHASES)
        events: list[WorkshopEvent] = []
        parked = asyncio.Event()
        async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume_until_parked(wf, events, parked))
            await parked.wait()
            await asyncio.sleep(0)
            assert not consumer.done()  # run() waits for the answer
            token_id = events[-1].metadata["token_id"]
            await wf.purgatory.resolve(token_id, "approve")
        assert events[-1].metadata["outcome"] == "completed"
        assert phase_blocks(events)[-1] is WorkshopPhase.INTEGRATING
        assert wf.get_status()["flux"].semaphores_resumed == 1
        assert (await wf.purgatory.get(token_id)).status is SemaphoreStatus.RESOLVED
        assert_metrics_agree(wf.get_metrics(), events)


async def test_an_answer_from_another_process_resumes_the_task(tmp_path: Path) -> None:
    """A second purgatory on the same SQLite file stands in for the CLI in another terminal."""
    url = f"sqlite:///{tmp_path}/p.db"
    async with open_purgatory(url) as purgatory:
        wf = WorkshopFlux(create_workshop(), seed=26, purgatory=purgatory, approval_gates=[WorkshopPhase.INTEGRATING])
        async with wf:
            await wf.start("Deploy the search service")
            events: list[WorkshopEvent] = []
            parked = asyncio.Event()
            async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
                tg.create_task(consume_until_parked(wf, events, parked))
                await parked.wait()
                elsewhere = open_purgatory(url)
                try:
                    await elsewhere.resolve(events[-1].metadata["token_id"], "approve")
                finally:
                    await elsewhere.aclose()
            assert events[-1].metadata["outcome"] == "completed"
            assert [e.metadata["approved"] for e in events if e.type is E.APPROVAL_RESOLVED] == [True]
            assert_metrics_agree(wf.get_metrics(), events)


async def test_perturb_advance_into_a_gate_returns_the_approval_request() -> None:
    async with WorkshopFlux(
        create_workshop(), seed=22, auto_advance=False, approval_gates=[WorkshopPhase.INTEGRATING]
    ) as wf:
        await wf.start("Deploy the search service")  # the first phase is gated
        event = await wf.perturb("advance")
        assert event.type is E.APPROVAL_REQUESTED
        token_id = event.metadata["token_id"]
        assert (await wf.purgatory.get(token_id)).status is SemaphoreStatus.PENDING
        assert [e async for e in wf.step()][-1] == event  # a step does nothing while parked
        assert [e async for e in wf.step()] == []
        started = await wf.resolve(token_id, "yes")
        assert isinstance(started, WorkshopEvent)
        assert started.type is E.PHASE_STARTED
        assert started.phase is WorkshopPhase.INTEGRATING


@pytest.mark.parametrize(
    ("description", "sensitive", "gated"),
    [
        ("Deploy the new search index to production", True, True),
        ("Research a faster search index for production", True, True),
        ("Research color palettes for the docs site", True, False),
        ("Deploy the new search index to production", False, False),
    ],
)
async def test_gate_sensitive_gates_integrating_for_sensitive_tasks(
    description: str, sensitive: bool, gated: bool
) -> None:
    async with WorkshopFlux(create_workshop(), seed=23, gate_sensitive=sensitive) as wf:
        await wf.start(description)
        events, _ = await run_with_answer(wf, "approve")
        requested = [e for e in events if e.type is E.APPROVAL_REQUESTED]
        assert len(requested) == (1 if gated else 0)
        if gated:
            assert requested[0].metadata["gate"] == "integrating"
            assert "sensitive" in requested[0].message
        assert events[-1].metadata["outcome"] == "completed"


async def test_two_tasks_in_one_workshop_one_waits_while_the_other_completes() -> None:
    workshop = create_workshop()
    async with open_purgatory("memory://") as purgatory:
        gated = WorkshopFlux(workshop, seed=24, purgatory=purgatory, approval_gates=[WorkshopPhase.INTEGRATING])
        free = WorkshopFlux(workshop, seed=25, purgatory=purgatory)
        async with gated, free:
            plan_a = await gated.start(WorkshopTask("Refactor the search ranking", id="task-a"))
            plan_b = await free.start(WorkshopTask("Design the notification inbox", id="task-b"))
            events_a: list[WorkshopEvent] = []
            parked = asyncio.Event()

            async def consume_a() -> None:
                async for event in gated.run():
                    events_a.append(event)
                    if event.type is E.APPROVAL_REQUESTED:
                        parked.set()

            async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
                consumer = tg.create_task(consume_a())
                await parked.wait()
                token_id = gated.pending_approval
                assert token_id is not None
                events_b = await collect(free.run())
                assert events_b[-1].metadata["outcome"] == "completed"
                assert not consumer.done()  # A still waits in purgatory
                assert gated.pending_approval == token_id
                assert (await purgatory.get(token_id)).status is SemaphoreStatus.PENDING
                assert [t.id for t in await purgatory.list_pending()] == [token_id]
                with pytest.raises(SemaphoreResumeError):  # B cannot answer A's approval
                    await free.resolve(token_id, "approve")
                assert (await purgatory.get(token_id)).status is SemaphoreStatus.PENDING
                await gated.resolve(token_id, "approve")
            assert events_a[-1].metadata["outcome"] == "completed"
            assert all(e.metadata["task"] == plan_a.task.id for e in events_a)
            assert all(e.metadata["task"] == plan_b.task.id for e in events_b)
            assert_metrics_agree(gated.get_metrics(), events_a)
            assert_metrics_agree(free.get_metrics(), events_b)
            assert Counter(s.outcome for s in workshop.tasks) == {"completed": 2}


# ------------------------------------------------------------------------------- performance


async def test_a_five_phase_template_run_is_cheap() -> None:
    timings = []
    for seed in range(5):
        async with WorkshopFlux(create_workshop(), seed=seed) as wf:
            started = time.process_time()
            events = await run_task(wf, FIVE_PHASES)
            timings.append(time.process_time() - started)
            assert phase_blocks(events) == list(PHASE_ORDER)
    assert statistics.median(timings) < 0.2, timings


# ------------------------------------------------- perturbations at a gate, consumers that come back


async def test_advance_while_parked_does_not_ask_for_a_second_approval() -> None:
    """Regression: a second advance used to park a second token for the same gate."""
    async with WorkshopFlux(
        create_workshop(), seed=30, auto_advance=False, approval_gates=[WorkshopPhase.INTEGRATING]
    ) as wf:
        await wf.start("Deploy the search service")
        request = await wf.perturb("advance")
        token_id = request.metadata["token_id"]
        again = await wf.perturb("advance")
        assert again == request  # the gate still waits: advancing cannot skip it
        assert [t.id for t in await wf.purgatory.list_pending()] == [token_id]
        assert wf.pending_approval == token_id
        started = await wf.resolve(token_id, "approve")
        assert started.type is E.PHASE_STARTED
        assert await wf.purgatory.list_pending() == []
        events = await drive_by_steps(wf)  # without auto_advance: step, advance when the phase is done
        assert types_of(events).count(E.APPROVAL_REQUESTED) == 1
        assert events[-1].metadata["outcome"] == "completed"
        assert_metrics_agree(wf.get_metrics(), events)


async def test_completing_a_parked_task_withdraws_its_approval() -> None:
    """Regression: the token stayed pending and answering it later broke the ended task."""
    async with WorkshopFlux(
        create_workshop(), seed=31, auto_advance=False, approval_gates=[WorkshopPhase.INTEGRATING]
    ) as wf:
        await wf.start("Deploy the search service")
        request = await wf.perturb("advance")
        token_id = request.metadata["token_id"]
        done = await wf.perturb("complete")
        assert done.type is E.TASK_COMPLETED
        assert wf.pending_approval is None
        assert (await wf.purgatory.get(token_id)).status is SemaphoreStatus.CANCELLED
        events = await collect(wf.run())
        assert events[-1] == done
        with pytest.raises(AgentfluxError):
            await wf.resolve(token_id, "approve")
        with pytest.raises(AgentfluxError):
            await wf.purgatory.resolve(token_id, "approve")
        assert [e async for e in wf.step()] == []  # nothing happens to a task after TASK_COMPLETED
        assert_metrics_agree(wf.get_metrics(), events)


async def test_a_consumer_that_stops_early_and_resumes_misses_nothing() -> None:
    """Regression: run() and step() used to drop the rest of a batch when the consumer stopped."""
    async with WorkshopFlux(create_workshop(), seed=32) as wf:
        await wf.start(FIVE_PHASES)
        seen: list[WorkshopEvent] = []
        async with contextlib.aclosing(wf.run()) as stream:
            async for event in stream:
                seen.append(event)
                break
        async with contextlib.aclosing(wf.step()) as stream:
            async for event in stream:
                seen.append(event)
                break
        while seen[-1].type is not E.TASK_COMPLETED:
            async with contextlib.aclosing(wf.run()) as stream:
                async for event in stream:
                    seen.append(event)
                    if len(seen) % 7 == 0:
                        break
        assert types_of(seen)[:3] == [E.TASK_ASSIGNED, E.PLAN_CREATED, E.PHASE_STARTED]
        assert_metrics_agree(wf.get_metrics(), seen)
        assert phase_blocks(seen) == list(PHASE_ORDER)
