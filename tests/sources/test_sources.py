"""Source combinators: iterables, streams, timers, map/filter/take and the fair merge (SPEC 3, 10)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import pytest

from agentflux import Flux
from agentflux.sources import (
    countdown,
    filtered,
    from_iterable,
    from_stream,
    mapped,
    merged,
    periodic,
    take,
)

from ._helpers import Tracked, drain, run_in_virtual_time, settle


async def read_into(stream: Any, outputs: list[Any]) -> None:
    """Read ``stream`` into ``outputs`` until it ends or fails (bounded), closing it after."""
    async with asyncio.timeout(2), aclosing(stream):
        async for item in stream:
            outputs.append(item)


# -------------------------------------------------------------------------- from_iterable


async def test_from_iterable_yields_every_item() -> None:
    assert await drain(from_iterable([1, 2, 3])) == [1, 2, 3]
    assert await drain(from_iterable(range(0))) == []
    assert await drain(from_iterable("ab")) == ["a", "b"]


async def test_from_iterable_closes_a_generator_when_the_consumer_stops_early() -> None:
    finalized = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            finalized.append(True)

    async with aclosing(from_iterable(numbers())) as source:
        assert await anext(source) == 0
        assert await anext(source) == 1
    assert finalized == [True]


async def test_from_iterable_is_a_flux_source() -> None:
    flux = Flux.lift(lambda x: x + 1)
    assert await drain(flux.start(from_iterable(range(5)))) == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- from_stream


async def test_from_stream_yields_every_item_and_closes_the_inner_stream() -> None:
    inner = Tracked([1, 2, 3])
    assert await drain(from_stream(inner)) == [1, 2, 3]
    assert inner.finalized


async def test_from_stream_closes_the_inner_stream_when_the_consumer_stops_early() -> None:
    inner = Tracked(range(100))
    async with aclosing(from_stream(inner)) as source:
        assert await anext(source) == 0
        assert not inner.finalized
    assert inner.finalized
    assert inner.yielded == [0]


async def test_from_stream_closes_a_blocked_inner_stream_when_the_consumer_stops() -> None:
    inner = Tracked(["only"], then_block=True)
    async with aclosing(from_stream(inner)) as source:
        assert await anext(source) == "only"
        pending = asyncio.create_task(anext(source))
        await settle()
        assert not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    assert inner.finalized


# ------------------------------------------------------------------------------- periodic
#
# One test runs on the real clock; the exact timing properties run on a virtual clock
# (``run_in_virtual_time``), where they are deterministic even on a loaded machine.


async def test_periodic_on_the_real_clock_keeps_to_its_grid_without_drift() -> None:
    interval, ticks_wanted = 0.002, 400
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[int, float]] = []
    start = loop.time()
    async with aclosing(periodic(interval)) as ticks:
        async for tick in ticks:
            arrivals.append((tick, loop.time() - start))
            if tick >= ticks_wanted - 1:
                break
    numbers = [tick for tick, _ in arrivals]
    assert numbers[0] == 0
    assert all(b > a for a, b in itertools.pairwise(numbers)), "tick numbers must increase"
    for tick, at in arrivals:
        assert at >= tick * interval - 0.001, f"tick {tick} came early, at {at:.4f}s"
    # No drift: tick k arrives right after k * interval however many ticks came before, so
    # lateness does not accumulate (a sleep(interval) loop is 0.1-0.5 s late after 400 ticks
    # here). A busy machine can make single wake-ups late, so look at the typical lateness
    # of the last ticks, not at the worst one.
    lateness = [at - tick * interval for tick, at in arrivals]
    recent = statistics.median(lateness[-50:])
    assert recent < 0.04, f"ticks drifted: the last ones are typically {recent:.4f}s late"
    assert arrivals[-1][1] >= (ticks_wanted - 1) * interval - 0.001


def test_periodic_ticks_are_consecutive_and_on_time_for_a_consumer_that_keeps_up() -> None:
    interval, ticks_wanted = 0.002, 500

    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        arrivals = []
        async with aclosing(periodic(interval)) as ticks:
            async for tick in ticks:
                arrivals.append((tick, loop.time() - start))
                if len(arrivals) == ticks_wanted:
                    break
                await asyncio.sleep(0.3 * interval)  # the consumer's own work takes time
        return arrivals

    arrivals = run_in_virtual_time(main)
    assert [tick for tick, _ in arrivals] == list(range(ticks_wanted))
    for tick, at in arrivals:
        # The consumer's work does not push later ticks back: no drift at all.
        assert at == pytest.approx(tick * interval, abs=1e-9), f"tick {tick} at {at}"


def test_periodic_skips_the_ticks_a_slow_consumer_missed() -> None:
    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        arrivals = []
        async with aclosing(periodic(1.0)) as ticks:
            async for tick in ticks:
                arrivals.append((tick, loop.time() - start))
                if len(arrivals) == 5:
                    break
                await asyncio.sleep(3.5)  # a slow consumer: three and a half ticks per item
        return arrivals

    arrivals = run_in_virtual_time(main)
    numbers = [tick for tick, _ in arrivals]
    assert numbers == [0, 3, 7, 10, 14], "the missed ticks must be skipped, and no more"
    for tick, at in arrivals:
        assert tick <= at < tick + 1  # the tick number says where on the grid we are


def test_periodic_count_limits_the_ticks() -> None:
    async def main(count: int) -> list[int]:
        async with aclosing(periodic(0.5, count=count)) as ticks:
            return [tick async for tick in ticks]

    assert run_in_virtual_time(lambda: main(5)) == [0, 1, 2, 3, 4]
    assert run_in_virtual_time(lambda: main(1)) == [0]
    assert run_in_virtual_time(lambda: main(0)) == []


def test_periodic_ends_right_after_its_last_tick() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with aclosing(periodic(60.0, count=3)) as ticks:
            assert [tick async for tick in ticks] == [0, 1, 2]
        return loop.time() - start

    assert run_in_virtual_time(main) == pytest.approx(2 * 60.0)  # not 3 * 60


# ------------------------------------------------------------------------------ countdown


def test_countdown_yields_n_down_to_zero_one_per_interval() -> None:
    async def main() -> tuple[list[tuple[int, float]], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with aclosing(countdown(5, interval=2.0)) as steps:
            arrivals = [(step, loop.time() - start) async for step in steps]
        return arrivals, loop.time() - start

    arrivals, total = run_in_virtual_time(main)
    assert arrivals == [(5, 0.0), (4, 2.0), (3, 4.0), (2, 6.0), (1, 8.0), (0, 10.0)]
    assert total == pytest.approx(10.0)  # ends right after the last step


def test_countdown_does_not_drift_behind_a_slow_consumer() -> None:
    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        arrivals = []
        async with aclosing(countdown(3, interval=1.0)) as steps:
            async for step in steps:
                arrivals.append((step, loop.time() - start))
                await asyncio.sleep(0.75)
        return arrivals

    assert run_in_virtual_time(main) == [(3, 0.0), (2, 1.0), (1, 2.0), (0, 3.0)]


async def test_countdown_on_the_real_clock() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aclosing(countdown(3, interval=0.005)) as steps:
        arrivals = [(step, loop.time() - start) async for step in steps]
    assert [step for step, _ in arrivals] == [3, 2, 1, 0]
    for index, (_, at) in enumerate(arrivals):
        assert at >= index * 0.005 - 0.001


async def test_countdown_of_zero_yields_only_zero_at_once() -> None:
    async with asyncio.timeout(1), aclosing(countdown(0, interval=60.0)) as steps:
        assert [step async for step in steps] == [0]


# ------------------------------------------------------------------------ mapped, filtered


def double(x: int) -> int:
    return x * 2


async def double_async(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def is_even(x: int) -> bool:
    return x % 2 == 0


async def is_even_async(x: int) -> bool:
    await asyncio.sleep(0)
    return x % 2 == 0


@pytest.mark.parametrize("fn", [double, double_async], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["list", "async"])
async def test_mapped_applies_sync_and_async_functions(fn: Callable[[int], Any], kind: str) -> None:
    source: Any = [1, 2, 3] if kind == "list" else Tracked([1, 2, 3])
    assert await drain(mapped(source, fn)) == [2, 4, 6]


@pytest.mark.parametrize("predicate", [is_even, is_even_async], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["list", "async"])
async def test_filtered_keeps_items_by_sync_and_async_predicates(
    predicate: Callable[[int], Any], kind: str
) -> None:
    source: Any = range(7) if kind == "list" else Tracked(range(7))
    assert await drain(filtered(source, predicate)) == [0, 2, 4, 6]


async def test_filtered_uses_truthiness_of_the_predicate_result() -> None:
    assert await drain(filtered(["", "a", None, "b", 0], lambda x: x)) == ["a", "b"]


async def test_mapped_propagates_an_error_of_its_function_and_closes_the_source() -> None:
    inner = Tracked(range(10))

    def explode(x: int) -> int:
        if x == 2:
            raise ZeroDivisionError("boom at 2")
        return x

    outputs: list[Any] = []
    with pytest.raises(ZeroDivisionError, match="boom at 2"):
        await read_into(mapped(inner, explode), outputs)
    assert outputs == [0, 1]
    assert inner.finalized


async def test_timers_are_flux_sources() -> None:
    ticks = Flux.lift(lambda tick: ("tick", tick))
    assert await drain(ticks.start(periodic(0.05, count=3))) == [("tick", 0), ("tick", 1), ("tick", 2)]
    steps = Flux.lift(lambda step: step * 10)
    assert await drain(steps.start(countdown(2, interval=0.001))) == [20, 10, 0]


async def test_combinators_compose_into_a_flux_source() -> None:
    source = take(filtered(mapped(range(100), double_async), lambda x: x % 3 == 0), 4)
    flux = Flux.lift(lambda x: -x)
    assert await drain(flux.start(source)) == [0, -6, -12, -18]


# ----------------------------------------------------------------------------------- take


async def test_take_yields_the_first_n_items() -> None:
    assert await drain(take(range(10), 3)) == [0, 1, 2]
    assert await drain(take([1, 2], 5)) == [1, 2]


async def test_take_closes_the_source_right_after_the_nth_item_without_waiting_for_more() -> None:
    inner = Tracked(["a", "b", "c"], then_block=True)  # a 4th item never arrives
    async with asyncio.timeout(2), aclosing(take(inner, 3)) as source:
        items = []
        async for item in source:
            items.append(item)
            if len(items) == 3:
                assert not inner.finalized  # still the consumer's turn: nothing read ahead
        # Iteration ended although the source would block forever.
        assert inner.finalized
    assert items == ["a", "b", "c"]


async def test_take_zero_reads_nothing_and_closes_the_source() -> None:
    inner = Tracked(range(5))
    assert await drain(take(inner, 0)) == []
    assert inner.yielded == []
    await inner.aclose()


# --------------------------------------------------------------------------------- merged


async def test_merged_yields_every_item_of_every_source() -> None:
    sources = [Tracked(range(50)), range(100, 130), Tracked([]), ["x"]]
    outputs = await drain(merged(*sources))
    assert sorted(outputs, key=str) == sorted([*range(50), *range(100, 130), "x"], key=str)
    # Each source's items keep their relative order.
    assert [x for x in outputs if isinstance(x, int) and x < 100] == list(range(50))
    assert [x for x in outputs if isinstance(x, int) and x >= 100] == list(range(100, 130))


async def test_merged_of_nothing_ends_at_once() -> None:
    assert await drain(merged(), limit=1) == []


async def test_merged_does_not_hold_a_fast_source_back_behind_a_slow_one() -> None:
    slow_gate = asyncio.Event()
    slow_finalized = asyncio.Event()

    async def slow_source() -> AsyncIterator[str]:
        try:
            yield "slow-0"
            await slow_gate.wait()  # the next slow item arrives only when we say so
            yield "slow-1"
        finally:
            slow_finalized.set()

    fast = Tracked([f"fast-{i}" for i in range(40)])  # more than per_source
    outputs: list[str] = []
    async with asyncio.timeout(5), aclosing(merged(slow_source(), fast)) as stream:
        while len([x for x in outputs if x.startswith("fast")]) < 40:
            outputs.append(await anext(stream))
        assert "slow-1" not in outputs
        slow_gate.set()
        outputs.extend([x async for x in stream])
    assert outputs[-1] == "slow-1"
    assert sorted(outputs) == sorted(["slow-0", "slow-1", *(f"fast-{i}" for i in range(40))])
    assert slow_finalized.is_set()
    assert fast.finalized


async def test_merged_delivers_items_as_they_arrive() -> None:
    first, second = Tracked(["a"], then_block=True), Tracked(["b"], then_block=True)
    async with asyncio.timeout(2), aclosing(merged(first, second)) as stream:
        got = {await anext(stream), await anext(stream)}
        assert got == {"a", "b"}
        first.gate.set()
        second.gate.set()
        assert [x async for x in stream] == []


async def test_merged_reads_at_most_per_source_items_ahead_of_the_consumer() -> None:
    endless = Tracked(range(10_000))
    async with asyncio.timeout(2), aclosing(merged(endless, per_source=4)) as stream:
        assert await anext(stream) == 0
        await settle(10)
        assert len(endless.yielded) <= 1 + 4 + 1  # taken, waiting, and one in the pump's hand
        assert [await anext(stream) for _ in range(20)] == list(range(1, 21))
        await settle(10)
        assert len(endless.yielded) <= 21 + 4 + 1


async def test_closing_the_merge_closes_every_source() -> None:
    sources = [Tracked([1], then_block=True), Tracked(range(1000)), Tracked([], then_block=True)]
    async with asyncio.timeout(2), aclosing(merged(*sources)) as stream:
        assert await anext(stream) in (0, 1)
    assert all(source.finalized for source in sources)


async def test_closing_a_merge_that_never_started_closes_its_sources() -> None:
    source = Tracked([1, 2])
    stream = merged(source, [3, 4])
    await stream.aclose()  # type: ignore[attr-defined]
    assert source.yielded == []
    assert source.gen.ag_frame is None  # the async generator is closed
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_an_error_in_one_merged_source_reaches_the_consumer_and_closes_the_others() -> None:
    failing = Tracked(["before"], fail_with=KeyError("source broke"))
    blocked = Tracked(["other"], then_block=True)
    endless = Tracked(range(10_000))
    outputs: list[Any] = []
    with pytest.raises(KeyError, match="source broke"):
        await read_into(merged(failing, blocked, endless), outputs)
    assert "before" in outputs
    assert failing.finalized
    assert blocked.finalized
    assert endless.finalized


async def test_merged_is_a_flux_source_and_the_flux_closes_it() -> None:
    endless = Tracked(range(10_000))
    short = Tracked(["x", "y"])
    flux = Flux.lift(lambda x: x)
    seen = []
    async with asyncio.timeout(5), flux.start(merged(endless, short)) as out:
        async for item in out:
            seen.append(item)
            if {"x", "y"} <= set(seen):
                break
    assert endless.finalized
    assert short.finalized


async def test_a_merge_abandoned_after_break_cleans_up_when_collected() -> None:
    inner = Tracked(range(100))
    stream = merged(inner)
    ref = weakref.ref(stream)
    async for _ in stream:
        break
    del stream
    gc.collect()
    await settle(5)
    try:
        pumps = [task for task in asyncio.all_tasks() if task.get_name().startswith("merged:")]
        assert not pumps, f"pump tasks left running: {pumps}"
        assert inner.finalized
    finally:
        leftover = ref()
        if leftover is not None:
            await leftover.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------- closing early, for every source


def _wrappers() -> list[tuple[str, Callable[[Tracked], Any]]]:
    return [
        ("from_stream", from_stream),
        ("mapped", lambda s: mapped(s, double)),
        ("mapped-async", lambda s: mapped(s, double_async)),
        ("filtered", lambda s: filtered(s, lambda x: True)),
        ("take", lambda s: take(s, 50)),
        ("merged", lambda s: merged(s)),
        ("nested", lambda s: take(mapped(filtered(from_stream(s), is_even), double), 10)),
    ]


@pytest.mark.parametrize(("name", "wrap"), _wrappers(), ids=[name for name, _ in _wrappers()])
async def test_every_source_closes_its_inner_source_when_the_consumer_stops_early(
    name: str, wrap: Callable[[Tracked], Any]
) -> None:
    inner = Tracked(range(100))
    async with asyncio.timeout(2), aclosing(wrap(inner)) as stream:
        await anext(stream)
        assert not inner.finalized
    assert inner.finalized, f"{name} left its source open"


@pytest.mark.parametrize(("name", "wrap"), _wrappers(), ids=[name for name, _ in _wrappers()])
async def test_every_source_closes_its_inner_source_when_a_flux_stops(
    name: str, wrap: Callable[[Tracked], Any]
) -> None:
    inner = Tracked(range(1000), then_block=True)
    flux = Flux.lift(lambda x: x)
    async with asyncio.timeout(2), flux.start(wrap(inner)) as out:
        await anext(out)
    assert inner.finalized, f"{name} left its source open when the flux stopped"


# ----------------------------------------------------------------------------- bad input


async def _first(source: Any) -> Any:
    async with aclosing(source):
        return await anext(source)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: periodic(0), ValueError, "interval"),
        (lambda: periodic(-1.0), ValueError, "interval"),
        (lambda: periodic(float("inf")), ValueError, "interval"),
        (lambda: periodic(float("nan")), ValueError, "interval"),
        (lambda: periodic("1"), ValueError, "interval"),
        (lambda: periodic(0.1, count=-1), ValueError, "count"),
        (lambda: countdown(-1), ValueError, "countdown"),
        (lambda: countdown(1.5), ValueError, "countdown"),
        (lambda: countdown(3, interval=0), ValueError, "interval"),
        (lambda: take(range(3), -1), ValueError, "take"),
        (lambda: take(range(3), 1.0), ValueError, "take"),
        (lambda: merged(range(3), per_source=0), ValueError, "per_source"),
        (lambda: merged(range(3), 42), TypeError, "int"),
        (lambda: mapped(42, double), TypeError, "int"),
        (lambda: filtered(None, is_even), TypeError, "NoneType"),
        (lambda: take(3.5, 1), TypeError, "float"),
        (lambda: from_iterable(42), TypeError, "int"),
    ],
)
async def test_bad_arguments_raise_clear_errors(make: Callable[[], Any], error: type, match: str) -> None:
    # Raised when the source is made or, for generator sources, at the latest on the first read.
    with pytest.raises(error, match=match):
        await _first(make())


async def test_from_stream_rejects_a_non_async_iterable_with_type_error() -> None:
    with pytest.raises(TypeError):
        await _first(from_stream(42))  # type: ignore[arg-type]
