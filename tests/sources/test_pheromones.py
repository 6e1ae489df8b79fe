"""``PheromoneField``: decaying deposits, sensing, and pheromone sources (SPEC 3, 10)."""

from __future__ import annotations

import asyncio
import math
from contextlib import aclosing

import pytest

from agentflux import Flux, FluxConfig, Signal
from agentflux.sources import ClosedResourceError, Pheromone, PheromoneField, from_pheromones

from ._helpers import drain, settle


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def field(clock: FakeClock) -> PheromoneField:
    return PheromoneField(half_life=10.0, clock=clock)


# ---------------------------------------------------------------------- deposit and sense


def test_an_unknown_kind_senses_zero(field: PheromoneField) -> None:
    assert field.sense("nothing here") == 0.0


def test_intensity_halves_every_half_life(field: PheromoneField, clock: FakeClock) -> None:
    assert field.deposit("trail", 8.0) == pytest.approx(8.0)
    assert field.sense("trail") == pytest.approx(8.0)
    clock.advance(10.0)
    assert field.sense("trail") == pytest.approx(4.0)
    clock.advance(10.0)
    assert field.sense("trail") == pytest.approx(2.0)
    clock.advance(5.0)
    assert field.sense("trail") == pytest.approx(2.0 * 2 ** -0.5)


def test_decay_is_exponential_at_any_time(field: PheromoneField, clock: FakeClock) -> None:
    field.deposit("trail", 3.0)
    for elapsed in (0.5, 1.0, 7.3, 25.0, 100.0):
        clock.advance(elapsed)
    total = 0.5 + 1.0 + 7.3 + 25.0 + 100.0
    assert field.sense("trail") == pytest.approx(3.0 * math.exp(-math.log(2) * total / 10.0))


def test_deposits_add_to_the_decayed_intensity(field: PheromoneField, clock: FakeClock) -> None:
    field.deposit("trail", 4.0)
    clock.advance(10.0)
    assert field.deposit("trail", 1.0) == pytest.approx(3.0)  # 4 -> 2, plus 1
    clock.advance(10.0)
    assert field.sense("trail") == pytest.approx(1.5)


def test_kinds_decay_independently(field: PheromoneField, clock: FakeClock) -> None:
    field.deposit("food", 2.0)
    clock.advance(10.0)
    field.deposit("danger", 2.0)
    assert field.sense("food") == pytest.approx(1.0)
    assert field.sense("danger") == pytest.approx(2.0)
    assert field.kinds() == pytest.approx({"food": 1.0, "danger": 2.0})


def test_default_intensity_is_one(field: PheromoneField) -> None:
    field.deposit("trail")
    assert field.sense("trail") == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "10", None, True])
def test_invalid_half_life_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="half_life"):
        PheromoneField(half_life=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("inf"), float("nan"), "1", None, True])
def test_invalid_intensity_raises_value_error_and_changes_nothing(
    field: PheromoneField, bad: object
) -> None:
    field.deposit("trail", 2.0)
    with pytest.raises(ValueError, match="intensity"):
        field.deposit("trail", bad)  # type: ignore[arg-type]
    assert field.sense("trail") == pytest.approx(2.0)


# ------------------------------------------------------------------------- from_pheromones


async def test_from_pheromones_yields_each_deposit_of_its_kind(field: PheromoneField, clock: FakeClock) -> None:
    source = from_pheromones(field, "food")  # listening from now on
    field.deposit("food", 1.5, payload={"x": 1})
    field.deposit("danger", 9.0, payload="ignored")
    clock.advance(3.0)
    field.deposit("food", 0.5, payload="second")
    field.close()
    deposits = await drain(source)
    assert deposits == [
        Pheromone("food", 1.5, {"x": 1}, 1000.0),
        Pheromone("food", 0.5, "second", 1003.0),
    ]


async def test_from_pheromones_does_not_see_earlier_deposits(field: PheromoneField) -> None:
    field.deposit("food", 1.0, payload="too early")
    source = from_pheromones(field, "food")
    field.deposit("food", 1.0, payload="seen")
    field.close()
    assert [p.payload for p in await drain(source)] == ["seen"]


