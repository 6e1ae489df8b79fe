"""``agentflux workshop run``: a task carried through the workshop, shown live in the terminal."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .._core._errors import AgentfluxError, SemaphoreNotPending
from .._core._text import terminal_safe as _clean
from ..semaphores._codec import JsonCodec
from ..semaphores._purgatory import Purgatory, open_purgatory
from ..semaphores._token import SemaphoreStatus
from ..workshop import (
    DialogueEngine,
    LLMClient,
    OpenAICompatibleClient,
    RecordingLLMClient,
    ReplayLLMClient,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopFlux,
    WorkshopPhase,
    create_workshop,
)
from ..workshop._snapshot import decode_snapshot, load_snapshot
from ._common import DEFAULT_STORE, answerer

__all__ = ["workshop"]

_COLORS = {"Scout": "cyan", "Sage": "magenta", "Spark": "yellow", "Steady": "green", "Sync": "blue", "User": "white"}
_ICONS = {"done": ("✔", "green"), "active": ("●", "bold yellow"), "todo": ("·", "dim")}


@dataclass
class _ViewState:
    """What the live view shows, updated from the task's events."""

    task: str
    phases: tuple[WorkshopPhase, ...] = ()
    lead: str = ""
    current: WorkshopPhase = WorkshopPhase.IDLE
    completed: set[WorkshopPhase] = field(default_factory=set)
    active: str | None = None
    lines: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=9))
    artifacts: list[tuple[str, str, int]] = field(default_factory=list)
    approvals: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None

    @classmethod
    def of(cls, flux: WorkshopFlux) -> _ViewState:
        """The view of a task taken up from the store, as far as it had come."""
        status = flux.get_status()
        state = flux._state
        assert state is not None
        plan = state.plan
        done = plan.phases[: plan.phases.index(state.phase)] if state.phase in plan.phases else ()
        view = cls(str(status["task"]), plan.phases, plan.lead_builder, state.phase, set(done), state.active)
        view.artifacts = [(a.builder, a.title, len(a.content)) for a in state.artifacts]
        for line in state.transcript[-9:]:
            view.lines.append((line["builder"], line["text"], line["source"]))
        if state.parked_token is not None:
            view.approvals[state.parked_token] = f"Approval needed before {state.next_phase() or state.phase}"
        return view

    def apply(self, event: WorkshopEvent) -> None:
        kind = event.type
        if kind is WorkshopEventType.PLAN_CREATED:
            self.phases = tuple(WorkshopPhase(p) for p in event.metadata.get("phases", ()))
            self.lead = event.builder or ""
        elif kind is WorkshopEventType.PHASE_STARTED:
            self.current, self.active = event.phase, event.builder
        elif kind is WorkshopEventType.PHASE_COMPLETED:
            self.completed.add(event.phase)
        elif kind is WorkshopEventType.HANDOFF:
            self.active = event.metadata.get("to", self.active)
        elif kind is WorkshopEventType.DIALOGUE:
            source = "llm" if event.metadata.get("source") == "llm" else "template"
            if event.metadata.get("fallback"):
                source = f"template, {event.metadata['fallback']}"
            self.lines.append((event.builder or "?", event.message, source))
        elif kind is WorkshopEventType.ARTIFACT_PRODUCED and event.artifact is not None:
            self.artifacts.append((event.artifact.builder, event.artifact.title, len(event.artifact.content)))
        elif kind is WorkshopEventType.APPROVAL_REQUESTED:
            self.approvals[str(event.metadata.get("token_id"))] = event.message
        elif kind is WorkshopEventType.APPROVAL_RESOLVED:
            self.approvals.pop(str(event.metadata.get("token_id")), None)
        elif kind is WorkshopEventType.TASK_COMPLETED:
            self.outcome = str(event.metadata.get("outcome", "completed"))


