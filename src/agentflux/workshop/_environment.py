"""``WorkshopEnvironment``: the builders, the tasks they work on, and the events of every change."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .._core._text import valid_text
from ..sources import EventBus
from ._builders import ARCHETYPES, Builder, create_sage, create_scout, create_spark, create_steady, create_sync
from ._model import (
    PHASE_ORDER,
    WorkshopArtifact,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopMetrics,
    WorkshopPhase,
    WorkshopPlan,
    WorkshopTask,
)
from ._polynomial import BUILDER_POLYNOMIAL, BuilderInput, BuilderPhase

__all__ = ["TaskState", "WorkshopEnvironment", "create_workshop"]

# Words that make a builder's phase the natural place to start a task.
_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Sync",
        (
            "integrate",
            "integration",
            "deploy",
            "release",
            "ship",
            "merge",
            "roll out",
            "rollout",
            "connect",
            "wire up",
            "migrate",
        ),
    ),
    (
        "Steady",
        (
            "refine",
            "fix",
            "bug",
            "refactor",
            "optimize",
            "optimise",
            "improve",
            "harden",
            "polish",
            "review",
            "test",
            "flaky",
            "slow",
            "clean up",
        ),
    ),
    ("Spark", ("prototype", "spike", "experiment", "try out", "demo", "proof of concept", "poc", "hack", "mock up")),
    ("Sage", ("design", "architecture", "architect", "plan", "structure", "schema", "api", "interface", "model")),
    ("Scout", ("research", "explore", "investigate", "find out", "survey", "compare", "evaluate", "understand", "why")),
)


TRANSCRIPT_LINES = 1000  # dialogue lines a task keeps (a snapshot holds the last of them)


def route(description: str) -> str:
    """The archetype that should lead a task, judged from its wording (Scout if nothing fits).

    A match earlier in the text wins, so "Design and then deploy ..." starts with Sage.
    """
    text = description.lower()
    best: tuple[int, str] | None = None
    for archetype, words in _ROUTES:
        for word in words:
            match = re.search(rf"\b{re.escape(word)}", text)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), archetype)
    return best[1] if best else "Scout"


@dataclass
class TaskState:
    """Everything the workshop knows about one task (as JSON data: ``WorkshopFlux.snapshot()``)."""

    task: WorkshopTask
    plan: WorkshopPlan
    phase: WorkshopPhase = WorkshopPhase.IDLE
    active: str | None = None
    builder_states: dict[str, BuilderPhase] = field(
        default_factory=lambda: dict.fromkeys(ARCHETYPES, BuilderPhase.IDLE)
    )
    artifacts: list[WorkshopArtifact] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # said during the current phase
    steps_in_phase: int = 0
    work_needed: int = 1
    phase_done: bool = False  # the current phase's artifact exists
    approved: set[WorkshopPhase] = field(default_factory=set)
    parked_token: str | None = None
    outcome: str | None = None
    metrics: WorkshopMetrics = field(default_factory=WorkshopMetrics)
    # Every line said, oldest first (builder, phase, text, source, fallback), for showing
    # the conversation after the fact; the most recent TRANSCRIPT_LINES are kept.
    transcript: list[dict[str, Any]] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        """Whether the task has ended (completed, rejected or stopped)."""
        return self.outcome is not None

    def next_phase(self) -> WorkshopPhase | None:
        """The phase after the current one in the plan, or None after the last."""
        phases = self.plan.phases
        if self.phase is WorkshopPhase.IDLE:
            return phases[0]
        index = phases.index(self.phase) + 1
        return phases[index] if index < len(phases) else None


class WorkshopEnvironment:
    """Five builders, the tasks assigned to them, and an ``EventBus`` of every change.

    Every method that changes a task publishes a ``WorkshopEvent`` (its metadata names
    the task) and counts it in the task's metrics, so the two always agree.
    """

    def __init__(
        self, builders: Iterable[Builder] | None = None, *, bus: EventBus[WorkshopEvent] | None = None
    ) -> None:
        team = (
            list(builders)
            if builders is not None
            else [create_scout(), create_sage(), create_spark(), create_steady(), create_sync()]
        )
        self.builders: Mapping[str, Builder] = MappingProxyType({b.archetype: b for b in team})
        missing = set(ARCHETYPES) - set(self.builders)
        if missing:
            raise ValueError(f"a workshop needs all five archetypes; missing {sorted(missing)}")
        self.bus: EventBus[WorkshopEvent] = bus if bus is not None else EventBus()
        self._tasks: dict[str, TaskState] = {}

    # ----------------------------------------------------------------- queries

    def state(self, task_id: str) -> TaskState:
        """The state of a task.

        Raises:
            KeyError: no task with that id.
        """
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no workshop task with id {task_id!r}") from None

    @property
    def tasks(self) -> tuple[TaskState, ...]:
        """Every task assigned so far."""
        return tuple(self._tasks.values())

    def plan(self, task: WorkshopTask) -> WorkshopPlan:
        """Route a task to its lead and lay out the phases from the lead's to INTEGRATING."""
        lead = route(task.description)
        start = PHASE_ORDER.index(self.builders[lead].specialty)
        phases = PHASE_ORDER[start:]
        by_phase = {b.specialty: b.archetype for b in self.builders.values()}
        assignments = MappingProxyType({phase: by_phase[phase] for phase in phases})
        return WorkshopPlan(task=task, phases=phases, lead_builder=lead, assignments=assignments)

    # ----------------------------------------------------------------- changes

    def publish(self, state: TaskState, event: WorkshopEvent) -> WorkshopEvent:
        """Count ``event`` in the task's metrics and put it on the bus."""
        metrics = state.metrics
        metrics.total_events += 1
        kind = event.type
        if kind is WorkshopEventType.DIALOGUE:
            metrics.dialogue_lines += 1
            tokens = int(event.metadata.get("tokens", 0))
            metrics.dialogue_tokens += tokens
            metrics.total_tokens += tokens
            metrics.llm_calls += bool(event.metadata.get("llm_call"))
            metrics.llm_fallbacks += bool(event.metadata.get("fallback"))
        elif kind is WorkshopEventType.ARTIFACT_PRODUCED:
            metrics.artifacts_produced += 1
            metrics.total_tokens += int(event.metadata.get("tokens", 0))
            metrics.llm_calls += bool(event.metadata.get("llm_call"))
            metrics.llm_fallbacks += bool(event.metadata.get("fallback"))
        elif kind is WorkshopEventType.PHASE_COMPLETED:
            metrics.phases_completed += 1
        elif kind is WorkshopEventType.HANDOFF:
            metrics.handoffs += 1
        elif kind is WorkshopEventType.APPROVAL_REQUESTED:
            metrics.approvals_requested += 1
        elif kind is WorkshopEventType.APPROVAL_RESOLVED:
            metrics.approvals_resolved += 1
        elif kind is WorkshopEventType.TASK_COMPLETED:
            metrics.end_time = event.timestamp
        if not self.bus.closed:
            self.bus.publish(event)
        return event

    def _event(
        self,
        state: TaskState,
        kind: WorkshopEventType,
        builder: str | None,
        message: str,
        artifact: WorkshopArtifact | None = None,
        **metadata: Any,
    ) -> WorkshopEvent:
        event = WorkshopEvent(
            kind, builder, state.phase, message, artifact, MappingProxyType({"task": state.task.id, **metadata})
        )
        return self.publish(state, event)

    def _move(self, state: TaskState, archetype: str, builder_input: Any) -> None:
        state.builder_states[archetype], _ = BUILDER_POLYNOMIAL.transition(
            state.builder_states[archetype], builder_input
        )

    def assign(self, task: WorkshopTask | str, *, metrics_start: datetime | None = None) -> TaskState:
        """Take on a task: route it, plan it, publish TASK_ASSIGNED and PLAN_CREATED.

        Raises:
            ValueError: the task id is already in use, or the description is empty.
        """
        if isinstance(task, str):
            task = WorkshopTask(task)
        if task.id in self._tasks:
            raise ValueError(f"task {task.id} is already assigned")
        plan = self.plan(task)
        state = TaskState(task=task, plan=plan)
        state.metrics.start_time = metrics_start or datetime.now(UTC)
        self._tasks[task.id] = state
        self._event(
            state,
            WorkshopEventType.TASK_ASSIGNED,
            plan.lead_builder,
            f"{plan.lead_builder} leads: {task.description}",
            priority=task.priority,
        )
        route_text = " -> ".join(f"{p.value} ({plan.assignments[p]})" for p in plan.phases)
        self._event(
            state,
            WorkshopEventType.PLAN_CREATED,
            plan.lead_builder,
            f"Plan: {route_text}",
            phases=tuple(p.value for p in plan.phases),
        )
        return state

    def adopt(self, state: TaskState) -> None:
        """Take back a task restored from a snapshot, as it was (no events are published).

        Raises:
            ValueError: a task with that id is already here.
        """
        if state.task.id in self._tasks:
            raise ValueError(f"task {state.task.id} is already assigned")
        self._tasks[state.task.id] = state

    def start_phase(self, state: TaskState, phase: WorkshopPhase, work_needed: int) -> WorkshopEvent:
        """Begin ``phase`` with the builder assigned to it."""
        builder = state.plan.assignments[phase]
        state.phase = phase
        state.active = builder
        state.steps_in_phase = 0
        state.work_needed = work_needed
        state.phase_done = False
        state.lines = []
        self._move(state, builder, (BuilderInput.ASSIGN, phase))
        return self._event(state, WorkshopEventType.PHASE_STARTED, builder, f"{builder} starts {phase.value}")

    def continue_work(self, state: TaskState) -> None:
        """Count a step of work on the current phase."""
        assert state.active is not None
        self._move(state, state.active, BuilderInput.CONTINUE)
        state.steps_in_phase += 1

    def say(self, state: TaskState, builder: str, text: str, **metadata: Any) -> WorkshopEvent:
        """Publish a DIALOGUE line (lone surrogates, which are not text, become U+FFFD)."""
        text = valid_text(text)
        line = {"builder": builder, "phase": state.phase.value, "text": text, "source": metadata.get("source", "")}
        if metadata.get("fallback"):
            metadata["fallback"] = line["fallback"] = valid_text(str(metadata["fallback"]))
        state.lines.append(text)
        state.transcript.append(line)
        if len(state.transcript) > 2 * TRANSCRIPT_LINES:  # trimmed now and then, not on every line
            del state.transcript[:-TRANSCRIPT_LINES]
        return self._event(state, WorkshopEventType.DIALOGUE, builder, text, **metadata)

    def record_artifact(self, state: TaskState, artifact: WorkshopArtifact, **metadata: Any) -> WorkshopEvent:
        """Keep an artifact with the task and publish ARTIFACT_PRODUCED (lone surrogates in its
        title or content, which are not text, become U+FFFD)."""
        title, content = valid_text(artifact.title), valid_text(artifact.content)
        if (title, content) != (artifact.title, artifact.content):
            artifact = dataclasses.replace(artifact, title=title, content=content)
        state.artifacts.append(artifact)
        if artifact.phase is state.phase and artifact.builder == state.active:
            state.phase_done = True
        return self._event(
            state,
            WorkshopEventType.ARTIFACT_PRODUCED,
            artifact.builder,
            f"{artifact.builder} produced {artifact.title}",
            artifact,
            **metadata,
        )

    def complete_phase(self, state: TaskState) -> WorkshopEvent:
        """Publish PHASE_COMPLETED for the current phase."""
        builder = state.active
        assert builder is not None
        return self._event(
            state, WorkshopEventType.PHASE_COMPLETED, builder, f"{builder} completed {state.phase.value}"
        )

    def handoff(
        self, state: TaskState, to: str, artifact: WorkshopArtifact | None = None, *, note: str = ""
    ) -> WorkshopEvent:
        """Pass the work from the active builder to ``to`` (with the latest artifact).

        Raises:
            ValueError: ``to`` is not an archetype of this workshop.
        """
        if to not in self.builders:
            raise ValueError(f"cannot hand off to {to!r}: builders are {', '.join(ARCHETYPES)}")
        giver = state.active or state.plan.lead_builder
        if state.builder_states[giver].is_working:
            self._move(state, giver, BuilderInput.HANDOFF)
        if state.phase in state.plan.assignments and not state.builder_states[to].is_working:
            self._move(state, to, (BuilderInput.ASSIGN, state.phase))
        state.active = to
        message = f"{giver} hands off to {to}" + (f": {note}" if note else "")
        return self._event(state, WorkshopEventType.HANDOFF, giver, message, artifact, to=to)

    def request_approval(self, state: TaskState, phase: WorkshopPhase, token_id: str, reason: str) -> WorkshopEvent:
        """Publish APPROVAL_REQUESTED: the task waits for a human before ``phase``."""
        state.parked_token = token_id
        return self._event(
            state,
            WorkshopEventType.APPROVAL_REQUESTED,
            state.active or state.plan.lead_builder,
            f"Approval needed before {phase.value}: {reason}",
            token_id=token_id,
            gate=phase.value,
        )

    def resolve_approval(self, state: TaskState, phase: WorkshopPhase, approved: bool, answer: Any) -> WorkshopEvent:
        """Publish APPROVAL_RESOLVED with the human's answer."""
        token_id = state.parked_token
        state.parked_token = None
        if approved:
            state.approved.add(phase)
        verdict = "approved" if approved else "rejected"
        return self._event(
            state,
            WorkshopEventType.APPROVAL_RESOLVED,
            state.active or state.plan.lead_builder,
            f"{phase.value} {verdict} by a human",
            token_id=token_id,
            approved=approved,
            answer=str(answer),
        )

    def complete(self, state: TaskState, outcome: str = "completed", *, note: str = "") -> WorkshopEvent:
        """End the task with ``outcome`` (and ``note`` saying why) and publish TASK_COMPLETED."""
        for archetype, builder_state in state.builder_states.items():
            if builder_state.is_working:
                self._move(state, archetype, BuilderInput.COMPLETE)
        state.outcome = outcome
        state.phase = WorkshopPhase.COMPLETE if outcome == "completed" else state.phase
        summary = f"{len(state.artifacts)} artifacts, {state.metrics.phases_completed} phases"
        summary = f"{note}; {summary}" if note else summary
        return self._event(
            state,
            WorkshopEventType.TASK_COMPLETED,
            state.active,
            f"Task {outcome}: {state.task.description} ({summary})",
            outcome=outcome,
        )


def create_workshop(builders: Iterable[Builder] | None = None) -> WorkshopEnvironment:
    """A workshop with the five standard builders (or the ones given)."""
    return WorkshopEnvironment(builders)
