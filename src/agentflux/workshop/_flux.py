"""``WorkshopFlux``: a task carried through its phases as a live stream, built on ``FluxAgent``.

Every step and every perturbation is an ``invoke`` of one inner flux, so they go through
the flux's perturbation path one at a time and never bypass the task's state. A phase
gated for approval makes the inner agent return a ``SemaphoreToken``: the flux parks it
in the purgatory and the task waits there, while other tasks of the same workshop go on.
Resolving the token (``resolve()``, the CLI, another process) resumes the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from .._core._errors import (
    EndOfStream,
    FluxStateError,
    SemaphoreNotFound,
    SemaphoreNotPending,
    SemaphoreResumeError,
    WouldBlock,
)
from ..flux._config import FluxConfig
from ..flux._flux import Flux, FluxAgent, FluxStream
from ..semaphores._purgatory import Purgatory, open_purgatory
from ..semaphores._token import SemaphoreMixin, SemaphoreReason, SemaphoreToken
from ..sources import Sender, Subscription, open_channel
from ._builders import Builder, WorkRequest, topics_of
from ._dialogue import DialogueEngine, Fallback
from ._environment import TaskState, WorkshopEnvironment, create_workshop
from ._model import (
    WorkshopArtifact,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopMetrics,
    WorkshopPhase,
    WorkshopPlan,
    WorkshopTask,
)
from ._snapshot import (
    SNAPSHOT_VERSION,
    decode_rng,
    decode_snapshot,
    decode_state,
    dump_snapshot,
    encode_rng,
    encode_state,
    load_snapshot,
)

__all__ = ["PERTURB_ACTIONS", "WorkshopFlux"]

PerturbAction = Literal["advance", "handoff", "complete", "inject_artifact"]
PERTURB_ACTIONS: tuple[str, ...] = ("advance", "handoff", "complete", "inject_artifact")
_STEP = ("step",)
_WITHDRAWN_STATUSES = frozenset({"cancelled", "voided"})
_APPROVALS = frozenset({"approve", "approved", "yes", "y", "ok", "accept", "true", "1"})
# Words (whole words, or word starts where marked) that make integrating a task sensitive.
_SENSITIVE = re.compile(
    r"\b(production|prod|delete|deleting|drop|migrat\w*|payments?|billing|security|credentials?|secrets?|"
    r"customer data|deploy\w*)\b"
)
_ARTIFACT_TOKENS = 400


def is_approval(answer: Any) -> bool:
    """Whether a human's answer approves: ``True``, "approve"/"yes"/..., or ``{"approved": true}``."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, dict):
        return bool(answer.get("approved") or answer.get("approve"))
    return str(answer).strip().lower() in _APPROVALS


class _WorkshopAgent(SemaphoreMixin):
    """The agent inside a WorkshopFlux: runs steps and perturbations; parks at approval gates."""

    name = "workshop"

    def __init__(self, owner: WorkshopFlux) -> None:
        self.owner = owner

    async def invoke(self, command: tuple[Any, ...]) -> Any:
        if command[0] == "step":
            return await self.owner._step()
        if command[0] == "withdrawn":
            return await self.owner._withdrawn(command[1], command[2])
        return await self.owner._apply(*command[1:])

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        return await self.owner._resume_gate(self.restore_state(frozen_state), human_input)