def _render(view: _ViewState, flux: WorkshopFlux, started: float) -> Group:
    # Untrusted text (the task, LLM dialogue, titles, fallback reasons quoting a server) goes
    # into Text objects, never into markup, and through terminal_safe.
    header = Text.assemble((_clean(view.task), "bold"), f"\nlead: {_clean(view.lead)}   ")
    for index, phase in enumerate(view.phases):
        state = "done" if phase in view.completed else "active" if phase is view.current else "todo"
        icon, style = _ICONS[state]
        header.append("  →  " if index else "")
        header.append(icon, style=style)
        header.append(f" {phase.value}")
    talk = Table.grid(padding=(0, 1))
    for builder, line, source in view.lines:
        talk.add_row(
            Text(_clean(builder), style=f"bold {_COLORS.get(builder, 'white')}"),
            Text(_clean(line, multiline=True)),
            Text(f"({_clean(source)})", style="dim"),
        )
    artifacts = Table.grid(padding=(0, 1))
    for builder, title, size in view.artifacts:
        artifacts.add_row(
            Text(_clean(builder), style=_COLORS.get(builder, "white")),
            Text(_clean(title)),
            Text(f"{size} chars", style="dim"),
        )
    parts: list[Any] = [Panel(header, title="agentflux workshop", border_style="bright_black")]
    parts.append(Panel(talk, title="builders", border_style="bright_black"))
    parts.append(
        Panel(
            artifacts if view.artifacts else Text("none yet", style="dim"),
            title="artifacts",
            border_style="bright_black",
        )
    )
    if view.approvals:
        pending = "\n".join(f"{_clean(token)}  {_clean(message)}" for token, message in view.approvals.items())
        parts.append(Panel(Text(pending, style="bold red"), title="pending approvals", border_style="red"))
    m = flux.get_metrics()
    metrics = (
        f"steps {m.total_steps}  events {m.total_events}  artifacts {m.artifacts_produced}  phases "
        f"{m.phases_completed}  handoffs {m.handoffs}  tokens {m.dialogue_tokens}  fallbacks {m.llm_fallbacks}  "
        f"{time.perf_counter() - started:.1f}s"
    )
    parts.append(Text(metrics, style="dim"))
    if view.outcome is None and view.active and not view.approvals:
        parts.append(Spinner("dots", text=Text(f" {_clean(view.active)} is {view.current.value}…")))
    return Group(*parts)


def _plain(event: WorkshopEvent) -> str:
    who = _clean(event.builder or "-")
    extra = ""
    if event.type is WorkshopEventType.DIALOGUE and event.metadata.get("fallback"):
        extra = f"  [template: {_clean(event.metadata['fallback'])}]"
    return f"{event.type.value:<18} {who:<7} {event.phase.value:<12} {_clean(event.message)}{extra}"


def _client(
    base_url: str | None, model: str | None, api_key: str | None, record: str | None, replay: str | None
) -> LLMClient | None:
    client: LLMClient | None = None
    if replay:
        client = ReplayLLMClient(replay)
    elif base_url or model:
        client = OpenAICompatibleClient(base_url, model, api_key)
    if record:
        if client is None:
            raise click.UsageError("--record needs an LLM (--llm-base-url and --model, or the environment)")
        client = RecordingLLMClient(client, record)
    return client


async def _ask(token_id: str, prompt: str) -> str:
    question = f"{_clean(prompt)}\n  approve or reject"
    return await asyncio.to_thread(click.prompt, question, type=click.Choice(["approve", "reject"]), default="approve")


