"""``TaskRunner``: many workshop tasks at once over one purgatory, each a ``WorkshopFlux``.

Every task runs in a task the runner owns (cancelled by ``aclose``); every event of every
task goes to ``on_event``. A task parked at an approval gate waits in the purgatory: it
goes on when anyone resolves the token (the HTTP API, ``agentflux purgatory resolve``).
Progress lives in this process only for now: a task does not survive a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..semaphores._purgatory import Purgatory
from ._environment import create_workshop
from ._flux import WorkshopFlux
from ._model import WorkshopArtifact, WorkshopEvent, WorkshopEventType, WorkshopPhase, WorkshopPlan

__all__ = ["TaskRecord", "TaskRunner"]

MAX_DESCRIPTION = 2000  # characters of a task's description

_log = logging.getLogger("agentflux.workshop")


@dataclass
class TaskRecord:
    """Where one task stands, for listing and showing."""

    id: str
    description: str
    seed: int | None
    gates: tuple[WorkshopPhase, ...]
    status: str = "running"  # running, waiting (at a gate), completed, rejected, failed, stopped
    phase: WorkshopPhase = WorkshopPhase.IDLE
    plan: WorkshopPlan | None = None
    pending_approval: str | None = None
    error: str | None = None
    artifacts: list[WorkshopArtifact] = field(default_factory=list)
    flux: WorkshopFlux | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """The task as JSON data (artifacts by title)."""
        plan = self.plan
        return {
            "id": self.id,
            "description": self.description,
            "status": self.status,
            "phase": self.phase.value,
            "lead_builder": plan.lead_builder if plan else None,
            "plan": None
            if plan is None
            else {
                "phases": [phase.value for phase in plan.phases],
                "assignments": {phase.value: name for phase, name in plan.assignments.items()},
            },
            "pending_approval": self.pending_approval,
            "error": self.error,
            "artifacts": [artifact.title for artifact in self.artifacts],
        }

    def detail(self) -> dict[str, Any]:
        """The summary with every artifact's content and the task's metrics."""
        detail = self.summary()
        detail["artifacts"] = [
            {"phase": a.phase.value, "builder": a.builder, "title": a.title, "content": a.content}
            for a in self.artifacts
        ]
        metrics = self.flux.get_metrics() if self.flux is not None else None
        detail["metrics"] = None if metrics is None else _json_data(dataclasses.asdict(metrics))
        return detail


def _json_data(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in values.items()}


class TaskRunner:
    """Runs workshop tasks concurrently; ``on_event(record, event)`` sees every event."""

    def __init__(
        self,
        purgatory: Purgatory,
        *,
        on_event: Callable[[TaskRecord, WorkshopEvent], None] | None = None,
        max_steps_per_phase: int = 4,
    ) -> None:
        self.purgatory = purgatory
        self.on_event = on_event
        self.max_steps_per_phase = max_steps_per_phase
        self.tasks: dict[str, TaskRecord] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def submit(
        self, description: str, *, seed: int | None = None, gates: Collection[WorkshopPhase | str] = ()
    ) -> TaskRecord:
        """Plan a task and start running it; returns its record once planned.

        Raises:
            ValueError: an empty or over-long description, or an unknown gate phase.
        """
        if not isinstance(description, str) or not description.strip():
            raise ValueError("a task needs a non-empty description")
        if len(description) > MAX_DESCRIPTION:
            raise ValueError(f"a task's description is at most {MAX_DESCRIPTION} characters, got {len(description)}")
        phases = tuple(WorkshopPhase(gate) for gate in gates)  # ValueError names an unknown one
        flux = WorkshopFlux(
            create_workshop(),
            seed=seed,
            max_steps_per_phase=self.max_steps_per_phase,
            purgatory=self.purgatory,
            approval_gates=phases,
        )
        plan = await flux.start(description)
        record = TaskRecord(plan.task.id, description, seed, phases, plan=plan, flux=flux)
        self.tasks[record.id] = record
        runner = asyncio.get_running_loop().create_task(self._run(record, flux), name=f"workshop-task:{record.id}")
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)
        return record

    async def _run(self, record: TaskRecord, flux: WorkshopFlux) -> None:
        try:
            async for event in flux.run():
                record.phase = flux.current_phase
                record.artifacts = list(flux.artifacts)
                if event.type is WorkshopEventType.APPROVAL_REQUESTED:
                    record.status, record.pending_approval = "waiting", str(event.metadata.get("token_id"))
                elif event.type is WorkshopEventType.APPROVAL_RESOLVED:
                    record.status, record.pending_approval = "running", None
                elif event.type is WorkshopEventType.TASK_COMPLETED:
                    outcome = str(event.metadata.get("outcome", "completed"))
                    record.status = "rejected" if outcome == "rejected" else "completed"
                if self.on_event is not None:
                    self.on_event(record, event)
            if record.status in ("running", "waiting"):
                record.status = "stopped"
        except asyncio.CancelledError:
            record.status = "stopped"
            raise
        except Exception as exc:  # the task fails (shown in its record); the other tasks go on
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            _log.error("workshop task %s failed", record.id, exc_info=exc)
        finally:
            await flux.aclose()

    async def aclose(self) -> None:
        """Stop every running task (its approval stays in the purgatory) and wait for them."""
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
