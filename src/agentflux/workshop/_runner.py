"""``TaskRunner``: many workshop tasks at once over one purgatory, each a ``WorkshopFlux``.

Every task runs in a task the runner owns (cancelled by ``aclose``); every event of every
task goes to ``on_event``. A task parked at an approval gate waits in the purgatory: it
goes on when anyone resolves the token (the HTTP API, ``agentflux purgatory resolve``),
and ends as ``cancelled`` when the token is cancelled or voided instead.

Each task's progress is saved in the purgatory's store at every phase boundary (see
``WorkshopFlux``), so ``start()`` in a new process on the same store lists every past task
with its artifacts and takes up the ones that had not ended: a task parked at its gate
continues when approved, one killed mid-phase starts that phase again from its snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core._errors import AgentfluxError
from ..semaphores._purgatory import Purgatory, PurgatoryChange
from ._dialogue import DialogueEngine, LLMClient
from ._environment import create_workshop
from ._flux import WorkshopFlux
from ._model import (
    WorkshopArtifact,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopMetrics,
    WorkshopPhase,
    WorkshopPlan,
)
from ._snapshot import decode_state, load_snapshot

__all__ = ["TaskRecord", "TaskRunner"]

MAX_DESCRIPTION = 2000  # characters of a task's description
LLM_OPTIONS = {"model": str, "token_budget": int, "max_tokens": int}
MAX_TOKENS_CAP = 4096  # the most tokens a task may ask for per LLM call

_log = logging.getLogger("agentflux.workshop")


@dataclass
class TaskRecord:
    """Where one task stands, for listing and showing."""

    id: str
    description: str
    seed: int | None
    gates: tuple[WorkshopPhase, ...]
    # running, waiting (at a gate), completed, rejected, cancelled (its gate's token was),
    # failed, stopped (this process stopped it; the next start on the store takes it up)
    status: str = "running"
    phase: WorkshopPhase = WorkshopPhase.IDLE
    plan: WorkshopPlan | None = None
    pending_approval: str | None = None
    error: str | None = None
    artifacts: list[WorkshopArtifact] = field(default_factory=list)
    flux: WorkshopFlux | None = field(default=None, repr=False)
    metrics: WorkshopMetrics | None = None  # of a task listed from the store but not run here
    transcript: list[dict[str, Any]] = field(default_factory=list, repr=False)
    restored: bool = False  # listed from the store at start (this process did not submit it)

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
            "restored": self.restored,
            "artifacts": [artifact.title for artifact in self.artifacts],
        }

    def detail(self) -> dict[str, Any]:
        """The summary with every artifact's content and the task's metrics."""
        detail = self.summary()
        detail["artifacts"] = [
            {"phase": a.phase.value, "builder": a.builder, "title": a.title, "content": a.content}
            for a in self.artifacts
        ]
        metrics = self.flux.get_metrics() if self.flux is not None else self.metrics
        detail["metrics"] = None if metrics is None else _json_data(dataclasses.asdict(metrics))
        state = self.flux._state if self.flux is not None else None
        detail["dialogue"] = list(state.transcript if state is not None else self.transcript)
        return detail

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> TaskRecord:
        """The record of a task as its (checked) snapshot left it."""
        state = decode_state(data["state"])
        options = data["options"]
        error = data.get("error")
        if error is not None:
            status = "failed"
        elif state.outcome is not None:
            status = state.outcome if state.outcome in ("rejected", "cancelled") else "completed"
        else:
            status = "waiting" if state.parked_token is not None else "running"
        return cls(
            state.task.id,
            state.task.description,
            options["seed"],
            tuple(WorkshopPhase(gate) for gate in options["gates"]),
            status=status,
            phase=state.phase,
            plan=state.plan,
            pending_approval=state.parked_token,
            error=error,
            artifacts=list(state.artifacts),
            metrics=state.metrics,
            transcript=state.transcript,
            restored=True,
        )


def _json_data(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in values.items()}


def llm_options(value: Any) -> dict[str, Any]:
    """A task's LLM options checked: ``{"model": str, "token_budget": int, "max_tokens": int}``,
    each optional (the server's model, no budget, 80 tokens a line).

    Raises:
        ValueError: not an object, an unknown option, or a wrong value (named).
    """
    if not isinstance(value, Mapping):
        raise ValueError(f'"llm" must be an object or null, got {type(value).__name__}')
    unknown = sorted(set(value) - set(LLM_OPTIONS))
    if unknown:
        raise ValueError(f'unknown "llm" option(s) {unknown}; options are {sorted(LLM_OPTIONS)}')
    for name, kind in LLM_OPTIONS.items():
        option = value.get(name)
        if option is None:
            continue
        if not isinstance(option, kind) or isinstance(option, bool):
            raise ValueError(f'"llm.{name}" must be {"a string" if kind is str else "an integer"}')
    if isinstance(value.get("model"), str) and not 0 < len(value["model"]) <= 200:
        raise ValueError('"llm.model" must be 1 to 200 characters')
    if value.get("token_budget") is not None and value["token_budget"] < 0:
        raise ValueError('"llm.token_budget" must be >= 0')
    if value.get("max_tokens") is not None and not 0 < value["max_tokens"] <= MAX_TOKENS_CAP:
        raise ValueError(f'"llm.max_tokens" must be 1 to {MAX_TOKENS_CAP}')
    return {name: value[name] for name in LLM_OPTIONS if value.get(name) is not None}


async def _close(flux: WorkshopFlux) -> None:
    """Stop a task's flux and close its LLM client (both idempotent)."""
    await flux.aclose()
    aclose = getattr(flux.dialogue.client, "aclose", None)
    if aclose is not None:
        await aclose()


class TaskRunner:
    """Runs workshop tasks concurrently; ``on_event(record, event)`` sees every event.

    ``llm(options)`` makes the LLM client of a task that asks for one (``submit(llm=...)``):
    the endpoint and its key are the server's, never the submitter's. Without it, a task
    that asks for an LLM is refused.
    """

    def __init__(
        self,
        purgatory: Purgatory,
        *,
        on_event: Callable[[TaskRecord, WorkshopEvent], None] | None = None,
        max_steps_per_phase: int = 4,
        llm: Callable[[Mapping[str, Any]], LLMClient] | None = None,
    ) -> None:
        self.purgatory = purgatory
        self.on_event = on_event
        self.max_steps_per_phase = max_steps_per_phase
        self.llm = llm
        self.tasks: dict[str, TaskRecord] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> list[TaskRecord]:
        """List the tasks kept in the store and take up those that had not ended; returns the
        records of the tasks taken up. Also starts ending tasks whose gate's token is
        cancelled or voided. Idempotent.

        A snapshot that cannot be read is listed as a failed task (the error names the
        field), logged on ``agentflux.workshop``; the other tasks go on.
        """
        if self._watcher is None:
            changes = self.purgatory.changes(maxsize=10_000)
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(changes), name="workshop-runner:withdrawn-gates"
            )
        taken: list[TaskRecord] = []
        for task_id, text in await self.purgatory.store.load_tasks():
            if task_id in self.tasks:
                continue
            try:
                data = load_snapshot(text)
                record = TaskRecord.from_snapshot(data)
            except (AgentfluxError, ValueError) as exc:
                _log.error("workshop task %s cannot be restored: %s", task_id, exc)
                self.tasks[task_id] = TaskRecord(
                    task_id, "(unreadable snapshot)", None, (), status="failed", error=str(exc), restored=True
                )
                continue
            self.tasks[task_id] = record
            if record.status in ("running", "waiting"):
                flux = await WorkshopFlux.restore(data, purgatory=self.purgatory, dialogue_engine=self._restored(data))
                record.flux = flux
                record.status = "waiting" if flux.pending_approval is not None else "running"
                record.pending_approval = flux.pending_approval
                self._launch(record, flux)
                taken.append(record)
        return taken

    def _restored(self, data: dict[str, Any]) -> DialogueEngine:
        """The dialogue of a task taken up again: its LLM if it had one and this runner has one."""
        meta = data.get("meta") or {}
        try:
            options = None if meta.get("llm") is None else llm_options(meta["llm"])
        except ValueError as exc:
            _log.warning(
                "workshop task %s: its LLM options are unusable (%s); it goes on with templates",
                data["state"]["task"]["id"],
                exc,
            )
            return DialogueEngine()
        if options is not None and self.llm is None:
            _log.warning(
                "workshop task %s asked for an LLM, which this runner has not; it goes on with templates",
                data["state"]["task"]["id"],
            )
            return DialogueEngine()
        return self._dialogue(options)

    async def _watch(self, changes: Any) -> None:
        try:
            async for change in changes:
                await self._withdrawn(change)
        finally:
            changes.close()

    async def _withdrawn(self, change: PurgatoryChange) -> None:
        if change.kind not in ("cancelled", "voided"):
            return
        token = change.token
        for record in list(self.tasks.values()):
            if record.pending_approval == token.id and record.flux is not None:
                try:
                    await record.flux.withdraw(token.id, change.kind)
                except Exception as exc:  # the task may have ended meanwhile; never lost silently
                    _log.warning(
                        "workshop task %s: ending it after its approval was %s failed: %s", record.id, change.kind, exc
                    )

    def _dialogue(self, options: Mapping[str, Any] | None) -> DialogueEngine:
        if options is None:
            return DialogueEngine()
        if self.llm is None:
            raise ValueError("this server has no LLM configured (start it with --llm-base-url and --model)")
        return DialogueEngine(
            self.llm(options), token_budget=options.get("token_budget"), max_tokens=options.get("max_tokens", 80)
        )

    async def submit(
        self,
        description: str,
        *,
        seed: int | None = None,
        gates: Collection[WorkshopPhase | str] = (),
        llm: Mapping[str, Any] | None = None,
    ) -> TaskRecord:
        """Plan a task and start running it; returns its record once planned. ``llm`` (see
        ``llm_options``) has its builders speak through the runner's LLM.

        Raises:
            ValueError: an empty or over-long description, an unknown gate phase, bad LLM
                options, or LLM options while the runner has no LLM.
        """
        if not isinstance(description, str) or not description.strip():
            raise ValueError("a task needs a non-empty description")
        if len(description) > MAX_DESCRIPTION:
            raise ValueError(f"a task's description is at most {MAX_DESCRIPTION} characters, got {len(description)}")
        phases = tuple(WorkshopPhase(gate) for gate in gates)  # ValueError names an unknown one
        options = None if llm is None else llm_options(llm)
        flux = WorkshopFlux(
            create_workshop(),
            self._dialogue(options),
            seed=seed,
            max_steps_per_phase=self.max_steps_per_phase,
            purgatory=self.purgatory,
            approval_gates=phases,
            meta={"llm": options},
        )
        plan = await flux.start(description)
        record = TaskRecord(plan.task.id, description, seed, phases, plan=plan, flux=flux)
        self.tasks[record.id] = record
        self._launch(record, flux)
        return record

    def _launch(self, record: TaskRecord, flux: WorkshopFlux) -> None:
        runner = asyncio.get_running_loop().create_task(self._run(record, flux), name=f"workshop-task:{record.id}")
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)

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
                    record.status = outcome if outcome in ("rejected", "cancelled") else "completed"
                    record.pending_approval = None
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
            await self._keep_failure(record, flux)
        finally:
            await _close(flux)

    async def _keep_failure(self, record: TaskRecord, flux: WorkshopFlux) -> None:
        """Save that the task failed, so a restart lists it as failed instead of running it again."""
        try:
            await flux._save(error=record.error)
        except Exception as exc:  # the failure itself is logged above
            _log.error("workshop task %s: saving its failure failed: %s", record.id, exc)

    async def aclose(self) -> None:
        """Stop every running task (its approval stays in the purgatory, its progress in the
        store, for the next ``start``) and wait for them."""
        running = list(self._running)
        if self._watcher is not None:
            running.append(self._watcher)
            self._watcher = None
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        # A task cancelled before it ever ran never reached its ``finally``: close its flux here.
        for record in self.tasks.values():
            if record.flux is not None:
                await _close(record.flux)
                if record.status in ("running", "waiting"):
                    record.status = "stopped"
