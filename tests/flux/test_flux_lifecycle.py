"""Flux lifecycle: states, illegal transitions, start/stop/reset, direct calls."""

from __future__ import annotations

import asyncio

import pytest

from agentflux import Flux, FluxConfig, FluxState, FluxStateError
from conftest import TrackedSource, collect, other_tasks, signals_until_stopped


def double(x: int) -> int:
    return 2 * x


async def test_new_flux_is_dormant() -> None:
    flux = Flux.lift(double)
    assert flux.state is FluxState.DORMANT
    assert flux.metrics().state is FluxState.DORMANT
    assert other_tasks() == []


async def test_normal_run_goes_flowing_then_stopped() -> None:
    flux = Flux.lift(double)
    observer = flux.observe()
    source = TrackedSource([1, 2, 3])
    stream = flux.start(source)
    assert flux.state is FluxState.FLOWING
    assert await collect(stream) == [2, 4, 6]
    assert flux.state is FluxState.STOPPED
    changes = [s.data["to"] for s in await signals_until_stopped(observer) if s.kind == "state_changed"]
    assert changes[0] == "flowing"
    assert changes[-1] == "stopped"
    assert source.closed


async def test_draining_while_work_is_in_flight_after_the_source_ended() -> None:
    release = asyncio.Event()

    async def slow(x: int) -> int:
        await release.wait()
        return x

    flux = Flux.lift(slow, FluxConfig(concurrency=2))
    observer = flux.observe()
    stream = flux.start(TrackedSource([7]))
    async with asyncio.timeout(2):
        async for signal in observer:
            if signal.kind == "state_changed" and signal.data["to"] == "draining":
                break
    assert flux.state is FluxState.DRAINING
    assert flux.state.is_running
    release.set()
    assert await collect(stream) == [7]
    assert flux.state is FluxState.STOPPED
    observer.close()


async def test_draining_path_of_state_changes() -> None:
    release = asyncio.Event()

    async def slow(x: int) -> int:
        await release.wait()
        return x

    flux = Flux.lift(slow, FluxConfig(concurrency=2))
    observer = flux.observe()
    stream = flux.start([1])
    # The state machine walks DORMANT -> FLOWING -> DRAINING -> STOPPED; release once draining.
    seen: list[str] = []
    async with asyncio.timeout(2):
        async for signal in observer:
            if signal.kind == "state_changed":
                seen.append(signal.data["to"])
                if signal.data["to"] == "draining":
                    release.set()
    assert seen == ["flowing", "draining", "stopped"]
    assert await collect(stream) == [1]


async def test_perturbed_while_a_perturbation_is_processed() -> None:
    release = asyncio.Event()
    inside = asyncio.Event()

    async def agent_fn(x: int) -> int:
        if x < 0:
            inside.set()
            await release.wait()
        return x

    flux = Flux.lift(agent_fn)
    async with asyncio.timeout(2), flux.start(TrackedSource([1], gate=asyncio.Event())) as stream:
        assert await anext(stream) == 1
        assert flux.state is FluxState.FLOWING
        perturbation = asyncio.create_task(flux.invoke(-1))
        await inside.wait()
        assert flux.state is FluxState.PERTURBED
        assert flux.state.is_running
        release.set()
        assert await perturbation == -1
        assert flux.state is FluxState.FLOWING


async def test_start_while_running_raises_naming_state_and_operation() -> None:
    flux = Flux.lift(double)
    first = TrackedSource([1], gate=asyncio.Event())
    second = TrackedSource([1])
    stream = flux.start(first)
    try:
        async with asyncio.timeout(1):
            assert await anext(stream) == 2
        with pytest.raises(FluxStateError) as excinfo:
            flux.start(second)
        assert excinfo.value.state == "FLOWING"
        assert excinfo.value.operation == "start"
        assert "FLOWING" in str(excinfo.value)
        assert "start" in str(excinfo.value)
        # The refused start touched neither the running stream nor the new source.
        assert flux.state is FluxState.FLOWING
        assert not second.started
    finally:
        await stream.aclose()
    assert first.closed


async def test_collapsed_flux_needs_reset() -> None:
    flux = Flux.lift(double, FluxConfig(max_events=2))
    assert await collect(flux.start(range(10))) == [0, 2]
    assert flux.state is FluxState.COLLAPSED
    with pytest.raises(FluxStateError) as excinfo:
        flux.start([1])
    assert excinfo.value.state == "COLLAPSED"
    assert excinfo.value.operation == "start"
    with pytest.raises(FluxStateError):
        await flux.invoke(1)
    flux.reset()
    assert flux.state is FluxState.DORMANT
    assert await collect(flux.start([5, 6])) == [10, 12]


async def test_reset_while_running_raises() -> None:
    flux = Flux.lift(double)
    stream = flux.start(TrackedSource(gate=asyncio.Event(), items=[]))
    try:
        with pytest.raises(FluxStateError) as excinfo:
            flux.reset()
        assert excinfo.value.state == "FLOWING"
        assert excinfo.value.operation == "reset"
        assert flux.state is FluxState.FLOWING
    finally:
        await stream.aclose()


