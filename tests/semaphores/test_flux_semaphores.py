"""A flux parks tokens in its purgatory and resumes them when a human answers (SPEC 4, 10 Semaphores)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agentflux import (
    Flux,
    FluxAgent,
    FluxConfig,
    FluxState,
    Purgatory,
    SemaphoreCodecError,
    SemaphoreMixin,
    SemaphoreNotPending,
    SemaphoreReason,
    SemaphoreResumeError,
    SemaphoreStatus,
    SemaphoreStoreError,
    SemaphoreToken,
    Signal,
    SignedPickleCodec,
    StateCodec,
    open_purgatory,
)
from agentflux.semaphores.stores import _sqlite
from agentflux.sources import Receiver, Sender, open_channel

from ._helpers import make_token


class Approver(SemaphoreMixin):
    """Multiplies by 10, but asks a human about the events ``ask`` picks.

    A resumption answered ``"more"`` asks again (up to three steps); any other answer ends it.
    """

    name = "approver"

    def __init__(self, ask: Callable[[Any], bool] = lambda x: x % 3 == 0) -> None:
        self.ask = ask
        self.invoked: list[Any] = []
        self.resumed: list[tuple[Any, Any]] = []
        self.resumed_event = asyncio.Event()

    async def invoke(self, x: Any) -> Any:
        self.invoked.append(x)
        if self.ask(x):
            return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"approve {x}?", {"x": x, "step": 1})
        return x * 10

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        state = self.restore_state(frozen_state)
        self.resumed.append((state, human_input))
        self.resumed_event.set()
        if human_input == "more" and state["step"] < 3:
            return self.yield_semaphore(
                SemaphoreReason.APPROVAL_NEEDED, f"again {state['x']}?", {"x": state["x"], "step": state["step"] + 1}
            )
        return f"{state['x']}:{human_input}"


class PickleApprover(Approver):
    """An ``Approver`` whose state is a signed pickle."""

    state_codec: ClassVar[StateCodec] = SignedPickleCodec(b"a secret key of 32 bytes........")


class NoResume:
    """Asks a human about every event but cannot resume."""

    name = "no-resume"

    async def invoke(self, x: Any) -> Any:
        return make_token(f"about {x}")


async def collect(stream: Any, within: float = 3.0) -> list[Any]:
    async with asyncio.timeout(within), stream:
        return [item async for item in stream]


async def next_output(stream: Any, within: float = 3.0) -> Any:
    async with asyncio.timeout(within):
        return await anext(stream)


async def signals_of(observer: Any, within: float = 3.0) -> list[Signal]:
    async with asyncio.timeout(within):
        return [signal async for signal in observer]


class Running:
    """A flux started on an idle channel: events are sent one at a time; closing ends the stream."""

    def __init__(self, flux: FluxAgent[Any, Any]) -> None:
        self.flux = flux
        sender, receiver = open_channel(16)
        self.sender: Sender[Any] = sender
        self.receiver: Receiver[Any] = receiver
        self.out = flux.start(receiver)

    async def send(self, x: Any) -> None:
        await self.sender.send(x)

    async def output(self, within: float = 3.0) -> Any:
        return await next_output(self.out, within)

    async def finish(self) -> list[Any]:
        """End the source and return what was still to come out."""
        self.sender.close()
        return await collect(self.out)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[FluxAgent[Any, Any]], Running]]:
    started: list[Running] = []

    def start(flux: FluxAgent[Any, Any]) -> Running:
        run = Running(flux)
        started.append(run)
        return run

    yield start
    for run in started:
        run.sender.close()
        await run.out.aclose()


# ----------------------------------------------------------------------------- ejection


async def test_a_token_is_parked_and_the_stream_goes_on() -> None:
    agent = Approver()
    flux = Flux.lift(agent, FluxConfig(agent_id="approvals"))
    observer = flux.observe()
    assert await collect(flux.start([1, 3, 2, 6, 4])) == [10, 20, 40]
    signals = await signals_of(observer)

    pending = await flux.purgatory.list_pending()
    assert [t.original_event for t in pending] == [3, 6]
    assert all(t.flux_id == "approvals" for t in pending)
    assert all(t.status is SemaphoreStatus.PENDING for t in pending)
    assert [agent.restore_state(t.frozen_state) for t in pending] == [{"x": 3, "step": 1}, {"x": 6, "step": 1}]
    ejected = [s for s in signals if s.kind == "semaphore_ejected"]
    assert [s.data["token_id"] for s in ejected] == [t.id for t in pending]
    assert ejected[0].data["prompt"] == "approve 3?"
    assert ejected[0].data["reason"] == "approval_needed"
    assert ejected[0].flux_id == "approvals"
    metrics = flux.metrics()
    assert metrics.semaphores_ejected == 2
    assert metrics.semaphores_resumed == 0
    assert metrics.events_out == 3


async def test_the_default_flux_id_is_the_flux_id() -> None:
    flux = Flux.lift(Approver())
    assert await collect(flux.start([3])) == []
    (token,) = await flux.purgatory.list_pending()
    assert token.flux_id == flux.id


async def test_a_token_with_its_own_original_event_keeps_it() -> None:
    class Explicit(Approver):
        async def invoke(self, x: Any) -> Any:
            return self.yield_semaphore(SemaphoreReason.CONTEXT_REQUIRED, "which?", x, original_event={"wrapped": x})

    flux = Flux.lift(Explicit())
    assert await collect(flux.start([5])) == []
    (token,) = await flux.purgatory.list_pending()
    assert token.original_event == {"wrapped": 5}


class GatedPurgatory(Purgatory):
    """A purgatory whose saves wait for a gate: shows what the flux does while a save is in progress."""

    def __init__(self) -> None:
        super().__init__(open_purgatory("memory://").store)
        self.gate = asyncio.Event()
        self.saving = asyncio.Event()

    async def save(self, token: SemaphoreToken) -> SemaphoreToken:
        self.saving.set()
        await self.gate.wait()
        return await super().save(token)


async def test_the_token_is_saved_before_the_next_event_is_processed() -> None:
    agent = Approver()
    purgatory = GatedPurgatory()
    flux = Flux.lift(agent, FluxConfig(purgatory=purgatory))
    stream = flux.start([1, 3, 2])
    try:
        assert await next_output(stream) == 10
        async with asyncio.timeout(3):
            await purgatory.saving.wait()
        for _ in range(10):
            await asyncio.sleep(0)
        assert agent.invoked == [1, 3]  # 2 waits until the token of 3 is in the purgatory
        purgatory.gate.set()
        assert await next_output(stream) == 20
        (token,) = await purgatory.list_pending()
        assert token.original_event == 3
    finally:
        await stream.aclose()


async def test_no_head_of_line_blocking_while_a_token_waits(running: Callable[..., Running]) -> None:
    flux = Flux.lift(Approver())
    run = running(flux)
    await run.send(3)
    for x in (1, 2, 4):
        await run.send(x)
        assert await run.output() == x * 10
    (token,) = await flux.purgatory.list_pending()
    assert token.status is SemaphoreStatus.PENDING
    assert token.original_event == 3
    assert await run.finish() == []
    assert flux.metrics().semaphores_ejected == 1


async def test_a_perturbation_that_yields_a_token_returns_it_to_the_caller(running: Callable[..., Running]) -> None:
    flux = Flux.lift(Approver(), FluxConfig(agent_id="desk"))
    run = running(flux)
    token = await asyncio.wait_for(flux.invoke(9), 3)
    assert isinstance(token, SemaphoreToken)
    assert token.original_event == 9
    assert token.flux_id == "desk"
    assert await flux.purgatory.get(token.id) == token
    await run.send(1)
    assert await run.output() == 10  # the token did not go to the stream
    assert await run.finish() == []
    assert flux.metrics().semaphores_ejected == 1


# ----------------------------------------------------------------------------- flux.resolve


async def test_resolve_while_running_returns_the_result_and_emits_it(running: Callable[..., Running]) -> None:
    agent = Approver()
    flux = Flux.lift(agent)
    observer = flux.observe()
    run = running(flux)
    await run.send(3)
    await run.send(1)
    assert await run.output() == 10
    (token,) = await flux.purgatory.list_pending()

    assert await asyncio.wait_for(flux.resolve(token.id, "yes"), 3) == "3:yes"
    assert await run.output() == "3:yes"
    stored = await flux.purgatory.get(token.id)
    assert stored.status is SemaphoreStatus.RESOLVED
    assert stored.resolution == "yes"

    await run.send(2)
    assert await run.output() == 20
    assert await run.finish() == []
    assert agent.resumed == [({"x": 3, "step": 1}, "yes")]  # once: the watcher did not resume it again
    assert flux.metrics().semaphores_resumed == 1
    resumed = [s for s in await signals_of(observer) if s.kind == "semaphore_resumed"]
    assert [s.data["token_id"] for s in resumed] == [token.id]


async def test_resolve_when_not_running_calls_resume_directly() -> None:
    agent = Approver()
    flux = Flux.lift(agent)
    assert await collect(flux.start([3])) == []
    assert flux.state is FluxState.STOPPED
    (token,) = await flux.purgatory.list_pending()

    assert await flux.resolve(token.id, "ok") == "3:ok"
    assert agent.resumed == [({"x": 3, "step": 1}, "ok")]
    assert flux.metrics().semaphores_resumed == 1
    assert (await flux.purgatory.get(token.id)).status is SemaphoreStatus.RESOLVED

    # Starting again does not resume it a second time.
    assert await collect(flux.start([1])) == [10]
    assert len(agent.resumed) == 1
    assert flux.metrics().semaphores_resumed == 1
    with pytest.raises(SemaphoreNotPending):
        await flux.resolve(token.id, "again")


async def test_resolve_on_a_dormant_flux_resumes_a_token_saved_for_it() -> None:
    agent = Approver()
    flux = Flux.lift(agent, FluxConfig(agent_id="dormant"))
    token = agent.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", {"x": 7, "step": 1})
    await flux.purgatory.save(token)  # no flux_id: anyone may resume it
    assert flux.state is FluxState.DORMANT
    assert await flux.resolve(token.id, "fine") == "7:fine"
    assert flux.metrics().semaphores_resumed == 1


async def test_an_agent_without_resume_is_refused_before_anything_changes(running: Callable[..., Running]) -> None:
    purgatory = open_purgatory("memory://")
    flux = Flux.lift(NoResume(), FluxConfig(purgatory=purgatory))
    assert await collect(flux.start([1])) == []
    (token,) = await purgatory.list_pending()
    with pytest.raises(SemaphoreResumeError, match="resume"):
        await flux.resolve(token.id, "yes")
    assert await purgatory.get(token.id) == token

    run = running(flux)
    with pytest.raises(SemaphoreResumeError):
        await flux.resolve(token.id, "yes")
    assert await purgatory.get(token.id) == token
    assert await run.finish() == []
    await purgatory.aclose()


async def test_a_token_of_another_flux_is_refused_before_anything_changes(running: Callable[..., Running]) -> None:
    purgatory = open_purgatory("memory://")
    mine = Flux.lift(Approver(), FluxConfig(purgatory=purgatory, agent_id="mine"))
    theirs = Flux.lift(Approver(), FluxConfig(purgatory=purgatory, agent_id="theirs"))
    assert await collect(theirs.start([3])) == []
    (token,) = await purgatory.list_pending()
    assert token.flux_id == "theirs"
    with pytest.raises(SemaphoreResumeError, match="theirs"):
        await mine.resolve(token.id, "yes")
    run = running(mine)
    with pytest.raises(SemaphoreResumeError):
        await mine.resolve(token.id, "yes")
    assert await purgatory.get(token.id) == token
    assert await run.finish() == []
    assert await theirs.resolve(token.id, "yes") == "3:yes"
    await purgatory.aclose()


@pytest.mark.parametrize("while_running", [True, False], ids=["running", "stopped"])
async def test_a_resume_can_ask_again_multi_step(running: Callable[..., Running], while_running: bool) -> None:
    agent = Approver()
    flux = Flux.lift(agent, FluxConfig(agent_id="steps"))
    assert await collect(flux.start([6])) == []
    run = running(flux) if while_running else None
    (first,) = await flux.purgatory.list_pending()

    second = await asyncio.wait_for(flux.resolve(first.id, "more"), 3)
    assert isinstance(second, SemaphoreToken)
    assert second.id != first.id
    assert second.prompt == "again 6?"
    assert second.flux_id == "steps"
    assert second.original_event == 6
    assert await flux.purgatory.get(second.id) == second
    assert (await flux.purgatory.get(first.id)).status is SemaphoreStatus.RESOLVED
    assert [t.id for t in await flux.purgatory.list_pending()] == [second.id]

    third = await asyncio.wait_for(flux.resolve(second.id, "more"), 3)
    assert isinstance(third, SemaphoreToken)
    assert agent.restore_state(third.frozen_state) == {"x": 6, "step": 3}
    assert await asyncio.wait_for(flux.resolve(third.id, "done"), 3) == "6:done"
    assert await flux.purgatory.list_pending() == []
    if run is not None:
        assert await run.output() == "6:done"  # only the final result reaches the stream
        assert await run.finish() == []
    metrics = flux.metrics()
    assert metrics.semaphores_ejected == 3
    assert metrics.semaphores_resumed == 3


# ----------------------------------------------------------------------------- resolved elsewhere


async def test_a_token_resolved_in_the_purgatory_is_resumed_by_the_running_flux(
    running: Callable[..., Running],
) -> None:
    agent = Approver()
    flux = Flux.lift(agent)
    run = running(flux)
    await run.send(3)
    await run.send(1)
    assert await run.output() == 10
    (token,) = await flux.purgatory.list_pending()

    await flux.purgatory.resolve(token.id, "from the dashboard")
    assert await run.output() == "3:from the dashboard"
    await run.send(2)
    assert await run.output() == 20
    assert await run.finish() == []
    assert len(agent.resumed) == 1
    assert flux.metrics().semaphores_resumed == 1
    assert not await flux.purgatory.claim_resume(token.id)


async def test_a_token_resolved_by_another_process_is_resumed_exactly_once(
    running: Callable[..., Running], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    agent = Approver()
    async with open_purgatory(url) as purgatory:
        flux = Flux.lift(agent, FluxConfig(purgatory=purgatory, agent_id="worker"))
        run = running(flux)
        await run.send(3)
        await run.send(1)
        assert await run.output() == 10
        (token,) = await purgatory.list_pending()

        elsewhere = open_purgatory(url)  # another process, the CLI, the dashboard
        try:
            await elsewhere.resolve(token.id, "approved in another process")
        finally:
            await elsewhere.aclose()
        assert await run.output() == "3:approved in another process"
        await run.send(4)
        assert await run.output() == 40
        assert await run.finish() == []
    assert len(agent.resumed) == 1
    assert flux.metrics().semaphores_resumed == 1


@pytest.mark.parametrize("shared", [True, False], ids=["one-purgatory", "two-sqlite-handles"])
async def test_several_watching_fluxes_resume_a_resolution_once(
    running: Callable[..., Running], tmp_path: Path, shared: bool
) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    agents = [Approver(), Approver()]
    async with open_purgatory(url) as first, open_purgatory(url) as second:
        purgatories = [first, first] if shared else [first, second]
        fluxes = [
            Flux.lift(agent, FluxConfig(purgatory=p, agent_id="same"))
            for agent, p in zip(agents, purgatories, strict=True)
        ]
        assert await collect(fluxes[0].start([3])) == []
        (token,) = await first.list_pending()
        runs = [running(flux) for flux in fluxes]

        resolver = open_purgatory(url)
        try:
            await resolver.resolve(token.id, "go")
        finally:
            await resolver.aclose()
        waiters = [asyncio.create_task(a.resumed_event.wait()) for a in agents]
        try:
            async with asyncio.timeout(3):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        # Give the slower watcher time to see the same resolution (it checks every 0.2 s).
        await asyncio.sleep(0.5)
        outputs = [await run.finish() for run in runs]
    assert sum(len(a.resumed) for a in agents) == 1
    assert sorted(map(tuple, outputs)) == [(), ("3:go",)]


async def test_tokens_resolved_while_the_flux_was_stopped_are_resumed_when_it_starts(
    running: Callable[..., Running],
) -> None:
    agent = Approver()
    flux = Flux.lift(agent)
    assert await collect(flux.start([3, 6])) == []
    first, second = await flux.purgatory.list_pending()
    await flux.purgatory.resolve(first.id, "a")
    await flux.purgatory.resolve(second.id, "b")

    run = running(flux)
    assert sorted([await run.output(), await run.output()]) == ["3:a", "6:b"]
    assert await run.finish() == []
    assert flux.metrics().semaphores_resumed == 2
    # A third start finds nothing left to resume.
    assert await collect(flux.start([])) == []
    assert len(agent.resumed) == 2


class SlowResume(Approver):
    """Its resumptions wait for a gate, so a test can stop the flux in the middle of one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().resume(frozen_state, human_input)


