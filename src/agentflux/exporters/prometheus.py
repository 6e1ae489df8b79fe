"""Prometheus exposition of flux metrics (the ``prometheus`` extra).

::

    from prometheus_client import start_http_server
    from agentflux.prometheus import FluxCollector

    collector = FluxCollector(flux_a, pipeline_b)   # registers with the default registry
    start_http_server(9100)

Every flux is one ``flux`` label value. Counters: events in/out, errors, drops,
perturbations, feedback events, semaphores ejected/resumed. Gauges: pressure, flow,
turbulence, entropy remaining, state. Histogram: latency per processed event (from the
first agent call to the last retry). While a flux is collected, every event is timed so
the histogram is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by the import-without-extras test
    raise ImportError(
        "agentflux.prometheus needs prometheus_client: pip install 'agentflux[prometheus]'"
    ) from exc

from ..flux._config import FluxState
from ..flux._flux import FluxAgent
from ..flux._metrics import LatencyHistogram
from ..flux._pipeline import FluxPipeline

__all__ = ["FluxCollector"]

_COUNTERS = (
    ("events_in", "Events that entered processing"),
    ("events_out", "Events the agent processed successfully"),
    ("errors", "Events the agent failed on"),
    ("dropped", "Outputs dropped by the drop policy"),
    ("perturbations", "Perturbations processed"),
    ("feedback_events", "Outputs fed back as inputs"),
    ("semaphores_ejected", "Events handed to a human"),
    ("semaphores_resumed", "Semaphores resumed after a human answered"),
)
_GAUGES = (
    ("pressure", "Buffered outputs over buffer size (0..1)"),
    ("flow", "Events per second (moving average)"),
    ("turbulence", "Error fraction of recent events (0..1)"),
    ("entropy_remaining", "Event budget left"),
)


class FluxCollector(Collector):
    """Collects the metrics of the fluxes it was given, at scrape time."""

    def __init__(
        self,
        *fluxes: FluxAgent[Any, Any] | FluxPipeline[Any, Any],
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "agentflux",
    ) -> None:
        self._namespace = namespace
        self._fluxes: list[FluxAgent[Any, Any]] = []
        self.add(*fluxes)
        if registry is not None:
            registry.register(self)

    def add(self, *fluxes: FluxAgent[Any, Any] | FluxPipeline[Any, Any]) -> None:
        """Collect these fluxes (the stages of a pipeline) too.

        Raises:
            TypeError: something that is not a flux or a pipeline.
        """
        for item in fluxes:
            stages: Iterable[object]
            if isinstance(item, FluxPipeline):
                stages = item.stages
            elif isinstance(item, FluxAgent):
                stages = (item,)
            else:
                raise TypeError(f"FluxCollector collects fluxes and pipelines, got {item!r}")
            for flux in stages:
                if not isinstance(flux, FluxAgent):
                    raise TypeError(f"FluxCollector collects fluxes and pipelines of fluxes, got a stage {flux!r}")
                if flux._metrics.histogram is None:
                    flux._metrics.histogram = LatencyHistogram()
                self._fluxes.append(flux)

    def collect(self) -> Iterator[Any]:
        """Yield one family per figure, with a sample per flux."""
        ns = self._namespace
        snapshots = [(flux.id, flux.metrics(), flux._metrics.histogram) for flux in self._fluxes]
        for name, doc in _COUNTERS:
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=["flux"])
            for flux_id, metrics, _ in snapshots:
                family.add_metric([flux_id], getattr(metrics, name))
            yield family
        for name, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"{ns}_{name}", doc, labels=["flux"])
            for flux_id, metrics, _ in snapshots:
                gauge.add_metric([flux_id], getattr(metrics, name))
            yield gauge
        state = GaugeMetricFamily(f"{ns}_state", "1 for the state the flux is in", labels=["flux", "state"])
        for flux_id, metrics, _ in snapshots:
            for member in FluxState:
                state.add_metric([flux_id, member.value], 1.0 if metrics.state is member else 0.0)
        yield state
        latency = HistogramMetricFamily(
            f"{ns}_latency_seconds", "Agent call latency", labels=["flux"]
        )
        for flux_id, _, histogram in snapshots:
            if histogram is None:  # pragma: no cover - add() always sets one
                continue
            buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
                       for bound, count in histogram.cumulative()]
            latency.add_metric([flux_id], buckets, histogram.total)
        yield latency