async def _run(options: dict[str, Any]) -> int:
    console = Console(highlight=False, emoji=False, markup=False, soft_wrap=not options["live"])
    live_view = options["live"]
    client = _client(
        options["llm_base_url"], options["model"], options["api_key"], options["record"], options["replay"]
    )
    engine = DialogueEngine(client, token_budget=options["token_budget"])
    async with open_purgatory(options["store"]) as purgatory:
        if options.get("resume"):
            flux = await _restore(purgatory, options["resume"], engine)
            view = _ViewState.of(flux)
            console.print(_resuming(flux), markup=False)
        else:
            gates = () if options["no_gate"] else (WorkshopPhase.INTEGRATING,)
            flux = WorkshopFlux(
                create_workshop(),
                engine,
                seed=options["seed"],
                max_steps_per_phase=options["max_steps"],
                purgatory=purgatory,
                approval_gates=gates,
            )
            await flux.start(options["task"])
            view = _ViewState(task=options["task"])
        async with flux:
            status = flux.get_status()
            started = time.perf_counter()
            parked: str | None = None
            live = (
                Live(_render(view, flux, started), console=console, refresh_per_second=10, transient=False)
                if live_view
                else None
            )
            if live is not None:
                live.start()
            try:
                waiting = flux.pending_approval
                if waiting is not None and options.get("resume"):  # asked before this run: answer it now
                    parked = await _answer(options, flux, waiting, view.approvals.get(waiting, ""), live, console)
                if parked is None:
                    parked = await _follow(options, flux, view, live, console, started)
            finally:
                if live is not None:
                    live.update(_render(view, flux, started))
                    live.stop()
            _summary(console, flux, str(status["lead_builder"]), parked, options)
    aclose = getattr(client, "aclose", None)
    if aclose is not None:
        await aclose()
    return 0


async def _follow(
    options: dict[str, Any], flux: WorkshopFlux, view: _ViewState, live: Live | None, console: Console, started: float
) -> str | None:
    """Show the task's events until it ends (or an approval is deferred: its token id)."""
    async for event in flux.run():
        view.apply(event)
        if live is not None:
            live.update(_render(view, flux, started))
        else:
            console.print(_plain(event), markup=False)
        if options["pace"] and event.type is WorkshopEventType.DIALOGUE:
            await asyncio.sleep(options["pace"])  # so a person can follow along
        if event.type is WorkshopEventType.APPROVAL_REQUESTED:
            parked = await _answer(options, flux, str(event.metadata["token_id"]), event.message, live, console)
            if parked is not None:
                return parked
    return None


async def _answer(
    options: dict[str, Any], flux: WorkshopFlux, token_id: str, prompt: str, live: Live | None, console: Console
) -> str | None:
    """Answer the approval the task waits on as ``--approve`` says; the token id if deferred."""
    if options["approve"] == "wait":
        # The run's flux resumes the task when someone answers elsewhere.
        console.print(
            f"waiting for an answer: agentflux purgatory resolve {_clean(token_id)} approve --store {options['store']}",
            markup=False,
        )
        return None
    answer = await _decide(options, token_id, prompt, live, console)
    if answer is None:
        return token_id
    try:
        mode = options["approve"]
        by = answerer() if mode == "prompt" else f"{answerer()} --approve {mode}"
        await flux.resolve(token_id, answer, by=by)
    except SemaphoreNotPending:
        console.print(f"approval {_clean(token_id)} was already answered elsewhere", markup=False)
    return None


async def _restore(purgatory: Purgatory, token_id: str, engine: DialogueEngine) -> WorkshopFlux:
    """The workshop task waiting on ``token_id``, taken up from the store.

    Raises:
        AgentfluxError: no such token, not a workshop task's approval, or the task is past it.
    """
    token = await purgatory.get(token_id)
    if token.flux_id is None or not token.flux_id.startswith("workshop-"):
        raise AgentfluxError(f"semaphore {token_id} is not a workshop task's approval (flux {token.flux_id!r})")
    task_id = token.flux_id.removeprefix("workshop-")
    text = await purgatory.store.load_task(task_id)
    if text is not None:
        data = load_snapshot(text)
    else:  # kept by a version without the tasks table, or another store: the gate's own copy
        frozen = JsonCodec().decode(token.frozen_state, context=token.id)
        data = decode_snapshot(frozen.get("snapshot") if isinstance(frozen, dict) else None)
    state = data["state"]
    if state["outcome"] is not None:
        raise AgentfluxError(f"task {task_id} has already ended ({state['outcome']}); nothing to resume")
    if state["parked_token"] != token_id:
        raise AgentfluxError(f"task {task_id} has moved past approval {token_id}; it waits on {state['parked_token']}")
    record = await purgatory.store.get(token_id)
    if token.status is SemaphoreStatus.RESOLVED and record is not None and record.resumed:
        raise AgentfluxError(f"approval {token_id} was already taken up by another process (agentflux serve?)")
    return await WorkshopFlux.restore(data, purgatory=purgatory, dialogue_engine=engine)


