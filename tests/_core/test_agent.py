"""Agents: ``agent()`` wrappers, ``>>`` composition and the ``Identity`` unit."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux import Agent, Flux, Identity, agent


async def test_agent_wraps_an_async_function() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    wrapped = agent(double)
    assert isinstance(wrapped, Agent)
    assert await wrapped.invoke(21) == 42


async def test_agent_wraps_a_sync_function() -> None:
    calls: list[int] = []

    def inc(x: int) -> int:
        calls.append(x)
        return x + 1

    wrapped = agent(inc)
    assert isinstance(wrapped, Agent)
    assert await wrapped.invoke(1) == 2
    assert calls == [1]


async def test_agent_wraps_a_sync_callable_returning_an_awaitable() -> None:
    async def triple(x: int) -> int:
        return 3 * x

    wrapped = agent(lambda x: triple(x))
    assert await wrapped.invoke(2) == 6


async def test_agent_as_a_decorator() -> None:
    @agent
    async def shout(text: str) -> str:
        return text.upper()

    assert isinstance(shout, Agent)
    assert await shout.invoke("hi") == "HI"
    assert shout.name == "shout"


async def test_agent_decorator_with_a_name() -> None:
    @agent(name="greeter")
    def greet(who: str) -> str:
        return f"hello {who}"

    assert greet.name == "greeter"
    assert await greet.invoke("bob") == "hello bob"


def test_agent_name_defaults_to_the_function_name() -> None:
    def summarise(x: str) -> str:
        return x

    assert agent(summarise).name == "summarise"
    assert agent(summarise, name="sum").name == "sum"


async def test_agent_propagates_the_function_error() -> None:
    error = KeyError("nope")

    def broken(x: int) -> int:
        raise error

    with pytest.raises(KeyError) as excinfo:
        await agent(broken).invoke(1)
    assert excinfo.value is error


async def test_compose_runs_left_then_right() -> None:
    order: list[str] = []

    async def first(x: int) -> int:
        order.append("first")
        return x + 1

    def second(x: int) -> int:
        order.append("second")
        return x * 10

    composed = agent(first) >> agent(second)
    assert isinstance(composed, Agent)
    assert await composed.invoke(1) == 20
    assert order == ["first", "second"]


async def test_compose_with_plain_functions_on_either_side() -> None:
    wrapped = agent(lambda x: x + 1)
    assert await (wrapped >> (lambda x: x * 2)).invoke(3) == 8
    assert await ((lambda x: x * 2) >> wrapped).invoke(3) == 7


async def test_compose_a_custom_agent_class() -> None:
    class Upper:
        name = "upper"

        async def invoke(self, x: str) -> str:
            return x.upper()

    composed = agent(lambda s: s + "!") >> Upper()
    assert await composed.invoke("hey") == "HEY!"


async def test_compose_propagates_errors_and_stops() -> None:
    reached: list[int] = []

    def fail(x: int) -> int:
        raise ValueError(x)

    composed = agent(fail) >> agent(reached.append)
    with pytest.raises(ValueError, match="5"):
        await composed.invoke(5)
    assert reached == []


async def test_identity_returns_its_input_unchanged() -> None:
    payload = {"a": [1, 2]}
    assert isinstance(Identity, Agent)
    assert await Identity.invoke(payload) is payload


async def test_identity_is_a_unit_of_composition() -> None:
    inc = agent(lambda x: x + 1)
    assert await (Identity >> inc).invoke(1) == 2
    assert await (inc >> Identity).invoke(1) == 2
    assert await (Identity >> Identity).invoke(7) == 7


async def test_identity_can_be_lifted() -> None:
    flux = Flux.lift(Identity)
    assert await flux.invoke("x") == "x"


@pytest.mark.parametrize("not_callable", [42, "text", None, [1, 2], object()])
def test_agent_rejects_non_callables(not_callable: Any) -> None:
    if not_callable is None:
        # agent(None) is the decorator factory; the factory must reject a non-callable.
        with pytest.raises(TypeError):
            agent(None)(42)
        return
    with pytest.raises(TypeError):
        agent(not_callable)


@pytest.mark.parametrize("not_callable", [42, "text", [1, 2], object()])
def test_compose_rejects_non_callables(not_callable: Any) -> None:
    with pytest.raises(TypeError):
        agent(lambda x: x) >> not_callable


# ----------------------------------------------------------------- properties

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "xor": operator.xor,
    "mod": lambda x, c: x % c if c else x,
}

arithmetic = st.tuples(st.sampled_from(sorted(OPERATIONS)), st.integers(-50, 50), st.booleans())


def make_agent(spec: tuple[str, int, bool]) -> tuple[Agent[int, int], Callable[[int], int]]:
    """An agent for ``x -> op(x, constant)`` (async or sync) and the plain function."""
    name, constant, is_async = spec
    op = OPERATIONS[name]

    def plain(x: int) -> int:
        return op(x, constant)

    if is_async:

        async def run(x: int) -> int:
            return plain(x)

        return agent(run), plain
    return agent(plain), plain


@settings(max_examples=60, deadline=None)
@given(f=arithmetic, g=arithmetic, h=arithmetic, xs=st.lists(st.integers(-(10**6), 10**6), max_size=5))
async def test_composition_is_associative(
    f: tuple[str, int, bool], g: tuple[str, int, bool], h: tuple[str, int, bool], xs: list[int]
) -> None:
    (fa, fp), (ga, gp), (ha, hp) = make_agent(f), make_agent(g), make_agent(h)
    left = (fa >> ga) >> ha
    right = fa >> (ga >> ha)
    for x in xs:
        expected = hp(gp(fp(x)))
        assert await left.invoke(x) == expected
        assert await right.invoke(x) == expected


@settings(max_examples=60, deadline=None)
@given(f=arithmetic, xs=st.lists(st.integers(-(10**6), 10**6), max_size=5))
async def test_identity_is_left_and_right_unit(f: tuple[str, int, bool], xs: list[int]) -> None:
    fa, fp = make_agent(f)
    for x in xs:
        assert await (Identity >> fa).invoke(x) == fp(x)
        assert await (fa >> Identity).invoke(x) == fp(x)
        assert await (Identity >> fa >> Identity).invoke(x) == fp(x)
