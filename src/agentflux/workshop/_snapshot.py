"""A workshop task's progress as JSON data, and back: what makes a task survive its process.

A snapshot holds everything needed to go on exactly where the task was: the task and its
plan, the phase and each builder's state, the artifacts, the recorded dialogue, the
metrics, the seeded random generator's state and the dialogue engine's counters. It is
plain JSON (no pickle, nothing evaluated), and reading one checks every field, so a
damaged or foreign snapshot is refused with an error naming what is wrong.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from .._core._errors import AgentfluxError
from ._builders import ARCHETYPES
from ._environment import TRANSCRIPT_LINES, TaskState
from ._model import WorkshopArtifact, WorkshopMetrics, WorkshopPhase, WorkshopPlan, WorkshopTask
from ._polynomial import BuilderPhase

__all__ = ["SNAPSHOT_VERSION", "WorkshopSnapshotError", "decode_snapshot", "dump_snapshot", "load_snapshot"]

SNAPSHOT_VERSION = 1
_COUNTERS = tuple(name for name in WorkshopMetrics.__dataclass_fields__ if name not in ("start_time", "end_time"))


class WorkshopSnapshotError(AgentfluxError, ValueError):
    """A task snapshot cannot be read: not JSON, another version, or a field is wrong."""


# ----------------------------------------------------------------------------- writing


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _artifact(artifact: WorkshopArtifact) -> dict[str, Any]:
    return {
        "phase": artifact.phase.value,
        "builder": artifact.builder,
        "title": artifact.title,
        "content": artifact.content,
        "created_at": artifact.created_at.isoformat(),
    }


def encode_state(state: TaskState) -> dict[str, Any]:
    """The task's own part of a snapshot: task, plan, progress, artifacts, dialogue, metrics."""
    task, plan, metrics = state.task, state.plan, state.metrics
    return {
        "task": {
            "id": task.id,
            "description": task.description,
            "priority": task.priority,
            "created_at": task.created_at.isoformat(),
        },
        "plan": {
            "phases": [phase.value for phase in plan.phases],
            "lead_builder": plan.lead_builder,
            "assignments": {phase.value: name for phase, name in plan.assignments.items()},
        },
        "phase": state.phase.value,
        "active": state.active,
        "builder_states": {name: phase.value for name, phase in state.builder_states.items()},
        "artifacts": [_artifact(artifact) for artifact in state.artifacts],
        "lines": list(state.lines),
        "transcript": list(state.transcript[-TRANSCRIPT_LINES:]),
        "steps_in_phase": state.steps_in_phase,
        "work_needed": state.work_needed,
        "phase_done": state.phase_done,
        "approved": sorted(phase.value for phase in state.approved),
        "parked_token": state.parked_token,
        "outcome": state.outcome,
        "metrics": {
            **{name: getattr(metrics, name) for name in _COUNTERS},
            "start_time": _time(metrics.start_time),
            "end_time": _time(metrics.end_time),
        },
    }


def dump_snapshot(snapshot: Mapping[str, Any]) -> str:
    """The snapshot as compact JSON text (refusing NaN, which JSON has no spelling for).

    ASCII only: text an LLM returned may hold lone surrogates, which no UTF-8 store takes;
    escaped, they survive the round trip unchanged.
    """
    return json.dumps(snapshot, separators=(",", ":"), allow_nan=False)


# ----------------------------------------------------------------------------- reading