def _resuming(flux: WorkshopFlux) -> str:
    status = flux.get_status()
    return (
        f"resuming task {_clean(status['task_id'])}: {_clean(status['task'])}\n"
        f"at {status['phase']}, {len(status['artifacts'])} artifacts so far, "
        f"approval {_clean(status['pending_approval'] or '-')}"
    )


async def _decide(
    options: dict[str, Any], token_id: str, prompt: str, live: Live | None, console: Console
) -> str | None:
    mode = options["approve"]
    if mode == "auto":
        if live is None:
            console.print(f"auto-approving {_clean(token_id)}", markup=False)
        return "approve"
    if mode == "reject":
        if live is None:
            console.print(f"auto-rejecting {_clean(token_id)}", markup=False)
        return "reject"
    if mode == "prompt":
        if live is not None:
            live.stop()
        try:
            return await _ask(token_id, prompt)
        finally:
            if live is not None:
                live.start()
    return None  # defer


def _summary(console: Console, flux: WorkshopFlux, lead: str, parked: str | None, options: dict[str, Any]) -> None:
    status = flux.get_status()
    m = flux.get_metrics()
    parked = None if parked is None else _clean(parked)
    outcome = _clean(status["outcome"] or ("parked, waiting for approval" if parked else "stopped"))
    console.print()
    console.print(f"outcome: {outcome}   lead: {_clean(lead)}   phases completed: {m.phases_completed}", markup=False)
    console.print(
        f"steps {m.total_steps}, events {m.total_events}, dialogue lines {m.dialogue_lines}, artifacts "
        f"{m.artifacts_produced}, handoffs {m.handoffs}, approvals {m.approvals_resolved}/{m.approvals_requested}, "
        f"LLM calls {m.llm_calls}, fallbacks {m.llm_fallbacks}, tokens {m.total_tokens}, "
        f"{m.duration_seconds * 1000:.0f} ms",
        markup=False,
    )
    for artifact in flux.artifacts:
        first = artifact.content.strip().splitlines()[0] if artifact.content.strip() else ""
        console.print(
            f"  [{artifact.phase.value}] {_clean(artifact.title)} ({len(artifact.content)} chars) {_clean(first)}",
            markup=False,
        )
        if options["show_artifacts"]:
            console.print(_clean(artifact.content, multiline=True), markup=False)
    if parked and options["store"].startswith("memory://"):
        console.print(
            f"\nThe task is parked as semaphore {parked} in a memory:// store, which ends with this run:\n"
            "nobody can answer it any more. Use --approve prompt/auto/reject, or an SQLite --store with\n"
            "--approve defer --wait to have it answered from another terminal.",
            markup=False,
        )
    elif parked:
        store = options["store"]
        console.print(
            f"\nThe task is parked as semaphore {parked} in {store}.\n"
            "Its progress is saved there: answer it (agentflux purgatory resolve "
            f"{parked} approve --store {store})\n"
            f"and carry the task on with: agentflux workshop resume {parked} --store {store}",
            markup=False,
        )


def _is_terminal() -> bool:
    """Whether the output is a terminal (then the live view is shown)."""
    return sys.stdout.isatty()


@click.group()
def workshop() -> None:
    """Run tasks through the Builder's Workshop."""