class WorkshopFlux:
    """Carries one task at a time through the workshop's phases, as a stream of events.

    ``start(task)`` plans it; ``run()`` yields every event of the task from TASK_ASSIGNED
    to TASK_COMPLETED; ``step()`` yields the events of one step; ``perturb()`` steers it.
    Phases in ``approval_gates`` (and, with ``gate_sensitive``, an INTEGRATING phase whose
    task touches sensitive systems) wait for a human's approval in ``purgatory``.

    The task's progress is saved in the purgatory's store at every boundary (planned, each
    phase started, the gate, each perturbation, the end), so ``restore`` can take it up in
    another process; ``meta`` (JSON data) is saved with it.

    Raises:
        ValueError: ``max_steps_per_phase`` < 1.
    """

    def __init__(
        self,
        workshop: WorkshopEnvironment,
        dialogue_engine: DialogueEngine | None = None,
        seed: int | None = None,
        auto_advance: bool = True,
        max_steps_per_phase: int = 5,
        *,
        purgatory: Purgatory | None = None,
        approval_gates: Collection[WorkshopPhase] = (),
        gate_sensitive: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(max_steps_per_phase, bool) or not isinstance(max_steps_per_phase, int) or max_steps_per_phase < 1:
            raise ValueError(f"max_steps_per_phase must be an int >= 1, got {max_steps_per_phase!r}")
        self.workshop = workshop
        self.dialogue = dialogue_engine or DialogueEngine()
        self.seed = seed
        self.auto_advance = auto_advance
        self.max_steps_per_phase = max_steps_per_phase
        self.purgatory = purgatory or open_purgatory("memory://")
        self.approval_gates = frozenset(WorkshopPhase(p) for p in approval_gates)
        self.gate_sensitive = gate_sensitive
        self.meta: dict[str, Any] = dict(meta or {})  # the owner's JSON data, kept in every snapshot
        self._agent = _WorkshopAgent(self)
        self._rng = random.Random(seed)
        self._state: TaskState | None = None
        self._flux: FluxAgent[Any, Any] | None = None
        self._stream: FluxStream[Any] | None = None
        self._sender: Sender[Any] | None = None
        self._feed: Subscription[WorkshopEvent] | None = None
        self._gate_event: WorkshopEvent | None = None
        self._backlog: deque[WorkshopEvent] = deque()

    # --------------------------------------------------------------- lifecycle

    async def start(self, task: WorkshopTask | str) -> WorkshopPlan:
        """Take on a task and plan it; the previous task must have ended.

        Raises:
            FluxStateError: a task is still in progress.
        """
        if self._state is not None and not self._state.completed:
            raise FluxStateError("RUNNING", "start a new task on", f"task {self._state.task.id} is still in progress")
        await self._close_task()
        self._rng = random.Random(self.seed)
        self._backlog.clear()
        task = WorkshopTask(task) if isinstance(task, str) else task
        self._feed = self.workshop.bus.subscribe(maxsize=1_000_000)
        state = self._state = self.workshop.assign(task)
        self._launch(task.id)
        await self._save()
        return state.plan

    @classmethod
    async def restore(
        cls,
        snapshot: Mapping[str, Any] | str | bytes,
        *,
        purgatory: Purgatory,
        workshop: WorkshopEnvironment | None = None,
        dialogue_engine: DialogueEngine | None = None,
    ) -> WorkshopFlux:
        """Take up the task a snapshot holds (``snapshot()``, or the text saved in the store),
        in a new flux that goes on from there with the task's own options.

        A task parked at its approval gate waits there again: resolving its token resumes it,
        also when it was resolved while no process ran the task. A gate whose token never
        reached the store (the process died in between) is asked again; a gate whose token
        was cancelled or voided ends the task as ``cancelled``. An ended task is restored as
        it ended (``run()`` yields nothing more). ``meta`` comes back as it was saved; the
        dialogue engine is ``dialogue_engine`` (its counters set from the snapshot).

        Raises:
            WorkshopSnapshotError: the snapshot cannot be read (the message names the field).
            ValueError: the workshop already holds a task with that id.
        """
        data = load_snapshot(snapshot) if isinstance(snapshot, (str, bytes)) else decode_snapshot(dict(snapshot))
        options = data["options"]
        flux = cls(
            workshop or create_workshop(),
            dialogue_engine,
            seed=options["seed"],
            auto_advance=options["auto_advance"],
            max_steps_per_phase=options["max_steps_per_phase"],
            purgatory=purgatory,
            approval_gates=[WorkshopPhase(gate) for gate in options["gates"]],
            gate_sensitive=options["gate_sensitive"],
            meta=data.get("meta"),
        )
        await flux._take_up(data)
        return flux

    async def _take_up(self, data: dict[str, Any]) -> None:
        state = decode_state(data["state"])
        self._rng = decode_rng(data["rng"])
        counters = data["dialogue"]
        engine = self.dialogue
        engine.tokens_used, engine.calls, engine.fallbacks = (
            counters["tokens_used"],
            counters["calls"],
            counters["fallbacks"],
        )
        withdrawn: str | None = None
        if state.parked_token is not None and not state.completed:
            try:
                token = await self.purgatory.get(state.parked_token)
            except SemaphoreNotFound:
                state.parked_token = None  # died before the gate's token was saved: ask again
            else:
                if token.status.value in _WITHDRAWN_STATUSES:
                    withdrawn = token.status.value
                else:
                    self._gate_event = self._restored_gate_event(state, state.parked_token)
        self.workshop.adopt(state)
        self._state = state
        self._backlog.clear()
        self._feed = self.workshop.bus.subscribe(maxsize=1_000_000)
        self._launch(state.task.id)
        if withdrawn is not None:
            assert self._flux is not None
            assert state.parked_token is not None
            await self._flux.invoke(("withdrawn", state.parked_token, withdrawn))

    def _restored_gate_event(self, state: TaskState, token_id: str) -> WorkshopEvent:
        gate = state.next_phase()
        gate_name = gate.value if gate is not None else state.phase.value
        return WorkshopEvent(
            WorkshopEventType.APPROVAL_REQUESTED,
            state.active or state.plan.lead_builder,
            state.phase,
            f"Approval needed before {gate_name} (restored)",
            metadata=MappingProxyType({"task": state.task.id, "token_id": token_id, "gate": gate_name}),
        )

    def _launch(self, task_id: str) -> None:
        self._flux = Flux.lift(
            self._agent,
            FluxConfig(
                agent_id=f"workshop-{task_id}", purgatory=self.purgatory, buffer_size=64, drop_policy="drop_oldest"
            ),
        )
        # Steps arrive as perturbations; the channel only keeps the flux running until closed.
        self._sender, receiver = open_channel(0)
        self._stream = self._flux.start(receiver)

    def snapshot(self) -> dict[str, Any]:
        """The current task's progress as JSON data, for ``restore`` (in this process or another).

        Raises:
            FluxStateError: no task was started.
        """
        state = self._require_state()
        return {
            "version": SNAPSHOT_VERSION,
            "saved_at": datetime.now(UTC).isoformat(),
            "state": encode_state(state),
            "rng": encode_rng(self._rng),
            "options": {
                "seed": self.seed,
                "gates": sorted(phase.value for phase in self.approval_gates),
                "gate_sensitive": self.gate_sensitive,
                "auto_advance": self.auto_advance,
                "max_steps_per_phase": self.max_steps_per_phase,
            },
            "dialogue": {
                "tokens_used": self.dialogue.tokens_used,
                "calls": self.dialogue.calls,
                "fallbacks": self.dialogue.fallbacks,
            },
            "meta": self.meta,
        }

    async def _save(self, **extra: Any) -> dict[str, Any]:
        """Keep the task's snapshot (with ``extra`` fields) in the purgatory's store, durable
        once this returns; returns the snapshot."""
        snapshot = self.snapshot()
        snapshot.update(extra)
        await self.purgatory.store.save_task(snapshot["state"]["task"]["id"], dump_snapshot(snapshot))
        return snapshot

    async def aclose(self) -> None:
        """Stop the inner flux and stop listening to the workshop (idempotent)."""
        await self._close_task()

    async def __aenter__(self) -> WorkshopFlux:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _close_task(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def _require_state(self) -> TaskState:
        if self._state is None or self._flux is None:
            raise FluxStateError("IDLE", "run", "call start(task) first")
        return self._state

    # --------------------------------------------------------------- streaming

    def _pull(self) -> None:
        """Move this task's events published so far from the feed into the backlog.

        Events are handed out one at a time from the backlog, so a consumer that stops
        iterating and comes back later misses nothing.
        """
        state, feed = self._state, self._feed
        assert state is not None
        assert feed is not None
        while True:
            try:
                event = feed.receive_nowait()
            except (WouldBlock, EndOfStream):
                return
            if event.metadata.get("task") == state.task.id:
                self._backlog.append(event)

    async def _next_task_event(self) -> WorkshopEvent | None:
        """Wait for the next event of this task (None if the feed ended)."""
        state, feed = self._state, self._feed
        assert state is not None
        assert feed is not None
        async for event in feed:
            if event.metadata.get("task") == state.task.id:
                return event
        return None

    def _waiting(self, state: TaskState) -> bool:
        return state.parked_token is not None or (not self.auto_advance and state.phase_done)

    async def step(self) -> AsyncIterator[WorkshopEvent]:
        """Run one step (unless the task waits for an approval or an advance); yield its events."""
        state = self._require_state()
        if not state.completed and not self._waiting(state):
            assert self._flux is not None
            await self._flux.invoke(_STEP)
        self._pull()
        while self._backlog:
            yield self._backlog.popleft()

    async def run(self) -> AsyncIterator[WorkshopEvent]:
        """Yield every event of the task, from TASK_ASSIGNED to TASK_COMPLETED.

        While the task waits for an approval (or, without ``auto_advance``, for an
        ``advance``), this waits for the next event without polling.
        """
        state = self._require_state()
        backlog = self._backlog
        while True:
            self._pull()
            if backlog:
                event = backlog.popleft()
                yield event
                if event.type is WorkshopEventType.TASK_COMPLETED:
                    return
                continue
            if state.completed:
                return
            if self._waiting(state):
                awaited = await self._next_task_event()
                if awaited is None:
                    return
                backlog.append(awaited)
                continue
            assert self._flux is not None
            await self._flux.invoke(_STEP)
            # A step may complete without waiting for anything (template dialogue): yield so
            # other tasks of the workshop move too.
            await asyncio.sleep(0)

    async def perturb(
        self, action: PerturbAction, *, builder: str | None = None, artifact: str | WorkshopArtifact | None = None
    ) -> WorkshopEvent:
        """Steer the task through the flux's perturbation path; returns the resulting event.

        ``advance`` moves to the next phase (writing the current phase's artifact first if
        needed), ``handoff`` passes the work to ``builder``, ``complete`` ends the task,
        ``inject_artifact`` adds ``artifact`` to the current phase.

        Raises:
            ValueError: an unknown action, or a missing/invalid builder or artifact.
            FluxStateError: no task is in progress.
        """
        if action not in PERTURB_ACTIONS:
            raise ValueError(f"unknown perturbation {action!r}; actions are {', '.join(PERTURB_ACTIONS)}")
        if action == "handoff" and builder not in self.workshop.builders:
            raise ValueError(f"handoff needs builder= one of {', '.join(self.workshop.builders)}, got {builder!r}")
        if action == "inject_artifact" and not isinstance(artifact, (str, WorkshopArtifact)):
            raise ValueError("inject_artifact needs artifact= a string or a WorkshopArtifact")
        state = self._require_state()
        if state.completed:
            raise FluxStateError("COMPLETE", f"perturb ({action})", f"task {state.task.id} has ended")
        assert self._flux is not None
        result = await self._flux.invoke(("perturb", action, builder, artifact))
        if isinstance(result, SemaphoreToken):
            assert self._gate_event is not None
            return self._gate_event
        assert isinstance(result, WorkshopEvent)
        return result

    async def resolve(self, token_id: str, answer: Any, *, by: str | None = None) -> Any:
        """Answer a pending approval of this task (like ``agentflux purgatory resolve``);
        ``by`` records who answered."""
        self._require_state()
        assert self._flux is not None
        return await self._flux.resolve(token_id, answer, by=by)

    async def withdraw(self, token_id: str, status: str = "cancelled") -> WorkshopEvent | None:
        """End the task as ``cancelled`` because its gate's token ``token_id`` was cancelled or
        voided (by a person, a deadline); None if the task no longer waits on that token."""
        state = self._require_state()
        if state.completed or state.parked_token != token_id:
            return None
        assert self._flux is not None
        result = await self._flux.invoke(("withdrawn", token_id, status))
        return result if isinstance(result, WorkshopEvent) else None

    # ------------------------------------------------------------- observation

    @property
    def artifacts(self) -> tuple[WorkshopArtifact, ...]:
        """The artifacts of the current task, in the order they were produced."""
        return tuple(self._state.artifacts) if self._state is not None else ()

    @property
    def current_phase(self) -> WorkshopPhase:
        """The phase of the current task (IDLE before start)."""
        return self._state.phase if self._state is not None else WorkshopPhase.IDLE

    @property
    def active_builder(self) -> Builder | None:
        """The builder working on the current phase."""
        state = self._state
        return self.workshop.builders[state.active] if state is not None and state.active else None

    @property
    def pending_approval(self) -> str | None:
        """The id of the token the task waits on, if any."""
        return self._state.parked_token if self._state is not None else None

    def get_metrics(self) -> WorkshopMetrics:
        """A copy of the current task's metrics (they reset with every ``start()``)."""
        return dataclasses.replace(self._state.metrics) if self._state is not None else WorkshopMetrics()

    def get_status(self) -> dict[str, Any]:
        """Where the task stands: phase, builders, artifacts, approvals, metrics."""
        state = self._state
        if state is None:
            return {"task": None, "phase": WorkshopPhase.IDLE.value}
        return {
            "task": state.task.description,
            "task_id": state.task.id,
            "phase": state.phase.value,
            "lead_builder": state.plan.lead_builder,
            "active_builder": state.active,
            "builder_states": {name: phase.value for name, phase in state.builder_states.items()},
            "artifacts": [artifact.title for artifact in state.artifacts],
            "pending_approval": state.parked_token,
            "outcome": state.outcome,
            "metrics": dataclasses.asdict(state.metrics),
            "flux": self._flux.metrics() if self._flux is not None else None,
        }

    # -------------------------------------------- inside the flux (one at a time)

    def _context(self, state: TaskState) -> str:
        recent = " | ".join(state.lines[-3:]) or "nothing yet"
        return f"Task: {state.task.description}\nPhase: {state.phase.value}\nRecently said: {recent}"

    async def _say(self, state: TaskState, archetype: str, action: str, **values: Any) -> None:
        builder = self.workshop.builders[archetype]
        topic = " ".join(topics_of(state.task.description, 2))
        line = await self.dialogue.speak(
            builder,
            action,
            self._context(state),
            self._rng,
            state.lines,
            topic=topic,
            task=state.task.description,
            **values,
        )
        self.workshop.say(
            state,
            archetype,
            line.text,
            source=line.source,
            tokens=line.tokens,
            llm_call=line.called,
            **({"fallback": line.fallback} if line.fallback else {}),
        )

    async def _write_artifact(self, state: TaskState) -> None:
        assert state.active is not None
        builder = self.workshop.builders[state.active]
        request = WorkRequest(state.task, state.phase, tuple(state.artifacts), tuple(state.lines))
        artifact = await builder.invoke(request)
        metadata: dict[str, Any] = {"source": "template", "tokens": 0}
        if self.dialogue.client is not None:
            messages = [
                {
                    "role": "system",
                    "content": builder.system_prompt(writing=True),
                },
                {
                    "role": "user",
                    "content": f"{self._context(state)}\nWrite the {state.phase.value} document "
                    f"titled '{artifact.title}'. Start from this outline:\n{artifact.content}",
                },
            ]
            answer = await self.dialogue.ask(messages, max_tokens=_ARTIFACT_TOKENS, seed=self._rng.randrange(2**31))
            if isinstance(answer, Fallback):
                metadata.update(fallback=answer.reason, llm_call=answer.called)
            elif answer.text:
                artifact = dataclasses.replace(artifact, content=answer.text)
                metadata = {"source": "llm", "tokens": answer.total_tokens, "llm_call": True}
            else:
                metadata.update(fallback="LLM returned no text", tokens=answer.total_tokens, llm_call=True)
        self.workshop.record_artifact(state, artifact, **metadata)
        await self._say(state, state.active, "artifact", title=artifact.title)

    def _gated(self, state: TaskState, phase: WorkshopPhase) -> SemaphoreReason | None:
        if phase in state.approved:
            return None
        if phase in self.approval_gates:
            return SemaphoreReason.APPROVAL_NEEDED
        text = state.task.description.lower()
        if self.gate_sensitive and phase is WorkshopPhase.INTEGRATING and _SENSITIVE.search(text):
            return SemaphoreReason.SENSITIVE_ACTION
        return None

    async def _advance(self, state: TaskState) -> Any:
        """Leave the current phase for the next (or finish); may park at a gate."""
        following = state.next_phase()
        if following is not None:
            reason = self._gated(state, following)
            if reason is not None:
                return await self._park(state, following, reason)
        if state.phase is not WorkshopPhase.IDLE:
            event = self.workshop.complete_phase(state)
            assert state.active is not None
            if following is None:
                await self._say(state, state.active, "complete")
                return await self._saved(self.workshop.complete(state))
            receiver = state.plan.assignments[following]
            await self._say(state, state.active, "handoff", next=receiver)
            event = self.workshop.handoff(state, receiver, state.artifacts[-1] if state.artifacts else None)
        assert following is not None
        work = self._rng.randint(min(2, self.max_steps_per_phase), self.max_steps_per_phase)
        event = self.workshop.start_phase(state, following, work)
        await self._say(state, state.plan.assignments[following], "start")
        return await self._saved(event)

    async def _saved(self, event: WorkshopEvent) -> WorkshopEvent:
        """Save the task at a boundary (a phase started, the task ended, a perturbation)."""
        await self._save()
        return event

    async def _park(self, state: TaskState, phase: WorkshopPhase, reason: SemaphoreReason) -> SemaphoreToken:
        why = "the task touches sensitive systems" if reason is SemaphoreReason.SENSITIVE_ACTION else "gated phase"
        token = self._agent.yield_semaphore(
            reason,
            f"Approve {phase.value} for task '{state.task.description}'? ({why})",
            options=("approve", "reject"),
            severity="warning",
            original_event={"task": state.task.id, "description": state.task.description, "phase": phase.value},
        )
        await self._say(state, state.active or state.plan.lead_builder, "approval")
        self._gate_event = self.workshop.request_approval(state, phase, token.id, why)
        # The gate's frozen state is the whole task as it waits, so the token alone is
        # enough to take the task up again (``agentflux workshop resume TOKEN_ID``).
        snapshot = await self._save()
        frozen = self._agent.state_codec.encode(
            {"task": state.task.id, "phase": phase.value, "snapshot": snapshot}, context=token.id
        )
        return dataclasses.replace(token, frozen_state=frozen)

    async def _step(self) -> Any:
        state = self._state
        assert state is not None
        state.metrics.total_steps += 1
        if state.completed or self._waiting(state):
            return None
        if state.phase is WorkshopPhase.IDLE:
            return await self._advance(state)
        if not state.phase_done:
            self.workshop.continue_work(state)
            assert state.active is not None
            if state.steps_in_phase < state.work_needed:
                await self._say(state, state.active, "continue")
                return None
            await self._write_artifact(state)
        if not self.auto_advance:
            await self._save()  # the phase's work is done; it waits for an advance
            return None
        return await self._advance(state)

    async def _apply(self, action: str, builder: str | None, artifact: str | WorkshopArtifact | None) -> Any:
        state = self._state
        assert state is not None
        state.metrics.perturbations += 1
        if state.completed:
            raise FluxStateError("COMPLETE", f"perturb ({action})", f"task {state.task.id} has ended")
        if action == "advance":
            if state.parked_token is not None:
                assert self._gate_event is not None
                return self._gate_event  # the gate still waits for its human: advancing cannot skip it
            if state.phase is not WorkshopPhase.IDLE and not state.phase_done:
                await self._write_artifact(state)
            return await self._advance(state)
        if action == "handoff":
            assert builder is not None
            event = self.workshop.handoff(
                state, builder, state.artifacts[-1] if state.artifacts else None, note="by request"
            )
            return await self._saved(event)
        if action == "complete":
            if state.parked_token is not None:
                # The approval is moot once the task ends: withdraw it so nobody answers it later.
                with contextlib.suppress(SemaphoreNotPending):  # answered or withdrawn meanwhile
                    await self.purgatory.cancel(state.parked_token, "the task was completed")
                state.parked_token = None
            return await self._saved(self.workshop.complete(state))
        if isinstance(artifact, str):
            artifact = WorkshopArtifact(state.phase, "User", "Injected note", artifact)
        assert artifact is not None
        event = self.workshop.record_artifact(state, artifact, source="perturbation", tokens=0)
        return await self._saved(event)

    async def _withdrawn(self, token_id: str, status: str) -> WorkshopEvent | None:
        state = self._state
        assert state is not None
        if state.completed or state.parked_token != token_id:
            return None  # answered, or the task moved on, before this ran
        state.parked_token = None
        return await self._saved(self.workshop.complete(state, "cancelled", note=f"approval {status}"))

    async def _resume_gate(self, data: dict[str, Any], answer: Any) -> Any:
        state = self._state
        if state is None or data.get("task") != state.task.id:
            raise SemaphoreResumeError(f"approval for task {data.get('task')!r} does not belong to the current task")
        if state.completed:
            raise SemaphoreResumeError(f"task {state.task.id} has already ended ({state.outcome})")
        phase = WorkshopPhase(data["phase"])
        approved = is_approval(answer)
        self.workshop.resolve_approval(state, phase, approved, answer)
        speaker = state.active or state.plan.lead_builder
        if not approved:
            await self._say(state, speaker, "rejected")
            return await self._saved(self.workshop.complete(state, "rejected"))
        await self._say(state, speaker, "approved")
        return await self._advance(state)
