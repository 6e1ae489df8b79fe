"""Pipelines: ``a | b | c``, threading perturbations, errors, and the functor laws."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux import Agent, Flux, FluxConfig, FluxPipeline, FluxState, FluxStateError, Identity, agent
from conftest import TrackedSource, collect, drain_into, other_tasks


async def test_three_stage_pipeline_outputs() -> None:
    pipeline = Flux.lift(lambda x: x + 1) | Flux.lift(lambda x: x * 2) | Flux.lift(lambda x: x - 3)
    assert isinstance(pipeline, FluxPipeline)
    source = TrackedSource(range(10))
    assert await collect(pipeline.start(source)) == [(x + 1) * 2 - 3 for x in range(10)]
    assert source.closed


async def test_pipelines_compose_with_pipelines() -> None:
    left = Flux.lift(lambda x: x + 1) | Flux.lift(lambda x: x * 2)
    right = Flux.lift(lambda x: x - 3) | Flux.lift(str)
    assert await collect((left | right).start([1, 2])) == ["1", "3"]


async def test_each_stage_ends_stopped_after_a_normal_run() -> None:
    stages = [Flux.lift(lambda x: x), Flux.lift(lambda x: x), Flux.lift(lambda x: x)]
    pipeline = stages[0] | stages[1] | stages[2]
    assert await collect(pipeline.start(range(5))) == list(range(5))
    assert [stage.state for stage in stages] == [FluxState.STOPPED] * 3


async def test_awaiting_pipeline_start_returns_the_stream() -> None:
    pipeline = Flux.lift(lambda x: x) | Flux.lift(lambda x: -x)
    stream = await pipeline.start([1, 2])
    assert await collect(stream) == [-1, -2]


async def test_pipeline_invoke_when_dormant_is_direct() -> None:
    pipeline = Flux.lift(lambda x: x + 1) | Flux.lift(lambda x: x * 10)
    assert await pipeline.invoke(4) == 50
    assert other_tasks() == []


async def test_pipeline_invoke_threads_perturbations_through_running_stages() -> None:
    stages = [Flux.lift(lambda x: x + 1), Flux.lift(lambda x: x * 10), Flux.lift(str)]
    pipeline = stages[0] | stages[1] | stages[2]
    gate = asyncio.Event()
    async with asyncio.timeout(2), pipeline.start(TrackedSource([1], gate=gate)) as stream:
        assert await anext(stream) == "20"
        assert await pipeline.invoke(4) == "50"
        # The perturbation result did not leak into the stream.
        gate.set()
        assert [item async for item in stream] == []
    assert [stage.metrics().perturbations for stage in stages] == [1, 1, 1]


async def test_error_in_a_middle_stage_propagates_to_the_consumer() -> None:
    error = RuntimeError("stage two broke")

    def fragile(x: int) -> int:
        if x == 5:
            raise error
        return x

    stages = [Flux.lift(lambda x: x), Flux.lift(fragile, FluxConfig(on_error="raise")), Flux.lift(lambda x: x)]
    pipeline = stages[0] | stages[1] | stages[2]
    source = TrackedSource(range(100))
    received: list[int] = []
    with pytest.raises(RuntimeError, match="stage two broke") as excinfo:
        await drain_into(pipeline.start(source), received)
    assert excinfo.value is error
    assert received == [0, 1, 2, 3, 4]
    assert source.closed
    assert [stage.state for stage in stages] == [FluxState.STOPPED] * 3


async def test_error_in_the_first_stage_propagates_to_the_consumer() -> None:
    def fragile(x: int) -> int:
        if x == 2:
            raise KeyError("first")
        return x

    pipeline = Flux.lift(fragile, FluxConfig(on_error="raise")) | Flux.lift(lambda x: x * 2)
    source = TrackedSource(range(10))
    with pytest.raises(KeyError, match="first"):
        await collect(pipeline.start(source))
    assert source.closed


async def test_source_error_propagates_through_every_stage() -> None:
    source = TrackedSource([1], fail_with=ConnectionError("feed lost"))
    pipeline = Flux.lift(lambda x: x) | Flux.lift(lambda x: x)
    with pytest.raises(ConnectionError, match="feed lost"):
        await collect(pipeline.start(source))


async def test_skip_in_a_stage_drops_only_that_event() -> None:
    def fragile(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x

    first = Flux.lift(fragile)
    pipeline = first | Flux.lift(lambda x: x * 2)
    assert await collect(pipeline.start(range(7))) == [2, 4, 8, 10]
    assert [letter.event for letter in first.dead_letters] == [0, 3, 6]


async def test_pipeline_start_refuses_when_a_stage_is_running() -> None:
    first, second = Flux.lift(lambda x: x), Flux.lift(lambda x: x)
    busy = second.start(TrackedSource([], gate=asyncio.Event()))
    try:
        with pytest.raises(FluxStateError) as excinfo:
            (first | second).start([1])
        assert excinfo.value.operation == "start"
        assert first.state is FluxState.DORMANT  # nothing was started
    finally:
        await busy.aclose()


def test_pipeline_rejects_non_flux_operands() -> None:
    with pytest.raises(TypeError):
        Flux.lift(lambda x: x) | 42  # type: ignore[operator]


def test_unlift_returns_the_inner_agent() -> None:
    inner = agent(lambda x: x)
    assert Flux.unlift(Flux.lift(inner)) is inner
    assert Flux.unlift(Flux.lift(Identity)) is Identity
    wrapped = Flux.unlift(Flux.lift(lambda x: x))
    assert isinstance(wrapped, Agent)


def test_unlift_rejects_non_flux() -> None:
    with pytest.raises(TypeError):
        Flux.unlift(agent(lambda x: x))  # type: ignore[arg-type]


def test_is_flux() -> None:
    flux = Flux.lift(lambda x: x)
    assert Flux.is_flux(flux)
    assert Flux.is_flux(flux | Flux.lift(lambda x: x))
    assert not Flux.is_flux(agent(lambda x: x))
    assert not Flux.is_flux(Identity)
    assert not Flux.is_flux(42)
    assert not Flux.is_flux(None)


def test_lift_rejects_non_agents() -> None:
    with pytest.raises(TypeError):
        Flux.lift(42)


# ------------------------------------------------------------- functor laws

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "floordiv": lambda x, c: x // c if c else x,
}
arithmetic = st.tuples(st.sampled_from(sorted(OPERATIONS)), st.integers(-9, 9), st.booleans())
int_lists = st.lists(st.integers(-1000, 1000), max_size=25)


def build(spec: tuple[str, int, bool]) -> tuple[Agent[int, int], Callable[[int], int]]:
    name, constant, is_async = spec
    op = OPERATIONS[name]

    def plain(x: int) -> int:
        return op(x, constant)

    if is_async:

        async def run(x: int) -> int:
            await asyncio.sleep(0)
            return plain(x)

        return agent(run), plain
    return agent(plain), plain


@settings(max_examples=40, deadline=None)
@given(f=arithmetic, g=arithmetic, xs=int_lists, concurrency=st.sampled_from([1, 3]))
async def test_lift_preserves_composition(
    f: tuple[str, int, bool], g: tuple[str, int, bool], xs: list[int], concurrency: int
) -> None:
    (fa, fp), (ga, gp) = build(f), build(g)
    config = FluxConfig(concurrency=concurrency)
    composed = await collect(Flux.lift(fa >> ga, config).start(TrackedSource(xs)))
    piped = await collect((Flux.lift(fa, config) | Flux.lift(ga, config)).start(TrackedSource(xs)))
    assert composed == piped == [gp(fp(x)) for x in xs]
    assert other_tasks() == []


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=25))
async def test_lift_of_identity_passes_the_source_unchanged(xs: list[Any]) -> None:
    assert await collect(Flux.lift(Identity).start(TrackedSource(xs))) == xs
    assert other_tasks() == []


async def test_lift_of_identity_passes_the_very_same_objects() -> None:
    items = [object() for _ in range(5)]
    outputs = await collect(Flux.lift(Identity).start(items))
    assert all(out is item for out, item in zip(outputs, items, strict=True))