def _dialogue_and_view_options(command: Any) -> Any:
    """The options ``run`` and ``resume`` share: the LLM, the store and how the run is shown."""
    decorators = [
        click.option(
            "--llm-base-url",
            envvar="AGENTFLUX_LLM_BASE_URL",
            default=None,
            help="OpenAI-compatible endpoint including /v1 (also $AGENTFLUX_LLM_BASE_URL).",
        ),
        click.option(
            "--model", envvar="AGENTFLUX_LLM_MODEL", default=None, help="Model name (also $AGENTFLUX_LLM_MODEL)."
        ),
        click.option(
            "--api-key", envvar="AGENTFLUX_LLM_API_KEY", default=None, help="API key (also $AGENTFLUX_LLM_API_KEY)."
        ),
        click.option(
            "--record", type=click.Path(dir_okay=False), default=None, help="Record LLM answers to this file."
        ),
        click.option(
            "--replay",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="Answer from a recording instead of calling the LLM.",
        ),
        click.option(
            "--token-budget", type=click.IntRange(min=0), default=None, help="Stop calling the LLM past this."
        ),
        click.option(
            "--store",
            envvar="AGENTFLUX_STORE",
            default=DEFAULT_STORE,
            show_default=True,
            help="Purgatory URL for approvals and task progress (also $AGENTFLUX_STORE).",
        ),
        click.option(
            "--pace", type=click.FloatRange(min=0), default=0.0, help="Seconds to pause after each line spoken."
        ),
        click.option("--plain", is_flag=True, help="One line per event instead of the live view."),
        click.option("--show-artifacts", is_flag=True, help="Print every artifact in full at the end."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


@workshop.command("run")
@click.argument("task")
@click.option(
    "--approve",
    type=click.Choice(["prompt", "auto", "reject", "defer"]),
    default=None,
    help="How to answer approvals (default: prompt in a terminal, else defer).",
)
@click.option("--wait", is_flag=True, help="With defer: keep waiting for an answer from another terminal.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible runs.")
@click.option("--max-steps", type=click.IntRange(min=1), default=4, show_default=True, help="Steps per phase, at most.")
@click.option("--no-gate", is_flag=True, help="Do not ask for approval before INTEGRATING.")
@_dialogue_and_view_options
def run(task: str, **options: Any) -> None:
    """Carry TASK through the workshop's phases, live."""
    if not task.strip():
        raise click.BadParameter("the task must not be empty", param_hint="TASK")
    if options["approve"] is None:
        options["approve"] = "prompt" if sys.stdin.isatty() else "defer"
    if options["approve"] == "defer" and options["wait"]:
        options["approve"] = "wait"
    options["task"] = task
    _execute(options)


def _execute(options: dict[str, Any]) -> None:
    """Run the task (new or resumed) as ``options`` say; an error is one line on stderr."""
    options["live"] = _is_terminal() and not options["plain"]
    try:
        sys.exit(asyncio.run(_run(options)))
    except (AgentfluxError, ValueError, OSError, ImportError) as exc:
        click.echo(f"agentflux: error: {_clean(exc)}", err=True)
        sys.exit(1)


@workshop.command("resume")
@click.argument("token_id")
@click.option(
    "--approve",
    type=click.Choice(["prompt", "auto", "reject", "wait", "defer"]),
    default=None,
    help="How to answer the approval (default: prompt in a terminal, else wait for an answer from elsewhere).",
)
@_dialogue_and_view_options
def resume(token_id: str, **options: Any) -> None:
    """Take up the workshop task parked at approval TOKEN_ID (from its saved progress) and carry
    it to the end, live. An approval answered meanwhile (the dashboard, purgatory resolve) is
    acted on at once."""
    if options["approve"] is None:
        options["approve"] = "prompt" if sys.stdin.isatty() else "wait"
    options["resume"] = token_id
    _execute(options)