async def test_reset_after_stop_clears_counters() -> None:
    flux = Flux.lift(double)
    assert await collect(flux.start(range(5))) == [0, 2, 4, 6, 8]
    assert flux.metrics().events_in == 5
    flux.reset()
    assert flux.state is FluxState.DORMANT
    assert flux.metrics().events_in == 0


async def test_stop_is_idempotent() -> None:
    flux = Flux.lift(double)
    await flux.stop()  # never started: nothing to do
    assert flux.state is FluxState.DORMANT
    source = TrackedSource(delay=0.001)
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        await flux.stop()
        await flux.stop()
    assert flux.state is FluxState.STOPPED
    assert source.closed
    assert other_tasks() == []
    await stream.aclose()
    await stream.aclose()
    async with asyncio.timeout(2):
        assert [item async for item in stream] == []
    await flux.stop()
    assert flux.state is FluxState.STOPPED


@pytest.mark.parametrize("when", ["dormant", "stopped"])
async def test_invoke_when_not_running_is_a_direct_call(when: str) -> None:
    callers: list[asyncio.Task[object] | None] = []

    async def record(x: int) -> int:
        callers.append(asyncio.current_task())
        return x + 1

    flux = Flux.lift(record)
    if when == "stopped":
        assert await collect(flux.start([1])) == [2]
        assert flux.state is FluxState.STOPPED
        callers.clear()
    assert await flux.invoke(41) == 42
    # A direct call runs in the caller's own task and starts nothing.
    assert callers == [asyncio.current_task()]
    assert flux.state is (FluxState.DORMANT if when == "dormant" else FluxState.STOPPED)
    assert other_tasks() == []


async def test_direct_invoke_propagates_agent_error() -> None:
    def boom(x: int) -> int:
        raise ArithmeticError(x)

    flux = Flux.lift(boom)
    with pytest.raises(ArithmeticError):
        await flux.invoke(1)
    assert flux.state is FluxState.DORMANT


async def test_awaiting_start_returns_the_stream() -> None:
    flux = Flux.lift(double)
    stream = await flux.start(TrackedSource([1, 2]))
    assert hasattr(stream, "__anext__")
    assert hasattr(stream, "aclose")
    async with asyncio.timeout(2), stream as same:
        assert same is stream
        assert [item async for item in same] == [2, 4]

    other = Flux.lift(double)
    plain = other.start([3])
    assert await plain is plain
    assert await collect(plain) == [6]


@pytest.mark.parametrize("source", [42, None, 3.5, object()])
async def test_non_iterable_source_raises_type_error_at_start(source: object) -> None:
    flux = Flux.lift(double)
    with pytest.raises(TypeError):
        flux.start(source)  # type: ignore[arg-type]
    assert flux.state is FluxState.DORMANT
    assert other_tasks() == []


async def test_sync_iterables_are_accepted() -> None:
    closed: list[bool] = []

    def numbers():  # type: ignore[no-untyped-def]
        try:
            yield from (1, 2, 3)
        finally:
            closed.append(True)

    assert await collect(Flux.lift(double).start([1, 2])) == [2, 4]
    assert await collect(Flux.lift(double).start(range(4))) == [0, 2, 4, 6]
    assert await collect(Flux.lift(double).start(x for x in "ab")) == ["aa", "bb"]
    assert await collect(Flux.lift(double).start(numbers())) == [2, 4, 6]
    assert closed == [True]


async def test_processing_begins_before_iteration() -> None:
    seen = asyncio.Event()
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        seen.set()
        return x

    flux = Flux.lift(record)
    stream = flux.start(TrackedSource([1], gate=asyncio.Event()))
    try:
        async with asyncio.timeout(1):
            await seen.wait()  # nobody iterates, yet the source event was processed
        assert calls == [1]
    finally:
        await stream.aclose()


async def test_invoke_right_after_start_is_served_without_a_consumer() -> None:
    flux = Flux.lift(double)
    source = TrackedSource([1, 2, 3], gate=asyncio.Event())
    stream = flux.start(source)
    try:
        async with asyncio.timeout(1):
            assert await flux.invoke(50) == 100
        assert flux.metrics().perturbations == 1
    finally:
        await stream.aclose()
    assert source.closed


async def test_restart_after_stop() -> None:
    flux = Flux.lift(double)
    first = TrackedSource()
    stream = flux.start(first)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        assert await anext(stream) == 2
    await flux.stop()
    assert first.closed
    assert flux.state is FluxState.STOPPED

    second = TrackedSource([10, 20])
    assert await collect(flux.start(second)) == [20, 40]
    assert flux.state is FluxState.STOPPED
    assert second.closed


async def test_restart_after_normal_end_counts_both_runs() -> None:
    flux = Flux.lift(double)
    assert await collect(flux.start([1, 2])) == [2, 4]
    assert await collect(flux.start([3])) == [6]
    assert flux.metrics().events_in == 3
