"""Bad arguments are refused at ``lift()``, and an error from closing the source is never dropped.

Before, ``Flux.lift`` took an object whose ``invoke`` is a plain function (every event was
then dead-lettered with "object is not awaitable") and a generator function (its generator
objects were emitted as outputs), and an error raised by the source's ``aclose()`` after
the consumer closed the stream early vanished.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, agent
from conftest import collect, drain_into


class SyncInvoke:
    name = "sync-invoke"

    def invoke(self, x: int) -> int:
        return x


class GeneratorInvoke:
    name = "generator-invoke"

    async def invoke(self, x: int) -> AsyncIterator[int]:
        yield x


def numbers(x: int) -> Iterator[int]:
    yield x


async def async_numbers(x: int) -> AsyncIterator[int]:
    yield x


class GeneratorCall:
    def __call__(self, x: int) -> Iterator[int]:
        yield x


@pytest.mark.parametrize(
    ("inner", "named"),
    [
        (SyncInvoke(), "SyncInvoke.invoke of <"),
        (GeneratorInvoke(), "is a generator function"),
    ],
)
def test_an_invoke_that_is_not_a_coroutine_function_is_refused_at_lift(inner: Any, named: str) -> None:
    with pytest.raises(TypeError, match="coroutine function") as caught:
        Flux.lift(inner)
    assert named in str(caught.value)


@pytest.mark.parametrize("fn", [numbers, async_numbers, GeneratorCall()], ids=["sync", "async", "callable"])
def test_a_generator_function_is_refused_at_lift_and_by_agent(fn: Any) -> None:
    with pytest.raises(TypeError, match="generator function") as caught:
        Flux.lift(fn)
    assert repr(fn) in str(caught.value)
    with pytest.raises(TypeError, match="generator function"):
        agent(fn)


async def test_what_lift_still_takes() -> None:
    async def double(x: int) -> int:
        return 2 * x

    class AsyncCall:
        async def __call__(self, x: int) -> int:
            return x + 1

    class PartialInvoke:
        name = "partial"
        invoke = staticmethod(functools.partial(double))

    for inner, expected in [
        (double, [2, 4]),
        (lambda x: x * 3, [3, 6]),  # a sync function is wrapped
        (AsyncCall(), [2, 3]),
        (PartialInvoke(), [2, 4]),
        (Flux.lift(double), [2, 4]),  # a flux is an agent too
    ]:
        assert await collect(Flux.lift(inner).start([1, 2])) == expected


class CloseFails(Exception):
    pass


async def closing_fails(items: list[int]) -> AsyncIterator[int]:
    try:
        for item in items:
            yield item
        await asyncio.Event().wait()
    finally:
        raise CloseFails("the source could not close")


async def identity(x: int) -> int:
    return x


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_aclose_of_a_stream_closed_early_raises_the_sources_close_error(concurrency: int) -> None:
    flux = Flux.lift(identity, FluxConfig(concurrency=concurrency))
    stream = flux.start(closing_fails([1, 2, 3]))
    assert [await stream.__anext__(), await stream.__anext__()] == [1, 2]
    with pytest.raises(CloseFails, match="could not close"):
        await stream.aclose()
    await stream.aclose()  # reported once


async def test_leaving_async_with_early_raises_the_close_error() -> None:
    async def leave_early() -> None:
        async with Flux.lift(identity).start(closing_fails([1, 2])) as stream:
            async for item in stream:
                if item == 2:
                    break

    with pytest.raises(CloseFails):
        await leave_early()


async def test_an_exception_leaving_async_with_is_not_replaced_and_the_close_error_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def consumer_fails() -> None:
        async with Flux.lift(identity).start(closing_fails([1])) as stream:
            async for _ in stream:
                raise KeyError("the consumer's own error")

    with caplog.at_level(logging.ERROR, logger="agentflux.flux"), pytest.raises(KeyError, match="own error"):
        await consumer_fails()
    (record,) = [r for r in caplog.records if r.name == "agentflux.flux"]
    assert "closing its source failed" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CloseFails)


async def test_flux_stop_logs_the_close_error(caplog: pytest.LogCaptureFixture) -> None:
    flux = Flux.lift(identity)
    stream = flux.start(closing_fails([1]))
    assert await stream.__anext__() == 1
    with caplog.at_level(logging.ERROR, logger="agentflux.flux"):
        await flux.stop()
    assert any(isinstance(r.exc_info[1], CloseFails) for r in caplog.records if r.exc_info)
    await stream.aclose()  # already closed: the error was reported once, not again


async def test_a_failing_run_carries_the_close_error_as_a_note(caplog: pytest.LogCaptureFixture) -> None:
    async def fails(x: int) -> int:
        raise ValueError(f"agent failed on {x}")

    flux = Flux.lift(fails, FluxConfig(on_error="raise"))
    with (
        caplog.at_level(logging.ERROR, logger="agentflux.flux"),
        pytest.raises(ValueError, match="agent failed on 1") as caught,
    ):
        await collect(flux.start(closing_fails([1])))
    assert any("closing the source also failed" in note for note in getattr(caught.value, "__notes__", []))


class ClosesBadly:
    """A sync source whose ``close()`` raises after it was read to the end."""

    def __init__(self) -> None:
        self.items = iter([1, 2])

    def __iter__(self) -> ClosesBadly:
        return self

    def __next__(self) -> int:
        return next(self.items)

    def close(self) -> None:
        raise CloseFails("sync close failed")


async def test_a_stream_read_to_its_end_raises_the_close_error_to_the_consumer() -> None:
    received: list[int] = []
    with pytest.raises(CloseFails, match="sync close failed"):
        await drain_into(Flux.lift(identity).start(ClosesBadly()), received)
    assert received == [1, 2]
