"""Perturbations: ``invoke()`` on a running flux jumps the queue and answers its caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflux import (
    Flux,
    FluxConfig,
    FluxEntropyError,
    FluxPerturbationError,
    FluxState,
    FluxStateError,
)
from conftest import TrackedSource, collect, other_tasks


class Gatekeeper:
    """An agent that records every input and parks on ``release`` for inputs named "block"."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.active = 0
        self.max_active = 0

    async def invoke(self, x: Any) -> Any:
        self.seen.append(x)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if x == "block":
                self.blocked.set()
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            return ("done", x)
        finally:
            self.active -= 1


async def start_blocked(gatekeeper: Gatekeeper, flux: Any) -> asyncio.Task[Any]:
    """Send a perturbation that holds the agent until ``gatekeeper.release`` is set."""
    blocker = asyncio.create_task(flux.invoke("block"))
    async with asyncio.timeout(1):
        await gatekeeper.blocked.wait()
    return blocker


async def test_perturbation_result_goes_to_the_caller_not_the_stream() -> None:
    gate = asyncio.Event()
    flux = Flux.lift(lambda x: x * 10)
    source = TrackedSource([1, 2, 3], gate=gate)
    async with asyncio.timeout(2), flux.start(source) as stream:
        assert [await anext(stream) for _ in range(3)] == [10, 20, 30]
        assert await flux.invoke(7) == 70
        gate.set()
        assert [item async for item in stream] == []
    assert flux.metrics().perturbations == 1


async def test_priority_order_higher_first_ties_in_arrival_order() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    source = TrackedSource([], gate=asyncio.Event())  # idle: only perturbations run
    async with flux.start(source):
        blocker = await start_blocked(gatekeeper, flux)
        requests = [("a", 100), ("b", 300), ("c", 100), ("d", 200), ("e", 300), ("f", 50), ("g", 200)]
        tasks = [asyncio.create_task(flux.invoke(name, priority=p)) for name, p in requests]
        await asyncio.sleep(0)  # each task runs once and queues its perturbation
        assert gatekeeper.seen == ["block"]
        gatekeeper.release.set()
        async with asyncio.timeout(2):
            results = await asyncio.gather(blocker, *tasks)
    assert results == [("done", x) for x in ["block", "a", "b", "c", "d", "e", "f", "g"]]
    assert gatekeeper.seen == ["block", "b", "e", "d", "g", "a", "c", "f"]


async def test_default_priority_sits_between_lower_and_higher() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    async with flux.start(TrackedSource([], gate=asyncio.Event())):
        blocker = await start_blocked(gatekeeper, flux)
        low = asyncio.create_task(flux.invoke("low", priority=99))
        default = asyncio.create_task(flux.invoke("default"))
        high = asyncio.create_task(flux.invoke("high", priority=101))
        await asyncio.sleep(0)
        gatekeeper.release.set()
        async with asyncio.timeout(2):
            await asyncio.gather(blocker, low, default, high)
    assert gatekeeper.seen == ["block", "high", "default", "low"]


async def test_perturbation_goes_ahead_of_queued_source_events() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    source = TrackedSource(["block", 1, 2, 3, 4, 5])
    async with asyncio.timeout(2), flux.start(source) as stream:
        await gatekeeper.blocked.wait()  # the stream's first event holds the agent
        urgent = asyncio.create_task(flux.invoke("urgent"))
        await asyncio.sleep(0)
        gatekeeper.release.set()
        assert await urgent == ("done", "urgent")
        outputs = [item async for item in stream]
    assert outputs == [("done", x) for x in ["block", 1, 2, 3, 4, 5]]
    assert gatekeeper.seen[:2] == ["block", "urgent"]


async def test_perturbation_while_the_source_is_idle_is_served_promptly() -> None:
    flux = Flux.lift(lambda x: -x)
    source = TrackedSource([1], gate=asyncio.Event())  # idle after one item
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(2), flux.start(source) as stream:
        assert await anext(stream) == -1
        begun = loop.time()
        for value in range(10):
            assert await flux.invoke(value) == -value
        # No polling floor: a 50 ms read timeout would cost about 0.25 s over ten calls.
        assert loop.time() - begun < 0.1
        assert flux.state.is_running


async def test_perturbation_while_the_output_buffer_is_full_and_nobody_reads() -> None:
    third_call = asyncio.Event()

    def agent_fn(x: int) -> int:
        if x == 2:
            third_call.set()
        return x

    flux = Flux.lift(agent_fn, FluxConfig(buffer_size=2))
    source = TrackedSource(range(100))
    stream = flux.start(source)
    try:
        async with asyncio.timeout(1):
            await third_call.wait()
            await asyncio.sleep(0)  # the third output now waits for room in the buffer
            assert flux.metrics().pressure == 1.0
            assert await flux.invoke(1000) == 1000
        assert flux.metrics().perturbations == 1
        assert flux.metrics().dropped == 0
        assert source.read <= 2 + 1 + 16
    finally:
        await stream.aclose()
    assert source.closed


async def test_concurrent_invokes_each_get_their_own_result() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    source = TrackedSource([], gate=asyncio.Event())
    async with flux.start(source):
        async with asyncio.timeout(2):
            results = await asyncio.gather(*(flux.invoke(i) for i in range(50)))
    assert results == [("done", i) for i in range(50)]
    assert sorted(gatekeeper.seen) == list(range(50))
    assert gatekeeper.max_active == 1  # concurrency=1: perturbations never overlap
    assert flux.metrics().perturbations == 50


