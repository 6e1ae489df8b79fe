"""Errors: dead letters under ``skip``, consumer-side raising, retries, failing sources."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from agentflux import DeadLetter, Flux, FluxConfig, FluxPerturbationError, FluxState
from conftest import TrackedSource, collect, drain_into, signals_until_stopped


class Flaky:
    """Fails the first ``failures`` attempts for each input, then doubles it."""

    def __init__(self, failures: int, on: set[Any] | None = None) -> None:
        self.failures = failures
        self.on = on
        self.attempts: Counter[Any] = Counter()
        self.raised: list[Exception] = []

    async def invoke(self, x: Any) -> Any:
        self.attempts[x] += 1
        if (self.on is None or x in self.on) and self.attempts[x] <= self.failures:
            error = ValueError(f"transient failure on {x}")
            self.raised.append(error)
            raise error
        return x * 2


async def test_skip_dead_letters_and_continues() -> None:
    odd = {1, 3, 5, 7, 9}
    agent = Flaky(failures=10**6, on=odd)
    flux = Flux.lift(agent, FluxConfig(dead_letter_size=3))
    observer = flux.observe()
    before = time.time()
    source = TrackedSource(range(10))
    outputs = await collect(flux.start(source))
    after = time.time()
    assert outputs == [0, 4, 8, 12, 16]
    assert flux.state is FluxState.STOPPED
    assert source.closed

    letters = flux.dead_letters
    assert isinstance(letters, tuple)
    assert [letter.event for letter in letters] == [5, 7, 9]  # bounded, oldest dropped first
    for letter in letters:
        assert isinstance(letter, DeadLetter)
        assert isinstance(letter.error, ValueError)
        assert str(letter.event) in str(letter.error)
        assert before <= letter.at <= after
    assert [letter.error for letter in letters] == agent.raised[-3:]

    metrics = flux.metrics()
    assert metrics.errors == 5
    assert metrics.events_in == 10
    signals = await signals_until_stopped(observer)
    assert len([s for s in signals if s.kind == "error"]) == 5


async def test_dead_letters_keep_every_failure_under_the_default_bound() -> None:
    flux = Flux.lift(Flaky(failures=10**6))
    assert await collect(flux.start(range(20))) == []
    assert [letter.event for letter in flux.dead_letters] == list(range(20))
    assert flux.metrics().errors == 20


async def test_dead_letter_size_zero_keeps_none_but_counts() -> None:
    flux = Flux.lift(Flaky(failures=10**6), FluxConfig(dead_letter_size=0))
    assert await collect(flux.start(range(4))) == []
    assert flux.dead_letters == ()
    assert flux.metrics().errors == 4


async def test_skip_with_concurrency_keeps_good_outputs_in_order() -> None:
    agent = Flaky(failures=10**6, on={2, 5})
    flux = Flux.lift(agent, FluxConfig(concurrency=3))
    assert await collect(flux.start(range(8))) == [0, 2, 6, 8, 12, 14]
    assert sorted(letter.event for letter in flux.dead_letters) == [2, 5]


async def test_raise_makes_the_consumer_raise_the_agents_exception() -> None:
    agent = Flaky(failures=10**6, on={3})
    flux = Flux.lift(agent, FluxConfig(on_error="raise"))
    source = TrackedSource(range(100))
    received: list[int] = []
    with pytest.raises(ValueError, match="failure on 3") as excinfo:
        await drain_into(flux.start(source), received)
    assert excinfo.value is agent.raised[0]  # the agent's own exception, not a wrapper
    assert received == [0, 2, 4]
    assert flux.state is FluxState.STOPPED
    assert source.closed
    assert flux.metrics().errors == 1


async def test_raise_without_async_with_still_cleans_up() -> None:
    flux = Flux.lift(Flaky(failures=10**6, on={0}), FluxConfig(on_error="raise"))
    source = TrackedSource(range(10))
    stream = flux.start(source)

    async def read_without_closing() -> None:
        async with asyncio.timeout(2):
            async for _ in stream:
                pass

    with pytest.raises(ValueError, match="failure on 0"):
        await read_without_closing()
    assert flux.state is FluxState.STOPPED
    await source.wait_finalized()
    # The error is raised once; the stream is then simply over.
    async with asyncio.timeout(1):
        assert [item async for item in stream] == []


async def test_raise_fails_queued_perturbations() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def agent_fn(x: Any) -> Any:
        if x == "fail":
            started.set()
            await release.wait()
            raise RuntimeError("stream event failed")
        return x

    flux = Flux.lift(agent_fn, FluxConfig(on_error="raise"))
    stream = flux.start(TrackedSource(["fail", 1, 2]))
    async with asyncio.timeout(2):
        await started.wait()
        queued = asyncio.create_task(flux.invoke("queued"))
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(FluxPerturbationError):
            await queued
        with pytest.raises(RuntimeError, match="stream event failed"):
            await collect(stream)
    assert flux.state is FluxState.STOPPED


async def test_retries_with_backoff_recover_transient_errors() -> None:
    agent = Flaky(failures=2)
    flux = Flux.lift(agent, FluxConfig(retries=2, retry_backoff=0.001))
    assert await collect(flux.start(range(5))) == [0, 2, 4, 6, 8]
    assert agent.attempts == Counter({x: 3 for x in range(5)})
    assert flux.dead_letters == ()
    assert flux.metrics().errors == 0


async def test_retries_exhausted_dead_letters_the_last_error() -> None:
    agent = Flaky(failures=2)
    flux = Flux.lift(agent, FluxConfig(retries=1, retry_backoff=0.001))
    assert await collect(flux.start([1, 2])) == []
    assert agent.attempts == Counter({1: 2, 2: 2})
    assert [letter.event for letter in flux.dead_letters] == [1, 2]
    assert flux.metrics().errors == 2


async def test_retry_backoff_doubles_per_attempt() -> None:
    agent = Flaky(failures=3)
    flux = Flux.lift(agent, FluxConfig(retries=3, retry_backoff=0.02))
    loop = asyncio.get_running_loop()
    begun = loop.time()
    assert await collect(flux.start([1])) == [2]
    elapsed = loop.time() - begun
    assert elapsed >= 0.02 + 0.04 + 0.08 - 0.005
    assert elapsed < 1.0


async def test_retries_with_raise_only_raise_after_the_last_attempt() -> None:
    agent = Flaky(failures=1)
    flux = Flux.lift(agent, FluxConfig(retries=1, retry_backoff=0.001, on_error="raise"))
    assert await collect(flux.start([1, 2, 3])) == [2, 4, 6]
    assert flux.state is FluxState.STOPPED


async def test_a_source_that_raises_propagates_to_the_consumer() -> None:
    error = OSError("disk gone")
    source = TrackedSource([1, 2], fail_with=error)
    flux = Flux.lift(lambda x: x * 10)
    received: list[int] = []
    with pytest.raises(OSError, match="disk gone") as excinfo:
        await drain_into(flux.start(source), received)
    assert excinfo.value is error
    assert received == [10, 20]
    assert flux.state is FluxState.STOPPED
    assert source.closed


async def test_a_sync_source_that_raises_propagates_to_the_consumer() -> None:
    def numbers():  # type: ignore[no-untyped-def]
        yield 1
        raise KeyError("bad row")

    with pytest.raises(KeyError, match="bad row"):
        await collect(Flux.lift(lambda x: x).start(numbers()))


async def test_errors_never_disappear_silently_under_concurrency() -> None:
    failing = {x for x in range(60) if x % 7 == 0}
    agent = Flaky(failures=10**6, on=failing)
    flux = Flux.lift(agent, FluxConfig(concurrency=4, ordered=False))
    outputs = await collect(flux.start(range(60)))
    assert sorted(outputs) == [2 * x for x in range(60) if x not in failing]
    assert sorted(letter.event for letter in flux.dead_letters) == sorted(failing)
    assert flux.metrics().errors == len(failing)
