"""Flux configuration and lifecycle states."""

from __future__ import annotations

import enum
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DropPolicy", "FluxConfig", "FluxState", "OnError"]

DropPolicy = Literal["block", "drop_oldest", "drop_newest"]
OnError = Literal["skip", "raise"]


class FluxState(enum.Enum):
    """Lifecycle of a flux.

    ::

        DORMANT --start--> FLOWING <--> PERTURBED
                              |  source ends
                              v
                           DRAINING --work done--> STOPPED --start--> FLOWING
        any running state --stop/error--> STOPPED
        any running state --budget exhausted--> COLLAPSED --reset--> DORMANT
    """

    DORMANT = "dormant"
    FLOWING = "flowing"
    PERTURBED = "perturbed"
    DRAINING = "draining"
    STOPPED = "stopped"
    COLLAPSED = "collapsed"

    @property
    def is_running(self) -> bool:
        """True while a stream is being processed (invoke becomes a perturbation)."""
        return self in _RUNNING


_RUNNING = frozenset({FluxState.FLOWING, FluxState.PERTURBED, FluxState.DRAINING})

_DROP_POLICIES = ("block", "drop_oldest", "drop_newest")
_ON_ERROR = ("skip", "raise")


def _check(field: str, ok: bool, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"FluxConfig.{field} must be {allowed}, got {value!r}")


def _otel_installed() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class FluxConfig:
    """How a flux processes its stream. Every field is validated on creation.

    Raises:
        ValueError: a field is out of range; the message names the field and the range.
    """

    entropy_budget: float = 1.0
    """Budget spent by ``entropy_decay`` per event; only bounds a stream when decay > 0."""
    entropy_decay: float = 0.0
    """Budget spent per processed event (0 never collapses)."""
    max_events: int | None = None
    """Process at most this many events, then collapse (None: unbounded)."""
    buffer_size: int = 100
    """Outputs buffered for the consumer before ``drop_policy`` applies."""
    drop_policy: DropPolicy = "block"
    """When the output buffer is full: wait, drop the oldest, or drop the newest output."""
    concurrency: int = 1
    """Agent invocations in flight at once."""
    ordered: bool = True
    """With concurrency > 1, emit outputs in input order (False: as they complete)."""
    on_error: OnError = "skip"
    """``skip``: dead-letter the event and go on; ``raise``: stop and raise to the consumer."""
    retries: int = 0
    """Extra attempts for an event whose agent call raised."""
    retry_backoff: float = 0.1
    """Seconds before the first retry, doubled per attempt."""
    feedback_fraction: float = 0.0
    """Fraction of outputs fed back as inputs, in [0, 1]."""
    feedback_transform: Callable[[Any], Any] | None = None
    """Applied to an output before it re-enters as an input."""
    max_feedback_hops: int = 16
    """An event that already went round this many times is not fed back again."""
    seed: int | None = None
    """Seed of the feedback decisions (None: nondeterministic)."""
    dead_letter_size: int = 1000
    """How many failed events ``flux.dead_letters`` keeps (oldest dropped first)."""
    emit_pheromones: bool = True
    """Emit signals to observers."""
    pheromone_field: Any = None
    """Also deposit signals into this field (an object with ``deposit(kind, intensity, payload)``)."""
    trace_enabled: bool = False
    """Emit OpenTelemetry spans per event (needs the ``otel`` extra)."""
    agent_id: str | None = None
    """Stable name of the flux (default: derived from the agent's name)."""
    purgatory: Any = None
    """Where tokens ejected by the agent are parked."""

    def __post_init__(self) -> None:
        _check("entropy_budget", _is_real(self.entropy_budget) and self.entropy_budget > 0,
               "a finite number > 0", self.entropy_budget)
        _check("entropy_decay", _is_real(self.entropy_decay) and self.entropy_decay >= 0,
               "a finite number >= 0", self.entropy_decay)
        _check("max_events", self.max_events is None or (_is_int(self.max_events) and self.max_events >= 1),
               "None or an int >= 1", self.max_events)
        _check("buffer_size", _is_int(self.buffer_size) and self.buffer_size >= 1,
               "an int >= 1", self.buffer_size)
        _check("drop_policy", self.drop_policy in _DROP_POLICIES,
               "one of " + ", ".join(map(repr, _DROP_POLICIES)), self.drop_policy)
        _check("concurrency", _is_int(self.concurrency) and 1 <= self.concurrency <= 10_000,
               "an int in [1, 10000]", self.concurrency)
        _check("ordered", isinstance(self.ordered, bool), "a bool", self.ordered)
        _check("on_error", self.on_error in _ON_ERROR,
               "one of " + ", ".join(map(repr, _ON_ERROR)), self.on_error)
        _check("retries", _is_int(self.retries) and 0 <= self.retries <= 100,
               "an int in [0, 100]", self.retries)
        _check("retry_backoff", _is_real(self.retry_backoff) and self.retry_backoff >= 0,
               "a finite number >= 0", self.retry_backoff)
        _check("feedback_fraction", _is_real(self.feedback_fraction) and 0 <= self.feedback_fraction <= 1,
               "a number in [0, 1]", self.feedback_fraction)
        _check("feedback_transform", self.feedback_transform is None or callable(self.feedback_transform),
               "None or a callable", self.feedback_transform)
        _check("max_feedback_hops", _is_int(self.max_feedback_hops) and self.max_feedback_hops >= 0,
               "an int >= 0", self.max_feedback_hops)
        _check("seed", self.seed is None or _is_int(self.seed), "None or an int", self.seed)
        _check("dead_letter_size", _is_int(self.dead_letter_size) and self.dead_letter_size >= 0,
               "an int >= 0", self.dead_letter_size)
        _check("emit_pheromones", isinstance(self.emit_pheromones, bool), "a bool", self.emit_pheromones)
        _check("pheromone_field",
               self.pheromone_field is None or callable(getattr(self.pheromone_field, "deposit", None)),
               "None or an object with deposit(kind, intensity, payload)", self.pheromone_field)
        _check("trace_enabled", isinstance(self.trace_enabled, bool), "a bool", self.trace_enabled)
        _check("trace_enabled", not self.trace_enabled or _otel_installed(),
               "False unless OpenTelemetry is installed (pip install 'agentflux[otel]')", self.trace_enabled)
        _check("purgatory", self.purgatory is None or callable(getattr(self.purgatory, "save", None)),
               "None or a Purgatory (see open_purgatory())", self.purgatory)
        _check("agent_id", self.agent_id is None or (isinstance(self.agent_id, str) and self.agent_id != ""),
               "None or a non-empty str", self.agent_id)

    @property
    def event_limit(self) -> int | None:
        """Events a stream may process before it collapses (None: unbounded)."""
        limits = []
        if self.max_events is not None:
            limits.append(self.max_events)
        if self.entropy_decay > 0:
            # The tolerance keeps 1.0 / 0.01 at 100 events despite float rounding.
            limits.append(math.floor(self.entropy_budget / self.entropy_decay + 1e-9))
        return min(limits) if limits else None
