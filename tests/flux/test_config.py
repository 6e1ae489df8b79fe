"""``FluxConfig``: SPEC defaults, validation naming the field, frozen and keyword-only."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from agentflux import Flux, FluxConfig

SPEC_DEFAULTS: dict[str, Any] = {
    "entropy_budget": 1.0,
    "entropy_decay": 0.0,
    "max_events": None,
    "buffer_size": 100,
    "drop_policy": "block",
    "concurrency": 1,
    "ordered": True,
    "on_error": "skip",
    "retries": 0,
    "retry_backoff": 0.1,
    "feedback_fraction": 0.0,
    "feedback_transform": None,
    "max_feedback_hops": 16,
    "seed": None,
    "dead_letter_size": 1000,
    "emit_pheromones": True,
    "pheromone_field": None,
    "trace_enabled": False,
    "agent_id": None,
    "purgatory": None,
}


class Field:
    def deposit(self, kind: str, intensity: float, payload: object) -> None:
        pass


BAD_VALUES: list[tuple[str, Any]] = [
    ("entropy_budget", -1.0),
    ("entropy_budget", math.nan),
    ("entropy_budget", math.inf),
    ("entropy_budget", "1.0"),
    ("entropy_budget", None),
    ("entropy_decay", -0.01),
    ("entropy_decay", math.nan),
    ("entropy_decay", math.inf),
    ("entropy_decay", "0"),
    ("max_events", 0),
    ("max_events", -5),
    ("max_events", 2.5),
    ("max_events", "10"),
    ("buffer_size", 0),
    ("buffer_size", -1),
    ("buffer_size", 1.5),
    ("buffer_size", None),
    ("buffer_size", "100"),
    ("drop_policy", "drop"),
    ("drop_policy", "BLOCK"),
    ("drop_policy", ""),
    ("drop_policy", None),
    ("concurrency", 0),
    ("concurrency", -2),
    ("concurrency", 2.0),
    ("concurrency", None),
    ("concurrency", "4"),
    ("ordered", "yes"),
    ("ordered", None),
    ("on_error", "ignore"),
    ("on_error", "RAISE"),
    ("on_error", None),
    ("retries", -1),
    ("retries", 1.5),
    ("retries", None),
    ("retry_backoff", -0.1),
    ("retry_backoff", math.nan),
    ("retry_backoff", math.inf),
    ("retry_backoff", "0.1"),
    ("feedback_fraction", -0.1),
    ("feedback_fraction", 1.01),
    ("feedback_fraction", math.nan),
    ("feedback_fraction", "0.5"),
    ("feedback_transform", 42),
    ("feedback_transform", "upper"),
    ("max_feedback_hops", -1),
    ("max_feedback_hops", 2.5),
    ("max_feedback_hops", None),
    ("seed", 1.5),
    ("seed", "42"),
    ("dead_letter_size", -1),
    ("dead_letter_size", 10.0),
    ("dead_letter_size", None),
    ("emit_pheromones", "yes"),
    ("emit_pheromones", None),
    ("pheromone_field", object()),
    ("pheromone_field", 42),
    ("trace_enabled", "no"),
    ("trace_enabled", None),
    ("agent_id", ""),
    ("agent_id", 42),
]


GOOD_VALUES: list[tuple[str, Any]] = [
    ("entropy_budget", 0.5),
    ("entropy_budget", 10),
    ("entropy_decay", 0),
    ("entropy_decay", 0.25),
    ("max_events", 1),
    ("max_events", 10**9),
    ("buffer_size", 1),
    ("drop_policy", "block"),
    ("drop_policy", "drop_oldest"),
    ("drop_policy", "drop_newest"),
    ("concurrency", 1),
    ("concurrency", 64),
    ("ordered", False),
    ("on_error", "skip"),
    ("on_error", "raise"),
    ("retries", 0),
    ("retries", 5),
    ("retry_backoff", 0),
    ("retry_backoff", 2.5),
    ("feedback_fraction", 0),
    ("feedback_fraction", 1),
    ("feedback_fraction", 0.5),
    ("feedback_transform", str.upper),
    ("max_feedback_hops", 0),
    ("seed", 0),
    ("seed", -7),
    ("dead_letter_size", 0),
    ("emit_pheromones", False),
    ("pheromone_field", Field()),
    ("trace_enabled", True),
    ("agent_id", "my-flux"),
]


def test_defaults_match_the_spec() -> None:
    config = FluxConfig()
    actual = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    assert actual == SPEC_DEFAULTS


def test_fields_are_exactly_the_spec_fields() -> None:
    assert [field.name for field in dataclasses.fields(FluxConfig)] == list(SPEC_DEFAULTS)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_value_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field) as excinfo:
        FluxConfig(**{field: value})
    # The message says what was wrong with the value, not only which field.
    assert len(str(excinfo.value)) > len(field) + 10


@pytest.mark.parametrize(("field", "value"), GOOD_VALUES, ids=[f"{f}={v!r}" for f, v in GOOD_VALUES])
def test_valid_value_is_accepted(field: str, value: Any) -> None:
    config = FluxConfig(**{field: value})
    assert getattr(config, field) == value


@pytest.mark.parametrize(("field", "value"), [("buffer_size", 0), ("concurrency", 0), ("on_error", "x")])
def test_replace_revalidates(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(FluxConfig(), **{field: value})


def test_config_is_frozen() -> None:
    config = FluxConfig(buffer_size=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.buffer_size = 10  # type: ignore[misc]
    assert config.buffer_size == 5


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        FluxConfig(1.0)  # type: ignore[misc]


def test_configs_compare_by_value() -> None:
    assert FluxConfig(buffer_size=3, seed=1) == FluxConfig(buffer_size=3, seed=1)
    assert FluxConfig(buffer_size=3) != FluxConfig(buffer_size=4)


def test_lift_rejects_a_config_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        Flux.lift(lambda x: x, {"buffer_size": 3})  # type: ignore[arg-type]


def test_lift_keeps_the_config() -> None:
    config = FluxConfig(buffer_size=7, agent_id="named")
    flux = Flux.lift(lambda x: x, config)
    assert flux.config is config
