"""Agents: anything with ``async def invoke(x)``, plus wrappers and composition."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast, overload, runtime_checkable

__all__ = ["Agent", "AgentBase", "Composed", "FunctionAgent", "Identity", "agent", "agent_name"]

_AWAITABLE_RESULTS = (types.CoroutineType, asyncio.Future)

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
A_contra = TypeVar("A_contra", contravariant=True)
B_co = TypeVar("B_co", covariant=True)


@runtime_checkable
class Agent(Protocol[A_contra, B_co]):
    """An asynchronous transformation from ``A`` to ``B``.

    An agent may also carry a ``name`` attribute; ``agent_name()`` falls back to the
    class name when it does not.
    """

    async def invoke(self, x: A_contra, /) -> B_co:
        """Transform one input into one output."""
        ...


def agent_name(obj: object) -> str:
    """The display name of an agent: its ``name`` attribute or its class name."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else type(obj).__name__


def _as_agent(obj: object) -> Agent[Any, Any]:
    if isinstance(obj, Agent):
        return obj
    if callable(obj):
        return FunctionAgent(obj)
    raise TypeError(f"expected an Agent (an object with async invoke()) or a function, got {obj!r}")


class AgentBase(Generic[A, B]):
    """Mixin giving an agent ``>>`` composition."""

    name: str

    async def invoke(self, x: A, /) -> B:  # pragma: no cover - overridden
        raise NotImplementedError

    def __rshift__(self, other: Agent[B, C] | Callable[[B], Any]) -> Agent[A, C]:
        """Compose sequentially: ``(f >> g).invoke(x) == g.invoke(f.invoke(x))``."""
        return compose(self, _as_agent(other))

    def __rrshift__(self, other: Callable[[Any], A]) -> Agent[Any, B]:
        return compose(_as_agent(other), self)


def _call_method(fn: object) -> object:
    return getattr(type(fn), "__call__", None)  # noqa: B004 - the __call__ of a callable object


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine by its definition (``async def``, also
    through ``functools.partial`` or an object's ``async def __call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(_call_method(fn))


def is_generator_callable(fn: object) -> bool:
    """Whether ``fn`` is a generator or async generator function (or a callable object
    whose ``__call__`` is one)."""
    return any(
        inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in (fn, _call_method(fn))
    )


class FunctionAgent(AgentBase[A, B]):
    """An agent around a plain function, async or sync.

    A sync function that returns a coroutine or a future (``lambda x: fetch(x)``) has
    that awaited too.
    """

    __slots__ = ("_fn", "name")

    def __init__(self, fn: Callable[[A], Awaitable[B]] | Callable[[A], B], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"agent() needs a callable, got {fn!r}")
        if is_generator_callable(fn):
            raise TypeError(
                f"an agent returns one result per input, but {fn!r} is a generator function "
                "(each call would return a generator object); yield from a source or a stage instead"
            )
        self._fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        is_async = is_async_callable(fn)
        # The per-call path is chosen once here: the hot loop calls it for every event.
        self.invoke = self._call_async if is_async else self._call_sync  # type: ignore[method-assign]

    async def invoke(self, x: A, /) -> B:  # replaced per instance in __init__
        """Call the wrapped function (awaiting it when it is async)."""
        raise NotImplementedError

    async def _call_async(self, x: A, /) -> B:
        return await cast(Callable[[A], Awaitable[B]], self._fn)(x)

    async def _call_sync(self, x: A, /) -> B:
        result = self._fn(x)
        if isinstance(result, _AWAITABLE_RESULTS):
            return await cast(Awaitable[B], result)
        return cast(B, result)

    def __repr__(self) -> str:
        return f"agent({self.name})"


class Composed(AgentBase[A, C]):
    """Sequential composition of agents, flattened so that ``>>`` is associative."""

    __slots__ = ("name", "stages")

    def __init__(self, stages: tuple[Agent[Any, Any], ...]) -> None:
        self.stages = stages
        self.name = " >> ".join(agent_name(s) for s in stages)

    async def invoke(self, x: A, /) -> C:
        """Run each stage on the previous stage's output."""
        value: Any = x
        for stage in self.stages:
            value = await stage.invoke(value)
        return cast(C, value)

    def __repr__(self) -> str:
        return f"Composed({self.name})"


class _IdentityAgent(AgentBase[Any, Any]):
    """The unit of composition: returns its input unchanged."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "Identity"

    async def invoke(self, x: Any, /) -> Any:
        """Return ``x`` unchanged."""
        return x

    def __repr__(self) -> str:
        return "Identity"


Identity: AgentBase[Any, Any] = _IdentityAgent()
"""The identity agent: ``Identity >> f`` and ``f >> Identity`` behave as ``f``."""


def compose(first: Agent[A, B], second: Agent[B, C]) -> Agent[A, C]:
    """Sequential composition of two agents; ``Identity`` is its unit."""
    if first is Identity:
        return cast(Agent[A, C], second)
    if second is Identity:
        return cast(Agent[A, C], first)
    left = first.stages if isinstance(first, Composed) else (first,)
    right = second.stages if isinstance(second, Composed) else (second,)
    return Composed(left + right)


@overload
def agent(fn: Callable[[A], Awaitable[B]], *, name: str | None = None) -> FunctionAgent[A, B]: ...
@overload
def agent(fn: Callable[[A], B], *, name: str | None = None) -> FunctionAgent[A, B]: ...
@overload
def agent(
    fn: None = None, *, name: str | None = None
) -> Callable[[Callable[[A], Any]], FunctionAgent[A, Any]]: ...


def agent(fn: Any = None, *, name: str | None = None) -> Any:
    """Wrap an async or sync function as an Agent; usable as ``@agent`` or ``@agent(name=...)``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if fn is None:
        return lambda f: FunctionAgent(f, name)
    return FunctionAgent(fn, name)
