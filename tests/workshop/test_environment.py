"""``WorkshopEnvironment``: routing, plans, and a ``WorkshopEvent`` on the bus for every change (SPEC 5, 10)."""

from __future__ import annotations

import pytest

from agentflux.sources import EventBus, WouldBlock
from agentflux.workshop import (
    PHASE_ORDER,
    BuilderPhase,
    WorkshopArtifact,
    WorkshopEnvironment,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopPhase,
    WorkshopTask,
    create_sage,
    create_scout,
    create_spark,
    create_steady,
    create_sync,
    create_workshop,
)

E = WorkshopEventType


def drain(subscription: object) -> list[WorkshopEvent]:
    events: list[WorkshopEvent] = []
    while True:
        try:
            events.append(subscription.receive_nowait())  # type: ignore[attr-defined]
        except WouldBlock:
            return events


@pytest.mark.parametrize(
    ("description", "lead"),
    [
        ("Research how other teams cache search results", "Scout"),
        ("Explore options for offline sync", "Scout"),
        ("Design the notification inbox", "Sage"),
        ("Prototype a drag-and-drop board", "Spark"),
        ("Fix the flaky checkout test", "Steady"),
        ("Refactor the billing module", "Steady"),
        ("Deploy the search service", "Sync"),
        ("Integrate the new payment provider", "Sync"),
        ("Release version two", "Sync"),
        ("A reading list for new hires", "Scout"),  # nothing matches: Scout explores
        ("Design and then deploy the gateway", "Sage"),  # the earliest match wins
        ("Deploy, then design the gateway", "Sync"),
        ("Prototype before you fix anything", "Spark"),
    ],
)
def test_routing_by_wording(description: str, lead: str) -> None:
    plan = create_workshop().plan(WorkshopTask(description))
    assert plan.lead_builder == lead


@pytest.mark.parametrize("lead_phase", PHASE_ORDER)
def test_plan_runs_from_the_leads_phase_to_integrating_with_specialists(lead_phase: WorkshopPhase) -> None:
    wording = {
        WorkshopPhase.EXPLORING: "Research search ranking",
        WorkshopPhase.DESIGNING: "Design search ranking",
        WorkshopPhase.PROTOTYPING: "Prototype search ranking",
        WorkshopPhase.REFINING: "Fix search ranking",
        WorkshopPhase.INTEGRATING: "Deploy search ranking",
    }[lead_phase]
    workshop = create_workshop()
    task = WorkshopTask(wording)
    plan = workshop.plan(task)
    assert plan.task is task
    assert plan.phases == PHASE_ORDER[PHASE_ORDER.index(lead_phase) :]
    assert plan.phases[-1] is WorkshopPhase.INTEGRATING
    assert workshop.builders[plan.lead_builder].specialty is lead_phase
    assert set(plan.assignments) == set(plan.phases)
    for phase, archetype in plan.assignments.items():
        assert workshop.builders[archetype].specialty is phase


def test_create_workshop_has_the_five_builders() -> None:
    workshop = create_workshop()
    assert isinstance(workshop, WorkshopEnvironment)
    assert list(workshop.builders) == ["Scout", "Sage", "Spark", "Steady", "Sync"]
    assert isinstance(workshop.bus, EventBus)
    assert workshop.tasks == ()


def test_create_workshop_with_custom_builders() -> None:
    team = [create_scout("Ada"), create_sage("Bo"), create_spark("Cy"), create_steady("Di"), create_sync("Ed")]
    workshop = create_workshop(team)
    assert [b.name for b in workshop.builders.values()] == ["Ada", "Bo", "Cy", "Di", "Ed"]
    with pytest.raises(ValueError, match="Sync"):
        create_workshop(team[:4])


def test_assign_publishes_task_assigned_and_plan_created() -> None:
    workshop = create_workshop()
    feed = workshop.bus.subscribe()
    task = WorkshopTask("Design the notification inbox", priority=3)
    state = workshop.assign(task)
    events = drain(feed)
    feed.close()
    assert [e.type for e in events] == [E.TASK_ASSIGNED, E.PLAN_CREATED]
    assert all(e.metadata["task"] == task.id for e in events)
    assert all(e.builder == "Sage" for e in events)
    assert events[0].metadata["priority"] == 3
    assert "notification inbox" in events[0].message
    assert events[1].metadata["phases"] == tuple(p.value for p in state.plan.phases)
    assert workshop.state(task.id) is state
    assert state.metrics.total_events == 2
    with pytest.raises(ValueError, match="already assigned"):
        workshop.assign(task)
    with pytest.raises(ValueError, match="description"):
        workshop.assign("   ")
    with pytest.raises(KeyError):
        workshop.state("nope")


