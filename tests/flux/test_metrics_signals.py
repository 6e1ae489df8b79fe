"""Metrics snapshots and observable signals."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxMetrics, FluxState, Signal
from conftest import TrackedSource, collect, signals_until_stopped

SPEC_METRIC_FIELDS = [
    "state",
    "events_in",
    "events_out",
    "errors",
    "dropped",
    "perturbations",
    "feedback_events",
    "semaphores_ejected",
    "semaphores_resumed",
    "entropy_remaining",
    "pressure",
    "flow",
    "turbulence",
    "latency_p50",
    "latency_p99",
]


def fails_on(bad: set[Any]) -> Any:
    def agent_fn(x: Any) -> Any:
        if x in bad:
            raise ValueError(x)
        return x

    return agent_fn


def test_metrics_has_the_spec_fields() -> None:
    names = {field.name for field in dataclasses.fields(FluxMetrics)}
    assert set(SPEC_METRIC_FIELDS) <= names


def test_metrics_snapshot_is_frozen() -> None:
    metrics = Flux.lift(lambda x: x).metrics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.events_in = 5  # type: ignore[misc]


def test_fresh_flux_metrics() -> None:
    metrics = Flux.lift(lambda x: x).metrics()
    assert metrics.state is FluxState.DORMANT
    assert (metrics.events_in, metrics.events_out, metrics.errors, metrics.dropped) == (0, 0, 0, 0)
    assert (metrics.perturbations, metrics.feedback_events) == (0, 0)
    assert (metrics.semaphores_ejected, metrics.semaphores_resumed) == (0, 0)
    assert metrics.entropy_remaining == 1.0
    assert (metrics.pressure, metrics.flow, metrics.turbulence) == (0.0, 0.0, 0.0)


async def test_counters_after_a_run() -> None:
    flux = Flux.lift(fails_on({0, 5}))
    assert await collect(flux.start(range(10))) == [1, 2, 3, 4, 6, 7, 8, 9]
    metrics = flux.metrics()
    assert metrics.state is FluxState.STOPPED
    assert metrics.events_in == 10
    assert metrics.events_out == 8
    assert metrics.errors == 2
    assert metrics.dropped == 0
    assert metrics.perturbations == 0


async def test_snapshot_does_not_change_afterwards() -> None:
    flux = Flux.lift(lambda x: x)
    before = flux.metrics()
    assert await collect(flux.start(range(3))) == [0, 1, 2]
    assert before.events_in == 0
    assert before.state is FluxState.DORMANT
    assert flux.metrics().events_in == 3


async def test_perturbations_are_counted() -> None:
    flux = Flux.lift(lambda x: x)
    gate = asyncio.Event()
    async with asyncio.timeout(2), flux.start(TrackedSource([1], gate=gate)) as stream:
        assert await anext(stream) == 1
        assert await flux.invoke(2) == 2
        assert await flux.invoke(3) == 3
        gate.set()
        assert [item async for item in stream] == []
    metrics = flux.metrics()
    assert metrics.perturbations == 2
    assert metrics.events_in == 3


async def test_pressure_with_a_full_buffer() -> None:
    fifth_call = asyncio.Event()

    def agent_fn(x: int) -> int:
        if x == 4:
            fifth_call.set()
        return x

    flux = Flux.lift(agent_fn, FluxConfig(buffer_size=4))
    stream = flux.start(TrackedSource(range(50)))
    try:
        async with asyncio.timeout(2):
            await fifth_call.wait()  # four outputs are buffered, nobody reads
            assert flux.metrics().pressure == 1.0
            assert [await anext(stream) for _ in range(2)] == [0, 1]
            assert 0.0 <= flux.metrics().pressure <= 1.0
    finally:
        await stream.aclose()


async def test_pressure_reflects_a_partly_filled_buffer() -> None:
    gate = asyncio.Event()
    done = asyncio.Event()

    def marker(x: int) -> int:
        if x == 1:
            done.set()
        return x

    flux = Flux.lift(marker, FluxConfig(buffer_size=8))
    stream = flux.start(TrackedSource([0, 1], gate=gate))
    try:
        async with asyncio.timeout(2):
            await done.wait()
            await asyncio.sleep(0)
            assert flux.metrics().pressure == pytest.approx(2 / 8)
            assert [await anext(stream) for _ in range(2)] == [0, 1]
            assert flux.metrics().pressure == 0.0
    finally:
        await stream.aclose()


async def test_pressure_counts_outputs_buffered_after_the_source_ended() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(buffer_size=4))
    observer = flux.observe()
    stream = flux.start(TrackedSource(range(4)))
    try:
        await signals_until_stopped(observer)  # the producer is done; four outputs wait
        assert flux.metrics().pressure == 1.0
    finally:
        await stream.aclose()


@pytest.mark.parametrize(("bad", "expected"), [(set(), 0.0), ({0, 4, 8, 12, 16}, 0.25), (set(range(20)), 1.0)])
async def test_turbulence_is_the_error_fraction(bad: set[int], expected: float) -> None:
    flux = Flux.lift(fails_on(bad))
    await collect(flux.start(range(20)))
    turbulence = flux.metrics().turbulence
    assert 0.0 <= turbulence <= 1.0
    assert turbulence == pytest.approx(expected)


async def test_latency_percentiles_with_a_slow_agent() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    flux = Flux.lift(slow)
    await collect(flux.start(range(5)))
    metrics = flux.metrics()
    assert metrics.latency_p50 >= 0.009
    assert metrics.latency_p99 >= metrics.latency_p50
    assert metrics.latency_p99 < 1.0


async def test_flow_is_positive_while_running() -> None:
    flux = Flux.lift(lambda x: x)
    async with asyncio.timeout(2), flux.start(TrackedSource(delay=0.0005)) as stream:
        for _ in range(50):
            await anext(stream)
        metrics = flux.metrics()
        assert metrics.state is FluxState.FLOWING
        assert metrics.flow > 0


async def test_counters_reset() -> None:
    flux = Flux.lift(fails_on({1}))
    await collect(flux.start(range(3)))
    assert flux.metrics().errors == 1
    assert len(flux.dead_letters) == 1
    flux.reset()
    metrics = flux.metrics()
    assert (metrics.events_in, metrics.errors, metrics.turbulence) == (0, 0, 0.0)
    assert flux.dead_letters == ()


# ------------------------------------------------------------------- signals


async def test_observe_receives_the_signal_kinds_and_ends_after_stopped() -> None:
    flux = Flux.lift(fails_on({0}), FluxConfig(buffer_size=1, drop_policy="drop_newest", agent_id="watched"))
    observer = flux.observe()
    before = time.time()
    stream = flux.start(TrackedSource(range(3)))
    signals = await signals_until_stopped(observer)
    after = time.time()
    assert await collect(stream) == [1]  # 2 was dropped: the buffer held 1

    kinds = [signal.kind for signal in signals]
    assert {"started", "state_changed", "error", "dropped", "stopped"} <= set(kinds)
    assert kinds[-1] == "stopped"
    assert kinds.count("stopped") == 1
    assert kinds.count("error") == 1
    assert kinds.count("dropped") == 1
    for signal in signals:
        assert isinstance(signal, Signal)
        assert signal.flux_id == "watched"
        assert before <= signal.at <= after
    ats = [signal.at for signal in signals]
    assert ats == sorted(ats)
    changes = [s.data["to"] for s in signals if s.kind == "state_changed"]
    assert changes[0] == FluxState.FLOWING.value
    assert changes[-1] == FluxState.STOPPED.value


async def test_observe_only_sees_signals_after_the_call() -> None:
    flux = Flux.lift(lambda x: x)
    await collect(flux.start([1]))
    observer = flux.observe()
    stream = flux.start([2])
    signals = await signals_until_stopped(observer)
    assert await collect(stream) == [2]
    assert [s.kind for s in signals].count("stopped") == 1
    assert "started" in [s.kind for s in signals]


async def test_observe_ends_after_stop() -> None:
    flux = Flux.lift(lambda x: x)
    observer = flux.observe()
    source = TrackedSource(delay=0.001)
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await anext(stream) == 0
        await flux.stop()
    signals = await signals_until_stopped(observer)
    assert signals[-1].kind == "stopped"


async def test_observe_reports_collapse() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(max_events=2))
    observer = flux.observe()
    assert await collect(flux.start(range(5))) == [0, 1]
    signals = await signals_until_stopped(observer)
    changes = [s.data["to"] for s in signals if s.kind == "state_changed"]
    assert changes[-1] == FluxState.COLLAPSED.value
    assert signals[-1].kind == "stopped"


async def test_slow_observer_loses_oldest_signals_without_slowing_the_flux() -> None:
    flux = Flux.lift(fails_on(set(range(200))))
    observer = flux.observe(maxsize=3)
    complete = flux.observe()
    # The stream runs to its end while the small observer is never read.
    async with asyncio.timeout(2):
        assert await collect(flux.start(range(200))) == []
    everything = await signals_until_stopped(complete)
    kept = await signals_until_stopped(observer)
    assert len(everything) > 200
    assert len(kept) == 3
    assert kept == everything[-3:]  # the newest survive, the oldest were dropped
    assert kept[-1].kind == "stopped"


async def test_closing_an_observer_ends_it() -> None:
    flux = Flux.lift(lambda x: x)
    observer = flux.observe()
    observer.close()
    async with asyncio.timeout(1):
        assert [signal async for signal in observer] == []


async def test_no_signals_when_disabled_but_observers_still_end() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(emit_pheromones=False))
    observer = flux.observe()
    assert await collect(flux.start([1, 2])) == [1, 2]
    async with asyncio.timeout(1):  # it ends by itself: the stop is the one thing delivered
        assert [signal.kind async for signal in observer] == ["stopped"]


async def test_signals_are_deposited_into_a_pheromone_field() -> None:
    class Field:
        def __init__(self) -> None:
            self.deposits: list[tuple[str, float, Any]] = []

        def deposit(self, kind: str, intensity: float, payload: Any) -> None:
            self.deposits.append((kind, intensity, payload))

    field = Field()
    flux = Flux.lift(lambda x: x, FluxConfig(pheromone_field=field))
    assert await collect(flux.start([1])) == [1]
    kinds = [kind for kind, _, _ in field.deposits]
    assert any("started" in kind for kind in kinds)
    assert any("stopped" in kind for kind in kinds)