async def test_concurrent_invokes_alongside_a_busy_stream() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    source = TrackedSource(range(200))
    async with asyncio.timeout(5), flux.start(source) as stream:
        invokes = asyncio.gather(*(flux.invoke(f"p{i}") for i in range(20)))
        outputs = [item async for item in stream]
        results = await invokes
    assert outputs == [("done", i) for i in range(200)]
    assert results == [("done", f"p{i}") for i in range(20)]
    assert gatekeeper.max_active == 1


async def test_pending_perturbations_fail_when_the_flux_is_stopped() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    stream = flux.start(TrackedSource([], gate=asyncio.Event()))
    blocker = await start_blocked(gatekeeper, flux)
    queued = [asyncio.create_task(flux.invoke(i)) for i in range(3)]
    await asyncio.sleep(0)
    async with asyncio.timeout(2):
        await flux.stop()
        results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(result, FluxPerturbationError) for result in results), results
    assert gatekeeper.seen == ["block"]
    assert flux.state is FluxState.STOPPED
    blocker.cancel()
    await asyncio.gather(blocker, return_exceptions=True)
    await stream.aclose()


async def test_perturbation_in_progress_when_stopped_does_not_hang() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    stream = flux.start(TrackedSource([], gate=asyncio.Event()))
    blocker = await start_blocked(gatekeeper, flux)
    try:
        await flux.stop()
        async with asyncio.timeout(1):
            # Either a result or a typed error; what must not happen is waiting forever.
            with pytest.raises(FluxPerturbationError):
                await blocker
    finally:
        blocker.cancel()
        await asyncio.gather(blocker, return_exceptions=True)
        await stream.aclose()


async def test_pending_perturbations_fail_with_entropy_error_on_collapse() -> None:
    gatekeeper = Gatekeeper()
    # The blocker is the one event the budget allows.
    flux = Flux.lift(gatekeeper, FluxConfig(max_events=1))
    source = TrackedSource([], gate=asyncio.Event())
    stream = flux.start(source)
    blocker = await start_blocked(gatekeeper, flux)
    queued = [asyncio.create_task(flux.invoke(i)) for i in range(3)]
    await asyncio.sleep(0)
    gatekeeper.release.set()
    async with asyncio.timeout(2):
        assert await blocker == ("done", "block")
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert await collect(stream) == []  # collapse ends the output normally
    assert all(isinstance(result, FluxEntropyError) for result in results), results
    assert gatekeeper.seen == ["block"]
    assert flux.state is FluxState.COLLAPSED
    assert source.closed
    with pytest.raises(FluxStateError):
        await flux.invoke("late")


async def test_perturbation_after_the_budget_is_spent_fails_without_a_consumer() -> None:
    second_call = asyncio.Event()

    def agent_fn(x: int) -> int:
        if x == 1:
            second_call.set()
        return x

    # The second event spends the budget; its output waits for room in a 1-slot buffer.
    flux = Flux.lift(agent_fn, FluxConfig(max_events=2, buffer_size=1))
    stream = flux.start(TrackedSource(range(10)))
    try:
        async with asyncio.timeout(1):
            await second_call.wait()
        with pytest.raises(FluxEntropyError):
            async with asyncio.timeout(1):
                await flux.invoke(99)
    finally:
        await stream.aclose()


async def test_agent_error_in_a_perturbation_goes_to_the_caller() -> None:
    error = LookupError("no such thing")

    def agent_fn(x: str) -> str:
        if x == "bad":
            raise error
        return x.upper()

    flux = Flux.lift(agent_fn)
    gate = asyncio.Event()
    async with asyncio.timeout(2), flux.start(TrackedSource(["a"], gate=gate)) as stream:
        assert await anext(stream) == "A"
        with pytest.raises(LookupError) as excinfo:
            await flux.invoke("bad")
        assert excinfo.value is error
        # The flux is unharmed and keeps serving.
        assert flux.state.is_running
        assert await flux.invoke("ok") == "OK"
        gate.set()
        assert [item async for item in stream] == []
    assert flux.metrics().errors == 1
    assert flux.state is FluxState.STOPPED


async def test_cancelled_caller_waiting_in_the_queue_does_not_break_the_flux() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    gate = asyncio.Event()
    async with asyncio.timeout(2), flux.start(TrackedSource([], gate=gate)) as stream:
        blocker = await start_blocked(gatekeeper, flux)
        doomed = asyncio.create_task(flux.invoke("doomed"))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        gatekeeper.release.set()
        assert await blocker == ("done", "block")
        assert await flux.invoke("after") == ("done", "after")
        gate.set()
        assert [item async for item in stream] == []
    # A cancelled request is not processed on behalf of nobody.
    assert gatekeeper.seen == ["block", "after"]


async def test_cancelled_caller_while_its_perturbation_runs_does_not_break_the_flux() -> None:
    gatekeeper = Gatekeeper()
    flux = Flux.lift(gatekeeper)
    gate = asyncio.Event()
    source = TrackedSource([1, 2], gate=gate)
    async with asyncio.timeout(2), flux.start(source) as stream:
        assert await anext(stream) == ("done", 1)
        blocker = await start_blocked(gatekeeper, flux)
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        gatekeeper.release.set()
        assert await flux.invoke("next") == ("done", "next")
        gate.set()
        assert [item async for item in stream] == [("done", 2)]
    assert flux.state is FluxState.STOPPED
    assert other_tasks() == []


async def test_invoke_rejects_a_non_int_priority() -> None:
    flux = Flux.lift(lambda x: x)
    async with flux.start(TrackedSource([], gate=asyncio.Event())):
        with pytest.raises(TypeError):
            await flux.invoke(1, priority="high")  # type: ignore[arg-type]