def test_every_change_publishes_an_event_naming_the_task() -> None:
    workshop = create_workshop()
    feed = workshop.bus.subscribe()
    state = workshop.assign("Research the search ranking")
    phase = state.plan.phases[0]
    workshop.start_phase(state, phase, work_needed=2)
    assert state.builder_states["Scout"] is BuilderPhase.EXPLORING
    workshop.continue_work(state)
    assert state.steps_in_phase == 1
    workshop.say(state, "Scout", "Hello!", source="template", tokens=0)
    artifact = WorkshopArtifact(phase, "Scout", "Notes", "# Notes\n")
    workshop.record_artifact(state, artifact)
    assert state.phase_done
    workshop.complete_phase(state)
    workshop.handoff(state, "Sage", artifact)
    workshop.request_approval(state, WorkshopPhase.DESIGNING, "tok-1", "gated phase")
    assert state.parked_token == "tok-1"
    workshop.resolve_approval(state, WorkshopPhase.DESIGNING, True, "approve")
    assert state.parked_token is None
    assert WorkshopPhase.DESIGNING in state.approved
    workshop.complete(state)
    events = drain(feed)
    feed.close()
    assert [e.type for e in events] == [
        E.TASK_ASSIGNED,
        E.PLAN_CREATED,
        E.PHASE_STARTED,
        E.DIALOGUE,
        E.ARTIFACT_PRODUCED,
        E.PHASE_COMPLETED,
        E.HANDOFF,
        E.APPROVAL_REQUESTED,
        E.APPROVAL_RESOLVED,
        E.TASK_COMPLETED,
    ]
    assert all(e.metadata["task"] == state.task.id for e in events)
    assert state.metrics.total_events == len(events)
    assert state.artifacts == [artifact]
    assert events[4].artifact is artifact
    assert events[7].metadata["token_id"] == "tok-1"
    assert events[8].metadata["approved"] is True
    assert events[-1].metadata["outcome"] == "completed"
    assert state.outcome == "completed"
    assert state.phase is WorkshopPhase.COMPLETE
    assert not any(s.is_working for s in state.builder_states.values())


def test_handoff_event_names_giver_and_receiver() -> None:
    workshop = create_workshop()
    feed = workshop.bus.subscribe()
    state = workshop.assign("Prototype a kanban board")
    workshop.start_phase(state, WorkshopPhase.PROTOTYPING, 1)
    artifact = WorkshopArtifact(WorkshopPhase.PROTOTYPING, "Spark", "Proto", "code")
    drain(feed)
    event = workshop.handoff(state, "Steady", artifact)
    assert drain(feed) == [event]
    feed.close()
    assert event.type is E.HANDOFF
    assert event.builder == "Spark"
    assert event.metadata["to"] == "Steady"
    assert "Spark" in event.message
    assert "Steady" in event.message
    assert event.artifact is artifact
    assert state.active == "Steady"
    assert state.builder_states["Spark"] is BuilderPhase.IDLE
    assert state.builder_states["Steady"] is BuilderPhase.PROTOTYPING
    assert state.metrics.handoffs == 1


def test_handoff_to_an_unknown_builder_changes_nothing() -> None:
    workshop = create_workshop()
    state = workshop.assign("Prototype a kanban board")
    workshop.start_phase(state, WorkshopPhase.PROTOTYPING, 1)
    feed = workshop.bus.subscribe()
    before = (state.active, dict(state.builder_states), state.metrics.total_events)
    with pytest.raises(ValueError, match="Gandalf"):
        workshop.handoff(state, "Gandalf")
    assert drain(feed) == []
    feed.close()
    assert (state.active, dict(state.builder_states), state.metrics.total_events) == before


def test_tasks_of_one_workshop_are_kept_apart() -> None:
    workshop = create_workshop()
    feed = workshop.bus.subscribe()
    first = workshop.assign("Research search ranking")
    second = workshop.assign("Deploy the search service")
    workshop.start_phase(second, WorkshopPhase.INTEGRATING, 1)
    events = drain(feed)
    feed.close()
    assert [e.metadata["task"] for e in events] == [first.task.id] * 2 + [second.task.id] * 3
    assert workshop.tasks == (first, second)
    assert first.phase is WorkshopPhase.IDLE
    assert first.builder_states["Sync"] is BuilderPhase.IDLE  # task-local builder states
    assert second.builder_states["Sync"] is BuilderPhase.INTEGRATING
    assert (first.metrics.total_events, second.metrics.total_events) == (2, 3)


def test_events_are_not_published_after_the_bus_closes() -> None:
    workshop = create_workshop()
    workshop.bus.close()
    state = workshop.assign("Research search ranking")  # still counted, never raises
    assert state.metrics.total_events == 2


def test_refine_routes_to_steady() -> None:
    assert create_workshop().plan(WorkshopTask("Refine the error messages")).lead_builder == "Steady"
