"""The workshop's vocabulary: phases, tasks, plans, artifacts, events and metrics."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .._core._text import has_surrogates

__all__ = [
    "PHASE_ORDER",
    "WorkshopArtifact",
    "WorkshopEvent",
    "WorkshopEventType",
    "WorkshopMetrics",
    "WorkshopPhase",
    "WorkshopPlan",
    "WorkshopTask",
]


def _now() -> datetime:
    return datetime.now(UTC)


class WorkshopPhase(enum.StrEnum):
    """Where a task is: the five working phases between IDLE and COMPLETE."""

    IDLE = "idle"
    EXPLORING = "exploring"
    DESIGNING = "designing"
    PROTOTYPING = "prototyping"
    REFINING = "refining"
    INTEGRATING = "integrating"
    COMPLETE = "complete"


PHASE_ORDER: tuple[WorkshopPhase, ...] = (
    WorkshopPhase.EXPLORING,
    WorkshopPhase.DESIGNING,
    WorkshopPhase.PROTOTYPING,
    WorkshopPhase.REFINING,
    WorkshopPhase.INTEGRATING,
)
"""The working phases in the order a task passes through them."""


class WorkshopEventType(enum.StrEnum):
    """Everything that can happen in a workshop."""

    TASK_ASSIGNED = "task_assigned"
    PLAN_CREATED = "plan_created"
    PHASE_STARTED = "phase_started"
    PHASE_COMPLETED = "phase_completed"
    HANDOFF = "handoff"
    ARTIFACT_PRODUCED = "artifact_produced"
    DIALOGUE = "dialogue"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_RESOLVED = "approval_resolved"
    USER_QUERY = "user_query"
    USER_RESPONSE = "user_response"
    TASK_COMPLETED = "task_completed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class WorkshopTask:
    """What the workshop is asked to do."""

    description: str
    priority: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(f"WorkshopTask.description must be a non-empty str, got {self.description!r}")
        if has_surrogates(self.description):
            raise ValueError("WorkshopTask.description holds a lone surrogate, which is not text")


@dataclass(frozen=True, slots=True)
class WorkshopPlan:
    """The phases a task runs through, who leads, and who works each phase."""

    task: WorkshopTask
    phases: tuple[WorkshopPhase, ...]
    lead_builder: str
    assignments: Mapping[WorkshopPhase, str]


@dataclass(frozen=True, slots=True)
class WorkshopArtifact:
    """What a phase produced: notes, a design, a prototype, a review, a summary."""

    phase: WorkshopPhase
    builder: str
    title: str
    content: str
    created_at: datetime = field(default_factory=_now)


_EMPTY: Mapping[str, Any] = MappingProxyType({})
_RANDOM_IDS = frozenset({"task", "token_id"})


@dataclass(frozen=True, slots=True)
class WorkshopEvent:
    """One thing that happened; ``builder`` is an archetype name ("Scout", ...) or None."""

    type: WorkshopEventType
    builder: str | None
    phase: WorkshopPhase
    message: str
    artifact: WorkshopArtifact | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    timestamp: datetime = field(default_factory=_now)

    def replayable(self) -> tuple[Any, ...]:
        """The event without timestamps and random ids: equal for equal runs (same seed, same answers)."""
        artifact = None
        if self.artifact is not None:
            artifact = (self.artifact.phase, self.artifact.builder, self.artifact.title, self.artifact.content)
        # Ids are random (task ids unless given, token ids always): leave them out.
        metadata = tuple(sorted((k, v) for k, v in self.metadata.items() if k not in _RANDOM_IDS))
        return (self.type, self.builder, self.phase, self.message, artifact, metadata)


@dataclass(slots=True)
class WorkshopMetrics:
    """Counters of one task, kept in step with the events it emitted."""

    total_steps: int = 0
    total_events: int = 0
    total_tokens: int = 0
    dialogue_tokens: int = 0
    dialogue_lines: int = 0
    llm_calls: int = 0
    llm_fallbacks: int = 0
    artifacts_produced: int = 0
    phases_completed: int = 0
    handoffs: int = 0
    perturbations: int = 0
    approvals_requested: int = 0
    approvals_resolved: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def duration_seconds(self) -> float:
        """Seconds from start to completion (or to now while running)."""
        if self.start_time is None:
            return 0.0
        return ((self.end_time or _now()) - self.start_time).total_seconds()

    @property
    def events_per_second(self) -> float:
        """Events per second over the task's duration."""
        duration = self.duration_seconds
        return self.total_events / duration if duration > 0 else 0.0
