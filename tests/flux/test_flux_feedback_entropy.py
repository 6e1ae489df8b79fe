"""Feedback (outputs re-entering as inputs) and entropy (event budgets that collapse)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, FluxState, FluxStateError
from conftest import TrackedSource, collect


def inc(x: int) -> int:
    return x + 1


async def test_full_feedback_makes_exactly_max_hops_extra_events() -> None:
    flux = Flux.lift(inc, FluxConfig(feedback_fraction=1.0, max_feedback_hops=3))
    outputs = await collect(flux.start([0, 100]))
    # Each source item: its own output plus three more laps through the agent.
    assert sorted(outputs) == [1, 2, 3, 4, 101, 102, 103, 104]
    assert [x for x in outputs if x < 100] == [1, 2, 3, 4]
    assert [x for x in outputs if x > 100] == [101, 102, 103, 104]
    metrics = flux.metrics()
    assert metrics.feedback_events == 6
    assert metrics.events_in == 8
    assert flux.state is FluxState.STOPPED


async def test_zero_hops_means_no_feedback() -> None:
    flux = Flux.lift(inc, FluxConfig(feedback_fraction=1.0, max_feedback_hops=0))
    assert await collect(flux.start([0, 10])) == [1, 11]
    assert flux.metrics().feedback_events == 0


async def test_feedback_transform_is_applied_before_reentry() -> None:
    flux = Flux.lift(inc, FluxConfig(feedback_fraction=1.0, max_feedback_hops=2, feedback_transform=lambda y: y * 10))
    assert await collect(flux.start([0])) == [1, 11, 111]
    assert flux.metrics().feedback_events == 2


async def test_no_feedback_by_default() -> None:
    flux = Flux.lift(inc)
    assert await collect(flux.start(range(5))) == [1, 2, 3, 4, 5]
    assert flux.metrics().feedback_events == 0


async def run_seeded(seed: int) -> tuple[list[Any], int]:
    config = FluxConfig(feedback_fraction=0.5, max_feedback_hops=4, seed=seed, feedback_transform=lambda y: y * 1000)
    flux = Flux.lift(inc, config)
    outputs = await collect(flux.start(range(40)))
    return outputs, flux.metrics().feedback_events


async def test_seeded_feedback_is_reproducible() -> None:
    first, first_count = await run_seeded(1234)
    second, second_count = await run_seeded(1234)
    assert first == second
    assert first_count == second_count
    assert len(first) == 40 + first_count
    # A fraction of one half: some outputs come back, not all of them.
    assert 5 < first_count < 40 * 4


async def test_different_seeds_make_different_decisions() -> None:
    first, _ = await run_seeded(1)
    other, _ = await run_seeded(2)
    assert first != other


async def test_max_events_collapses_after_exactly_n_events() -> None:
    flux = Flux.lift(inc, FluxConfig(max_events=7))
    source = TrackedSource(range(1000))
    outputs = await collect(flux.start(source))  # ends normally, no exception
    assert outputs == [1, 2, 3, 4, 5, 6, 7]
    assert flux.state is FluxState.COLLAPSED
    metrics = flux.metrics()
    assert metrics.state is FluxState.COLLAPSED
    assert metrics.events_in == 7
    assert source.closed


async def test_max_events_counts_feedback_events() -> None:
    flux = Flux.lift(inc, FluxConfig(max_events=5, feedback_fraction=1.0, max_feedback_hops=10))
    assert await collect(flux.start([0, 100])) == [1, 2, 3, 4, 5]
    assert flux.state is FluxState.COLLAPSED


async def test_max_events_counts_perturbations() -> None:
    flux = Flux.lift(inc, FluxConfig(max_events=3))
    source = TrackedSource([], gate=asyncio.Event())
    stream = flux.start(source)
    async with asyncio.timeout(2):
        assert await flux.invoke(1) == 2
        assert await flux.invoke(2) == 3
        assert await flux.invoke(3) == 4
        assert await collect(stream) == []
    assert flux.state is FluxState.COLLAPSED
    with pytest.raises(FluxStateError):
        await flux.invoke(4)
    assert source.closed


async def test_max_events_with_concurrency_processes_exactly_n() -> None:
    calls: list[int] = []

    async def record(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.001)
        return x

    flux = Flux.lift(record, FluxConfig(max_events=10, concurrency=4))
    outputs = await collect(flux.start(range(100)))
    assert len(calls) == 10
    assert outputs == list(range(10))
    assert flux.state is FluxState.COLLAPSED


async def test_entropy_decay_collapses_when_the_budget_is_spent() -> None:
    flux = Flux.lift(inc, FluxConfig(entropy_budget=1.0, entropy_decay=0.01))
    outputs = await collect(flux.start(range(1000)))
    assert outputs == [x + 1 for x in range(100)]
    assert flux.state is FluxState.COLLAPSED
    metrics = flux.metrics()
    assert metrics.state is FluxState.COLLAPSED
    assert metrics.entropy_remaining == pytest.approx(0.0, abs=1e-9)


async def test_entropy_remaining_reports_the_unspent_budget() -> None:
    flux = Flux.lift(inc, FluxConfig(entropy_budget=2.0, entropy_decay=0.25))
    assert flux.metrics().entropy_remaining == pytest.approx(2.0)
    assert await collect(flux.start(range(3))) == [1, 2, 3]
    assert flux.state is FluxState.STOPPED
    assert flux.metrics().entropy_remaining == pytest.approx(2.0 - 0.75)


async def test_reset_restores_the_budget() -> None:
    flux = Flux.lift(inc, FluxConfig(max_events=3))
    assert await collect(flux.start(range(10))) == [1, 2, 3]
    assert flux.state is FluxState.COLLAPSED
    flux.reset()
    assert await collect(flux.start(range(10, 20))) == [11, 12, 13]
    assert flux.state is FluxState.COLLAPSED


async def test_defaults_never_bound_a_stream() -> None:
    flux = Flux.lift(inc)
    outputs = await collect(flux.start(TrackedSource(range(5000))))
    assert len(outputs) == 5000
    assert outputs[-1] == 5000
    assert flux.state is FluxState.STOPPED
    assert flux.metrics().entropy_remaining == pytest.approx(1.0)