async def test_a_resumption_cut_short_by_stop_is_resumed_on_the_next_start(running: Callable[..., Running]) -> None:
    agent = SlowResume()
    flux = Flux.lift(agent)
    assert await collect(flux.start([3])) == []
    (token,) = await flux.purgatory.list_pending()
    run = running(flux)
    await flux.purgatory.resolve(token.id, "go")
    async with asyncio.timeout(3):
        await agent.entered.wait()
    await run.out.aclose()  # stop while the agent is resuming
    assert agent.resumed == []
    agent.gate.set()
    run = running(flux)
    assert await run.output() == "3:go"
    assert await run.finish() == []
    assert agent.resumed == [({"x": 3, "step": 1}, "go")]


async def first_error(observer: Any) -> Signal:
    async for signal in observer:
        if signal.kind == "error":
            found: Signal = signal
            return found
    raise AssertionError("the flux stopped without signalling an error")


async def test_the_watcher_outlives_a_write_lock_held_past_the_busy_timeout(
    running: Callable[..., Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "_LOCK_TIMEOUT", 0.2)  # the store's busy timeout
    path = tmp_path / "p.db"
    async with open_purgatory(f"sqlite:///{path}") as purgatory:
        config = FluxConfig(purgatory=purgatory, agent_id="svc")
        assert await collect(Flux.lift(Approver(), config).start([3])) == []
        (token,) = await purgatory.list_pending()
        agent = Approver()
        flux = Flux.lift(agent, config)
        observer = flux.observe()
        run = running(flux)
        other = sqlite3.connect(path, isolation_level=None)  # another process
        try:
            # It resolves the token and, before the flux can claim it, starts a long write.
            other.execute(
                "UPDATE tokens SET status = 'resolved', resolution = ?, resolved_at = ? WHERE id = ?",
                (purgatory.codec.encode("go"), datetime.now(UTC).isoformat(), token.id),
            )
            other.execute("BEGIN IMMEDIATE")
            async with asyncio.timeout(5):  # the claim fails on the lock (after 0.2 s) and is signalled
                error = await first_error(observer)
            assert agent.resumed == []
        finally:
            other.close()  # the lock is released: a retry of the claim succeeds
        assert await run.output(within=10) == "3:go"
        assert await run.finish() == []
    assert agent.resumed == [({"x": 3, "step": 1}, "go")]
    assert error.data["token_id"] == token.id
    assert isinstance(error.data["error"], SemaphoreStoreError)
    assert "database is locked" in str(error.data["error"])


class PausingPurgatory(Purgatory):
    """A memory purgatory that can hold a flux right after its claim of a resolution, or its
    save of a token, has committed (as a slow disk sync would)."""

    def __init__(self) -> None:
        super().__init__(open_purgatory("memory://").store)
        self.pause_claim = False
        self.pause_save = False
        self.paused = asyncio.Event()
        self.gate = asyncio.Event()
        self.claimed = asyncio.Event()
        self.resolved = asyncio.Event()
        self.pause_resolve = False

    async def _hold(self) -> None:
        self.paused.set()
        await self.gate.wait()

    async def claim_resume(self, token_id: str) -> bool:
        claimed = await super().claim_resume(token_id)
        if claimed:
            self.claimed.set()
        if self.pause_claim and claimed:
            await self._hold()
        return claimed

    async def save(self, token: SemaphoreToken) -> SemaphoreToken:
        saved = await super().save(token)
        if self.pause_save:
            await self._hold()
        return saved

    async def resolve(self, token_id: str, human_input: Any, *, claim: bool = False, by: str | None = None) -> Any:
        context = await super().resolve(token_id, human_input, claim=claim, by=by)
        self.resolved.set()
        if self.pause_resolve:
            await self._hold()
        return context


class Interruptible(Approver):
    """Its ``invoke`` of 7 and its ``resume`` can be held at a gate."""

    def __init__(self, hold_resume: bool = False) -> None:
        super().__init__()
        self.hold_resume = hold_resume
        self.gate = asyncio.Event()
        self.held = asyncio.Event()
        self.completed: list[Any] = []  # resumptions that returned
        self.crash = False  # its invoke of 7 raises once let through

    async def invoke(self, x: Any) -> Any:
        if x == 7:
            self.held.set()
            await self.gate.wait()
            if self.crash:
                raise RuntimeError("the agent broke")
        return await super().invoke(x)

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        if self.hold_resume:
            self.held.set()
            await self.gate.wait()
        result = await super().resume(frozen_state, human_input)
        self.completed.append(human_input)
        return result


async def crashing_source(events: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """Yields what is queued; an exception queued is raised (the run fails on it)."""
    while True:
        event = await events.get()
        if isinstance(event, Exception):
            raise event
        yield event


POINTS = ["claim-committing", "queued", "resuming", "parking-its-new-token"]


@pytest.mark.parametrize("ending", ["stop", "crash"])
@pytest.mark.parametrize("point", POINTS)
async def test_a_resolution_claimed_by_a_run_that_ends_is_resumed_once_by_the_next(
    running: Callable[..., Running], point: str, ending: str
) -> None:
    purgatory = PausingPurgatory()
    config = FluxConfig(purgatory=purgatory, agent_id="svc")
    assert await collect(Flux.lift(Approver(), config).start([3])) == []
    (token,) = await purgatory.list_pending()

    agent = Interruptible(hold_resume=point == "resuming")
    flux = Flux.lift(agent, FluxConfig(purgatory=purgatory, agent_id="svc", on_error="raise"))
    observer = flux.observe()
    events: asyncio.Queue[Any] = asyncio.Queue()
    stream = flux.start(crashing_source(events))
    answer = "more" if point == "parking-its-new-token" else "go"
    if point == "queued":  # the one slot is busy: the claimed re-entry waits in the queue
        events.put_nowait(7)
        async with asyncio.timeout(3):
            await agent.held.wait()
    purgatory.pause_claim = point == "claim-committing"
    purgatory.pause_save = point == "parking-its-new-token"
    await purgatory.resolve(token.id, answer)  # elsewhere: the flux's watcher claims it
    async with asyncio.timeout(3):
        await {"queued": purgatory.claimed, "resuming": agent.held}.get(point, purgatory.paused).wait()

    if ending == "stop":
        stopping = asyncio.ensure_future(flux.stop())
    elif point == "queued":  # the worker is in the agent: the agent fails the run
        agent.crash = True
        agent.gate.set()
        stopping = asyncio.ensure_future(collect(stream))
    else:
        events.put_nowait(RuntimeError("the source broke"))
        stopping = asyncio.ensure_future(collect(stream))
    async with asyncio.timeout(3):  # the run has ended while the flux is held mid-way
        assert "stopped" in [signal.kind async for signal in observer]
    purgatory.gate.set()  # the store answers, the agent goes on: too late for this run
    agent.gate.set()
    if ending == "stop":
        await asyncio.wait_for(stopping, 3)
    else:
        with pytest.raises(RuntimeError, match="broke"):
            await asyncio.wait_for(stopping, 3)
    await stream.aclose()
    purgatory.pause_claim = purgatory.pause_save = False

    finished = point == "parking-its-new-token" or (point == "resuming" and ending == "crash")
    # The claim was given back unless ``resume`` returned: the next start resumes the token.
    unclaimed = [t.id for t in await purgatory.resolved_unclaimed("svc")]
    assert unclaimed == ([] if finished else [token.id])
    restarted = Approver()
    run = running(Flux.lift(restarted, config))
    if finished:
        # ``resume`` returned (a failed run does not interrupt a resumption in progress):
        # its result stands, and nobody resumes the token a second time.
        assert agent.completed == [answer]
        assert await run.finish() == []
        assert restarted.resumed == []
        if point == "parking-its-new-token":
            (again,) = await purgatory.list_pending()
            assert again.prompt == "again 3?"
    else:
        assert await run.output() == "3:go"
        assert await run.finish() == []
        assert agent.completed == []
        assert restarted.resumed == [({"x": 3, "step": 1}, "go")]
    assert not await purgatory.claim_resume(token.id)


@pytest.mark.parametrize("stage", ["resolving", "queued", "resuming-directly"])
async def test_a_resolver_cancelled_before_the_resume_leaves_it_to_the_next_start(
    running: Callable[..., Running], stage: str
) -> None:
    purgatory = PausingPurgatory()
    config = FluxConfig(purgatory=purgatory, agent_id="svc")
    assert await collect(Flux.lift(Approver(), config).start([3])) == []
    (token,) = await purgatory.list_pending()
    agent = Interruptible(hold_resume=stage == "resuming-directly")
    flux = Flux.lift(agent, config)
    if stage != "resuming-directly":  # running, its one slot busy: the re-entry would wait
        run = running(flux)
        await run.send(7)
        async with asyncio.timeout(3):
            await agent.held.wait()
        agent.held.clear()
    purgatory.pause_resolve = stage == "resolving"
    resolver = asyncio.ensure_future(flux.resolve(token.id, "go"))
    async with asyncio.timeout(3):
        await (agent.held if stage == "resuming-directly" else purgatory.resolved).wait()
    resolver.cancel()
    purgatory.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(resolver, 3)
    await flux.stop()  # before the agent lets the busy event or the resumption through
    agent.gate.set()
    assert agent.completed == []
    assert [t.id for t in await purgatory.resolved_unclaimed("svc")] == [token.id]

    restarted = Approver()
    run = running(Flux.lift(restarted, config))
    assert await run.output() == "3:go"
    assert await run.finish() == []
    assert restarted.resumed == [({"x": 3, "step": 1}, "go")]


async def test_a_new_process_resumes_what_a_dead_one_parked(running: Callable[..., Running], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    async with open_purgatory(url) as old:
        parked = Flux.lift(Approver(), FluxConfig(purgatory=old, agent_id="svc"))
        assert await collect(parked.start([1, 3])) == [10]
    async with open_purgatory(url) as cli:
        (token,) = await cli.list_pending()
        await cli.resolve(token.id, "later")
    agent = Approver()
    async with open_purgatory(url) as new:
        flux = Flux.lift(agent, FluxConfig(purgatory=new, agent_id="svc"))
        run = running(flux)
        assert await run.output() == "3:later"
        assert await run.finish() == []
    assert agent.resumed == [({"x": 3, "step": 1}, "later")]


@pytest.mark.parametrize("while_running", [False, True], ids=["dormant", "running"])
async def test_signed_state_copied_into_another_tokens_row_is_refused(
    running: Callable[..., Running], tmp_path: Path, while_running: bool
) -> None:
    """Whoever can write the store cannot replay one approval's state into another token."""
    path = tmp_path / "p.db"
    async with open_purgatory(f"sqlite:///{path}") as purgatory:
        parked = Flux.lift(PickleApprover(), FluxConfig(purgatory=purgatory, agent_id="svc"))
        assert await collect(parked.start([3, 6])) == []
        first, second = sorted(await purgatory.list_pending(), key=lambda token: token.prompt)
    assert (first.prompt, second.prompt) == ("approve 3?", "approve 6?")
    # The attacker copies the first token's (validly signed) state into the second's row.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tokens SET frozen_state = ? WHERE id = ?", (first.frozen_state, second.id))
    db.close()

    agent = PickleApprover()
    async with open_purgatory(f"sqlite:///{path}") as purgatory:
        flux = Flux.lift(agent, FluxConfig(purgatory=purgatory, agent_id="svc"))
        assert (await purgatory.get(second.id)).frozen_state == first.frozen_state
        if while_running:
            run = running(flux)
        with pytest.raises(SemaphoreCodecError, match="frozen for another token"):
            await flux.resolve(second.id, "ok")
        assert await flux.resolve(first.id, "ok") == "3:ok"  # the genuine row still resumes
        if while_running:
            assert await run.output() == "3:ok"
            assert await run.finish() == []
    assert agent.resumed == [({"x": 3, "step": 1}, "ok")]


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("value", [object(), "memory://", 42, open_purgatory])
def test_config_purgatory_must_be_a_purgatory(value: Any) -> None:
    with pytest.raises(ValueError, match="purgatory"):
        FluxConfig(purgatory=value)


def test_config_accepts_a_purgatory() -> None:
    purgatory = open_purgatory("memory://")
    assert FluxConfig(purgatory=purgatory).purgatory is purgatory
    assert FluxConfig().purgatory is None
    assert Flux.lift(Approver(), FluxConfig(purgatory=purgatory)).purgatory is purgatory