class _Reader:
    """Reads fields of one JSON object, naming the path of a field that is wrong."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise WorkshopSnapshotError(f"task snapshot: {path} must be an object, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.path = path

    def fail(self, key: str, wanted: str) -> WorkshopSnapshotError:
        value = self.data.get(key, "<missing>")
        shown = value if isinstance(value, (int, float, bool)) or value is None else type(value).__name__
        if isinstance(value, str):
            shown = repr(value[:60])
        return WorkshopSnapshotError(f"task snapshot: {self.path}.{key} must be {wanted}, got {shown}")

    def get(self, key: str, kind: type | tuple[type, ...], wanted: str, *, optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional and key in self.data:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
            raise self.fail(key, wanted)
        return value

    def text(self, key: str, *, optional: bool = False) -> Any:
        return self.get(key, str, "a string" + (" or null" if optional else ""), optional=optional)

    def integer(self, key: str, *, minimum: int = 0) -> int:
        value = self.get(key, int, f"an integer >= {minimum}")
        if value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return int(value)

    def flag(self, key: str) -> bool:
        return bool(self.get(key, bool, "true or false"))

    def items(self, key: str) -> list[Any]:
        return list(self.get(key, list, "a list"))

    def child(self, key: str) -> _Reader:
        if not isinstance(self.data.get(key), dict):
            raise self.fail(key, "an object")
        return _Reader(self.data[key], f"{self.path}.{key}")

    def phase(self, key: str, *, optional: bool = False) -> WorkshopPhase | None:
        value = self.text(key, optional=optional)
        return None if value is None else _phase(value, f"{self.path}.{key}")

    def moment(self, key: str, *, optional: bool = False) -> datetime | None:
        value = self.text(key, optional=optional)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(key, "an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise self.fail(key, "an ISO 8601 time with an offset")
        return moment


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _phase(value: Any, path: str) -> WorkshopPhase:
    try:
        return WorkshopPhase(value)
    except ValueError:
        raise WorkshopSnapshotError(f"task snapshot: {path} is not a workshop phase: {str(value)[:60]!r}") from None


def _builder(value: Any, path: str) -> str:
    if value not in ARCHETYPES:
        raise WorkshopSnapshotError(f"task snapshot: {path} is not a builder: {str(value)[:60]!r}")
    return str(value)


def decode_state(data: Any) -> TaskState:
    """The ``TaskState`` a snapshot's task part describes.

    Raises:
        WorkshopSnapshotError: a field is missing or wrong (the message names it).
    """
    root = _Reader(data, "state")
    task_part = root.child("task")
    created = task_part.moment("created_at")
    assert created is not None
    try:
        task = WorkshopTask(task_part.text("description"), task_part.integer("priority"), task_part.text("id"), created)
    except ValueError as exc:
        raise WorkshopSnapshotError(f"task snapshot: state.task: {exc}") from None
    plan_part = root.child("plan")
    phases = tuple(_phase(p, "state.plan.phases[]") for p in plan_part.items("phases"))
    assignments_part = plan_part.child("assignments")
    assignments = {
        _phase(phase, "state.plan.assignments"): _builder(name, f"state.plan.assignments.{phase}")
        for phase, name in assignments_part.data.items()
    }
    if not phases or any(phase not in assignments for phase in phases):
        raise WorkshopSnapshotError("task snapshot: state.plan needs phases, each with an assigned builder")
    plan = WorkshopPlan(
        task=task,
        phases=phases,
        lead_builder=_builder(plan_part.text("lead_builder"), "state.plan.lead_builder"),
        assignments=MappingProxyType(assignments),
    )
    states_part = root.child("builder_states")
    builder_states: dict[str, BuilderPhase] = {}
    for name in ARCHETYPES:
        value = states_part.text(name)
        try:
            builder_states[name] = BuilderPhase(value)
        except ValueError:
            raise states_part.fail(name, "a builder state") from None
    artifacts = []
    for index, item in enumerate(root.items("artifacts")):
        part = _Reader(item, f"state.artifacts[{index}]")
        moment = part.moment("created_at")
        assert moment is not None
        phase = part.phase("phase")
        assert phase is not None
        artifacts.append(
            WorkshopArtifact(
                phase, _builder(part.text("builder"), part.path), part.text("title"), part.text("content"), moment
            )
        )
    metrics_part = root.child("metrics")
    metrics = WorkshopMetrics(
        **{name: metrics_part.integer(name) for name in _COUNTERS},
        start_time=metrics_part.moment("start_time", optional=True),
        end_time=metrics_part.moment("end_time", optional=True),
    )
    active = root.text("active", optional=True)
    phase = root.phase("phase")
    assert phase is not None
    state = TaskState(
        task=task,
        plan=plan,
        phase=phase,
        active=None if active is None else _builder(active, "state.active"),
        builder_states=builder_states,
        artifacts=artifacts,
        lines=[_line(line, "state.lines[]") for line in root.items("lines")],
        steps_in_phase=root.integer("steps_in_phase"),
        work_needed=root.integer("work_needed", minimum=1),
        phase_done=root.flag("phase_done"),
        approved={_phase(p, "state.approved[]") for p in root.items("approved")},
        parked_token=root.text("parked_token", optional=True),
        outcome=root.text("outcome", optional=True),
        metrics=metrics,
    )
    state.transcript = [_transcript_line(item, index) for index, item in enumerate(root.items("transcript"))]
    return state


def _line(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise WorkshopSnapshotError(f"task snapshot: {path} must be a string, got {type(value).__name__}")
    return value


def _transcript_line(item: Any, index: int) -> dict[str, Any]:
    part = _Reader(item, f"state.transcript[{index}]")
    part.phase("phase")  # checked, kept as text
    line = {"builder": part.text("builder"), "phase": part.data["phase"], "text": part.text("text")}
    line["source"] = part.text("source")
    if "fallback" in part.data:
        line["fallback"] = part.text("fallback")
    return line


def decode_rng(value: Any) -> random.Random:
    """A generator in the state ``random.Random.getstate()`` gave (as JSON lists).

    Raises:
        WorkshopSnapshotError: not such a state.
    """
    rng = random.Random()
    try:
        version, internal, gauss = value
        if not isinstance(version, int) or not all(isinstance(n, int) and not isinstance(n, bool) for n in internal):
            raise TypeError("not integers")
        if gauss is not None and not isinstance(gauss, float):
            raise TypeError("gauss_next is not a float")
        rng.setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError) as exc:
        raise WorkshopSnapshotError(f"task snapshot: rng is not a random generator's state ({exc})") from None
    return rng


def encode_rng(rng: random.Random) -> list[Any]:
    """``rng.getstate()`` as JSON lists."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def load_snapshot(text: str | bytes) -> dict[str, Any]:
    """Parse snapshot text and check its version (the fields are checked by ``decode_snapshot``).

    Raises:
        WorkshopSnapshotError: not a JSON object, or another snapshot version.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WorkshopSnapshotError(f"task snapshot is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WorkshopSnapshotError(f"task snapshot must be a JSON object, got {type(data).__name__}")
    return decode_snapshot(data)


def decode_snapshot(data: Any) -> dict[str, Any]:
    """Check a snapshot's version and shape; returns it (as given) when it can be restored.

    Raises:
        WorkshopSnapshotError: another version, or a field is wrong.
    """
    root = _Reader(data, "snapshot")
    version = root.get("version", int, f"the number {SNAPSHOT_VERSION}")
    if version != SNAPSHOT_VERSION:
        raise WorkshopSnapshotError(
            f"task snapshot has version {version}; this agentflux reads version {SNAPSHOT_VERSION}"
        )
    decode_state(data.get("state"))  # every field checked before anything is restored
    decode_rng(data.get("rng"))
    options = root.child("options")
    options.get("seed", int, "an integer or null", optional=True)
    for index, gate in enumerate(options.items("gates")):
        _phase(gate, f"snapshot.options.gates[{index}]")
    options.flag("gate_sensitive")
    options.flag("auto_advance")
    options.integer("max_steps_per_phase", minimum=1)
    counters = root.child("dialogue")
    for name in ("tokens_used", "calls", "fallbacks"):
        counters.integer(name)
    if "meta" in data:
        root.child("meta")
    if "error" in data:
        root.get("error", str, "a string or null", optional=True)
    return root.data