async def test_from_pheromones_wakes_a_waiting_consumer(field: PheromoneField) -> None:
    async with aclosing(from_pheromones(field, "food")) as source:
        waiting = asyncio.create_task(anext(source))
        await settle()
        assert not waiting.done()
        field.deposit("danger", 1.0)
        await settle()
        assert not waiting.done()  # another kind does not wake it
        field.deposit("food", 2.0, payload="here")
        pheromone = await asyncio.wait_for(waiting, 1)
    assert (pheromone.kind, pheromone.intensity, pheromone.payload) == ("food", 2.0, "here")


async def test_threshold_yields_once_per_rise_across_it(field: PheromoneField, clock: FakeClock) -> None:
    source = from_pheromones(field, "alarm", threshold=1.5)
    field.deposit("alarm", 1.0, payload="a")  # 0 -> 1: below
    field.deposit("alarm", 1.0, payload="b")  # 1 -> 2: crosses
    field.deposit("alarm", 1.0, payload="c")  # 2 -> 3: already above, no new crossing
    clock.advance(10.0)
    field.deposit("alarm", 0.1, payload="d")  # 1.5 -> 1.6: still above (never fell below)
    clock.advance(20.0)  # 1.6 -> 0.4: decayed below the threshold
    field.deposit("alarm", 0.5, payload="e")  # 0.4 -> 0.9: below
    field.deposit("alarm", 1.0, payload="f")  # 0.9 -> 1.9: crosses again
    field.close()
    crossings = await drain(source)
    assert [p.payload for p in crossings] == ["b", "f"]
    assert crossings[0].intensity == pytest.approx(2.0)  # the sensed total after the deposit
    assert crossings[1].intensity == pytest.approx(1.9)
    assert crossings[1].at == clock.now


async def test_a_single_big_deposit_crosses(field: PheromoneField) -> None:
    source = from_pheromones(field, "alarm", threshold=5.0)
    field.deposit("alarm", 5.0)
    field.close()
    assert [p.intensity for p in await drain(source)] == [5.0]


async def test_closing_the_field_ends_every_source_and_refuses_new_ones(field: PheromoneField) -> None:
    sources = [from_pheromones(field, "a"), from_pheromones(field, "b", threshold=1.0)]
    readers = [asyncio.create_task(drain(source)) for source in sources]
    await settle()
    field.close()
    assert await asyncio.wait_for(asyncio.gather(*readers), 1) == [[], []]
    with pytest.raises(ClosedResourceError):
        from_pheromones(field, "a")
    # Deposits and sensing keep working on a closed field.
    assert field.deposit("a", 1.0) == pytest.approx(1.0)


async def test_closing_a_pheromone_source_stops_listening(field: PheromoneField) -> None:
    source = from_pheromones(field, "a")
    await source.aclose()  # type: ignore[attr-defined]
    field.deposit("a", 1.0)
    assert await drain(source) == []
    field.close()


# ------------------------------------------------------ integration: flux A talks to flux B


async def test_a_flux_deposits_its_error_signals_and_another_flux_collects_them() -> None:
    field = PheromoneField(half_life=60.0)

    def fragile(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"cannot handle {x}")
        return x

    flux_a = Flux.lift(fragile, FluxConfig(agent_id="flux-a", pheromone_field=field))
    # B listens for A's errors; its source subscribes now, before A runs.
    flux_b = Flux.lift(lambda pheromone: pheromone.payload, FluxConfig(agent_id="flux-b"))

    async with asyncio.timeout(5), flux_b.start(from_pheromones(field, "error")) as errors_seen:
        outputs_a = await drain(flux_a.start(range(10)))
        field.close()  # ends B's source once it has read every deposit
        signals = [signal async for signal in errors_seen]

    assert outputs_a == [1, 2, 4, 5, 7, 8]
    failed = [letter.event for letter in flux_a.dead_letters]
    assert failed == [0, 3, 6, 9]
    assert all(isinstance(signal, Signal) for signal in signals)
    assert [signal.kind for signal in signals] == ["error"] * len(failed)
    assert {signal.flux_id for signal in signals} == {"flux-a"}
    assert [signal.data["event"] for signal in signals] == failed
    assert [str(signal.data["error"]) for signal in signals] == [f"cannot handle {x}" for x in failed]
    assert field.sense("error") == pytest.approx(4.0, rel=1e-3)
