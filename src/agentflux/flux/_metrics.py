"""Counters and windows a flux keeps, and the frozen snapshot it reports."""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from ._config import FluxState

__all__ = ["LATENCY_BUCKETS", "DeadLetter", "FluxMetrics", "LatencyHistogram", "MetricsRecorder"]

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Upper bounds (seconds) of the latency histogram buckets; a last +Inf bucket follows."""

_SAMPLES = 1024  # latency and completion-time samples kept
_TURBULENCE_WINDOW = 100  # recent calls turbulence looks at
_FLOW_WINDOW = 4.0  # seconds the flow moving average covers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the agent failed on, with the exception and when it happened."""

    event: object
    error: BaseException
    at: float


@dataclass(frozen=True, slots=True)
class FluxMetrics:
    """A snapshot of a flux's counters and topology.

    ``pressure`` is buffered outputs over ``buffer_size`` (0..1); ``flow`` is processed
    events per second over the last few seconds; ``turbulence`` is the error fraction of
    the last 100 events (0..1); latencies are in seconds.
    """

    state: FluxState
    events_in: int
    events_out: int
    errors: int
    dropped: int
    perturbations: int
    feedback_events: int
    semaphores_ejected: int
    semaphores_resumed: int
    entropy_remaining: float
    pressure: float
    flow: float
    turbulence: float
    latency_p50: float
    latency_p99: float


class LatencyHistogram:
    """Cumulative counts of agent-call latencies, kept only while an exporter needs them."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one call that took ``seconds``."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, calls at or below it)`` per bucket, ending with +Inf."""
        running = 0
        buckets = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class MetricsRecorder:
    """Mutable counters behind ``FluxMetrics``; cheap to update per event.

    ``processed`` counts stream events (source, feedback, perturbation, re-entry) and
    ``direct`` the calls made while no stream ran; successes are derived from them, so
    the hot path increments one counter. ``finishes`` holds ``(perf_counter, processed)``
    checkpoints for the flow average; errors keep the call count they happened at, so
    successes cost nothing for turbulence.
    """

    __slots__ = (
        "direct",
        "dropped",
        "error_marks",
        "errors",
        "feedback_events",
        "finishes",
        "histogram",
        "latencies",
        "perturbations",
        "processed",
        "semaphores_ejected",
        "semaphores_resumed",
    )

    def __init__(self) -> None:
        self.processed = 0
        self.direct = 0
        self.errors = 0
        self.dropped = 0
        self.perturbations = 0
        self.feedback_events = 0
        self.semaphores_ejected = 0
        self.semaphores_resumed = 0
        self.latencies: deque[float] = deque(maxlen=_SAMPLES)
        self.finishes: deque[tuple[float, int]] = deque(maxlen=_SAMPLES)
        self.error_marks: deque[int] = deque(maxlen=_TURBULENCE_WINDOW)
        # Set by an exporter; while set, every call is timed and counted here.
        self.histogram: LatencyHistogram | None = None

    @property
    def events_in(self) -> int:
        """Events that entered processing, streamed or direct."""
        return self.processed + self.direct

    def record(self, started: float, finished: float, *, streamed: bool = True) -> None:
        """Record one timed agent call (``streamed``: also a flow checkpoint)."""
        latency = finished - started
        self.latencies.append(latency)
        if streamed:
            self.finishes.append((finished, self.processed))
        if self.histogram is not None:
            self.histogram.observe(latency)

    def record_error(self, started: float, finished: float) -> None:
        """Record one failed agent call (after its retries)."""
        self.errors += 1
        self.latencies.append(finished - started)
        self.error_marks.append(self.events_in)
        if self.histogram is not None:
            self.histogram.observe(finished - started)

    def flow(self, now: float) -> float:
        """Events per second over the last ``_FLOW_WINDOW`` seconds (or since the first event,
        when that is more recent).

        Checkpoints are sampled, so the count since the base checkpoint is taken from
        ``processed`` (every event), not from the checkpoints themselves.
        """
        finishes = self.finishes
        if not finishes:
            return 0.0
        horizon = now - _FLOW_WINDOW
        base: tuple[float, int] | None = None
        for checkpoint in finishes:
            if checkpoint[0] > horizon:
                break
            base = checkpoint
        if base is not None:
            return max(0, self.processed - base[1]) / _FLOW_WINDOW
        first_time, first_count = finishes[0]
        elapsed = now - first_time
        # The first checkpoint's own event finished at first_time: it counts.
        return (self.processed - first_count + 1) / elapsed if elapsed > 0 else 0.0

    def checkpoint(self, now: float) -> None:
        """Mark the current count at ``now`` (a run ending), so flow decays once events stop."""
        self.finishes.append((now, self.processed))

    def turbulence(self) -> float:
        """Fraction of errors among the last ``_TURBULENCE_WINDOW`` events."""
        calls = self.events_in
        if not calls:
            return 0.0
        window = min(calls, _TURBULENCE_WINDOW)
        return sum(1 for mark in self.error_marks if mark > calls - window) / window

    def snapshot(
        self, state: FluxState, entropy_remaining: float, pressure: float, now: float, in_flight: int
    ) -> FluxMetrics:
        """Freeze the current figures (``now`` is a ``time.perf_counter()`` reading)."""
        ordered = sorted(self.latencies)
        return FluxMetrics(
            state=state,
            events_in=self.events_in,
            events_out=self.events_in - self.errors - self.semaphores_ejected - in_flight,
            errors=self.errors,
            dropped=self.dropped,
            perturbations=self.perturbations,
            feedback_events=self.feedback_events,
            semaphores_ejected=self.semaphores_ejected,
            semaphores_resumed=self.semaphores_resumed,
            entropy_remaining=entropy_remaining,
            pressure=pressure,
            flow=self.flow(now),
            turbulence=self.turbulence(),
            latency_p50=_percentile(ordered, 0.50),
            latency_p99=_percentile(ordered, 0.99),
        )
