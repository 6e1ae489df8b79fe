"""An agent may call ``invoke`` (or ``resolve``) of the flux it runs in.

Before, such a call queued as a perturbation and waited for a free agent slot; the slot
it waited for was held by the very call waiting on it, so once nesting reached
``concurrency`` (at concurrency 1, the first nested call) the stream hung for good. A
nested call now runs at once in its caller's slot, also across fluxes that call each
other, and still counts toward the event budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentflux import (
    Flux,
    FluxAgent,
    FluxConfig,
    FluxEntropyError,
    FluxState,
    SemaphoreMixin,
    SemaphoreReason,
    SemaphoreToken,
)
from agentflux.flux._run import held_runs
from conftest import collect

DEADLINE = 2.0  # seconds: a nested call is served at once or the test fails


async def idle() -> AsyncIterator[int]:
    await asyncio.Event().wait()  # a source that never yields: only perturbations run
    yield 0  # pragma: no cover


class Countdown:
    """``invoke(n)`` returns ``n`` after calling its own flux with ``n - 1`` down to 0."""

    name = "countdown"

    def __init__(self) -> None:
        self.flux: FluxAgent[int, int] | None = None
        self.deepest = 0

    async def invoke(self, n: int) -> int:
        assert self.flux is not None
        self.deepest = max(self.deepest, n)
        if n == 0:
            return 0
        return 1 + await self.flux.invoke(n - 1)


def countdown_flux(concurrency: int, **config: Any) -> tuple[Countdown, FluxAgent[int, int]]:
    agent = Countdown()
    flux = Flux.lift(agent, FluxConfig(concurrency=concurrency, **config))
    agent.flux = flux
    return agent, flux


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_an_agent_invoking_its_own_flux_from_a_stream_event_is_served_in_its_slot(concurrency: int) -> None:
    agent, flux = countdown_flux(concurrency)
    depth = concurrency + 4  # deeper than there are slots
    stream = flux.start([depth, 2])
    outputs = await collect(stream, DEADLINE)
    assert sorted(outputs) == sorted([depth, 2])
    assert agent.deepest == depth
    metrics = flux.metrics()
    assert metrics.perturbations == depth + 2  # the nested calls are perturbations
    assert metrics.events_in == 2 + depth + 2


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_nested_call_from_a_perturbation_is_served_too(concurrency: int) -> None:
    _agent, flux = countdown_flux(concurrency)
    stream = flux.start(idle())
    try:
        # Served in the caller's task (a slot is free) and, with every slot busy, by the run.
        results = await asyncio.wait_for(
            asyncio.gather(*(flux.invoke(concurrency + 3) for _ in range(concurrency + 2))), DEADLINE
        )
        assert results == [concurrency + 3] * (concurrency + 2)
    finally:
        await flux.stop()
        await stream.aclose()


async def test_fluxes_calling_each_other_in_a_cycle_do_not_deadlock() -> None:
    calls: list[str] = []
    fluxes: dict[str, FluxAgent[int, int]] = {}

    class PingPong:
        def __init__(self, me: str, other: str) -> None:
            self.name = me
            self.other = other

        async def invoke(self, n: int) -> int:
            calls.append(f"{self.name}{n}")
            if n == 0:
                return 0
            return 1 + await fluxes[self.other].invoke(n - 1)

    fluxes["a"] = Flux.lift(PingPong("a", "b"), FluxConfig(concurrency=1))
    fluxes["b"] = Flux.lift(PingPong("b", "a"), FluxConfig(concurrency=1))
    b_stream = fluxes["b"].start(idle())
    try:
        outputs = await collect(fluxes["a"].start([5]), DEADLINE)
    finally:
        await fluxes["b"].stop()
        await b_stream.aclose()
    assert outputs == [5]
    assert calls == ["a5", "b4", "a3", "b2", "a1", "b0"]


async def test_nested_calls_count_toward_the_event_budget() -> None:
    _agent, flux = countdown_flux(1, max_events=3)
    assert await collect(flux.start([10]), DEADLINE) == []
    metrics = flux.metrics()
    # The stream event and two nested calls ran; the third nested call found the budget spent.
    assert (metrics.events_in, metrics.perturbations, metrics.state) == (3, 2, FluxState.COLLAPSED)
    (dead,) = flux.dead_letters
    assert dead.event == 10
    assert isinstance(dead.error, FluxEntropyError)


async def test_a_nested_call_that_fails_raises_in_its_caller_and_the_stream_flows_on() -> None:
    class Fails:
        name = "fails"
        flux: FluxAgent[int, Any] | None = None

        async def invoke(self, x: int) -> Any:
            assert self.flux is not None
            if x < 0:
                raise ValueError("nested went wrong")
            try:
                await self.flux.invoke(-1)
            except ValueError as exc:
                return str(exc)
            return "not reached"  # pragma: no cover

    agent = Fails()
    flux = Flux.lift(agent, FluxConfig(concurrency=1))
    agent.flux = flux
    outputs = await collect(flux.start([1, 2]), DEADLINE)
    assert outputs == ["nested went wrong", "nested went wrong"]
    assert flux.metrics().errors == 2


async def test_a_task_spawned_outside_any_agent_call_still_queues_as_a_perturbation() -> None:
    """Only code inside an agent call is nested: a caller outside waits its turn as before."""
    _agent, flux = countdown_flux(1)
    stream = flux.start(idle())
    try:
        assert held_runs.get() == ()
        assert await asyncio.wait_for(flux.invoke(0), DEADLINE) == 0
        run = flux._run
        assert run is not None
        assert not run.holds_slot()
    finally:
        await flux.stop()
        await stream.aclose()


class SelfResolver(SemaphoreMixin):
    """Event 0 asks a human; any other event answers the oldest pending token itself."""

    name = "self-resolver"

    def __init__(self) -> None:
        self.flux: FluxAgent[int, Any] | None = None
        self.resumed: list[Any] = []

    async def invoke(self, x: int) -> Any:
        assert self.flux is not None
        if x == 0:
            return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "approve?", {"x": x})
        (token,) = await self.flux.purgatory.list_pending()
        result = await self.flux.resolve(token.id, f"yes from {x}")
        return "asked again" if isinstance(result, SemaphoreToken) else result

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        self.resumed.append(human_input)
        return f"resumed: {human_input}"


async def test_an_agent_resolving_a_token_of_its_own_flux_resumes_it_in_its_slot() -> None:
    agent = SelfResolver()
    flux = Flux.lift(agent, FluxConfig(concurrency=1))
    agent.flux = flux
    outputs = await collect(flux.start([0, 1]), DEADLINE)
    # The resumption's result joins the stream and is also what resolve() returned.
    assert outputs == ["resumed: yes from 1", "resumed: yes from 1"]
    assert agent.resumed == ["yes from 1"]
    assert await flux.purgatory.list_pending() == []
    assert flux.metrics().semaphores_resumed == 1


async def test_a_nested_resume_asking_again_parks_the_new_token() -> None:
    class AsksTwice(SelfResolver):
        async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
            self.resumed.append(human_input)
            if len(self.resumed) == 1:
                return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "again?", {"x": 0})
            return "done"

    agent = AsksTwice()
    flux = Flux.lift(agent, FluxConfig(concurrency=1))
    agent.flux = flux
    outputs = await collect(flux.start([0, 1, 2]), DEADLINE)
    assert outputs == ["asked again", "done", "done"]  # the first resolve() returned the new token
    assert agent.resumed == ["yes from 1", "yes from 2"]
