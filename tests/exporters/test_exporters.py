"""Metrics exporters: the Prometheus collector, OpenTelemetry spans, and the core without extras."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentflux import Flux, FluxConfig, FluxState
from agentflux.prometheus import FluxCollector
from agentflux.sources import open_channel
from sources._helpers import Tracked, drain, settle

# ------------------------------------------------------------------------------- helpers


def fragile(x: int) -> int:
    """Fails on multiples of 3."""
    if x % 3 == 0:
        raise ValueError(f"cannot handle {x}")
    return x


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, keyed by name and labels."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels} in {sorted(k[0] for k in samples)}"
    return samples[key]


# ---------------------------------------------------------------------------- prometheus


async def test_collector_exports_counters_gauges_state_and_latency_after_a_run() -> None:
    registry = CollectorRegistry()
    flux = Flux.lift(fragile, FluxConfig(agent_id="exported"))
    FluxCollector(flux, registry=registry)

    assert await flux.invoke(1) == 1  # a direct call while dormant
    sender, receiver = open_channel(10)
    async with asyncio.timeout(5), flux.start(receiver) as out:
        assert await flux.invoke(100) == 100  # a perturbation while the source is idle
        for x in range(10):
            await sender.send(x)
        sender.close()
        outputs = [y async for y in out]
    assert outputs == [1, 2, 4, 5, 7, 8]

    samples = scrape(registry)
    flux_label = {"flux": "exported"}
    agent_calls = 1 + 1 + 10
    errors = 4  # 0, 3, 6, 9
    assert sample(samples, "agentflux_events_in_total", **flux_label) == agent_calls
    assert sample(samples, "agentflux_events_out_total", **flux_label) == agent_calls - errors
    assert sample(samples, "agentflux_errors_total", **flux_label) == errors
    assert sample(samples, "agentflux_perturbations_total", **flux_label) == 1
    assert sample(samples, "agentflux_dropped_total", **flux_label) == 0
    assert sample(samples, "agentflux_feedback_events_total", **flux_label) == 0
    assert sample(samples, "agentflux_semaphores_ejected_total", **flux_label) == 0
    assert sample(samples, "agentflux_semaphores_resumed_total", **flux_label) == 0

    assert sample(samples, "agentflux_pressure", **flux_label) == 0.0
    assert sample(samples, "agentflux_entropy_remaining", **flux_label) == 1.0
    assert sample(samples, "agentflux_turbulence", **flux_label) == pytest.approx(errors / agent_calls)
    assert sample(samples, "agentflux_flow", **flux_label) >= 0.0

    for state in FluxState:
        expected = 1.0 if state is FluxState.STOPPED else 0.0
        assert sample(samples, "agentflux_state", flux="exported", state=state.value) == expected

    assert sample(samples, "agentflux_latency_seconds_count", **flux_label) == agent_calls
    assert sample(samples, "agentflux_latency_seconds_bucket", flux="exported", le="+Inf") == agent_calls
    assert sample(samples, "agentflux_latency_seconds_sum", **flux_label) > 0.0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "agentflux_latency_seconds_bucket"
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "histogram buckets must be cumulative"


async def test_collector_matches_the_flux_metrics_snapshot() -> None:
    registry = CollectorRegistry()
    flux = Flux.lift(fragile, FluxConfig(agent_id="snap", feedback_fraction=0.0))
    FluxCollector(flux, registry=registry)
    await drain(flux.start(range(1, 30)))
    metrics = flux.metrics()
    samples = scrape(registry)
    for name in ("events_in", "events_out", "errors", "dropped", "perturbations"):
        assert sample(samples, f"agentflux_{name}_total", flux="snap") == getattr(metrics, name)
    assert sample(samples, "agentflux_latency_seconds_count", flux="snap") == metrics.events_in


async def test_collector_shows_a_running_flux_with_its_pressure() -> None:
    registry = CollectorRegistry()
    source = Tracked([1, 2, 3], then_block=True)  # idle after three items
    flux = Flux.lift(lambda x: x, FluxConfig(agent_id="busy", buffer_size=4))
    FluxCollector(flux, registry=registry)
    async with asyncio.timeout(5), flux.start(source) as out:
        await settle(10)  # let the flux process what the source has; nobody consumes
        samples = scrape(registry)
        assert sample(samples, "agentflux_state", flux="busy", state="flowing") == 1.0
        assert sample(samples, "agentflux_state", flux="busy", state="stopped") == 0.0
        assert sample(samples, "agentflux_pressure", flux="busy") == pytest.approx(3 / 4)
        assert sample(samples, "agentflux_events_in_total", flux="busy") == 3
        assert await anext(out) == 1
        assert sample(scrape(registry), "agentflux_pressure", flux="busy") == pytest.approx(2 / 4)


async def test_collector_exports_every_stage_of_a_pipeline() -> None:
    registry = CollectorRegistry()
    first = Flux.lift(lambda x: x + 1, FluxConfig(agent_id="stage-one"))
    second = Flux.lift(fragile, FluxConfig(agent_id="stage-two"))
    third = Flux.lift(lambda x: x * 10, FluxConfig(agent_id="stage-three"))
    FluxCollector(first | second | third, registry=registry)
    outputs = await drain((first | second | third).start(range(6)))  # second sees 1..6
    assert outputs == [10, 20, 40, 50]

    samples = scrape(registry)
    assert sample(samples, "agentflux_events_in_total", flux="stage-one") == 6
    assert sample(samples, "agentflux_events_in_total", flux="stage-two") == 6
    assert sample(samples, "agentflux_errors_total", flux="stage-two") == 2  # 3 and 6
    assert sample(samples, "agentflux_events_in_total", flux="stage-three") == 4
    for stage in ("stage-one", "stage-two", "stage-three"):
        assert sample(samples, "agentflux_latency_seconds_count", flux=stage) == sample(
            samples, "agentflux_events_in_total", flux=stage
        )


async def test_add_collects_more_fluxes_and_namespace_renames_the_metrics() -> None:
    registry = CollectorRegistry()
    one = Flux.lift(lambda x: x, FluxConfig(agent_id="one"))
    two = Flux.lift(lambda x: x, FluxConfig(agent_id="two"))
    collector = FluxCollector(one, registry=registry, namespace="myapp")
    collector.add(two)
    await drain(one.start([1]))
    await drain(two.start([1, 2]))
    samples = scrape(registry)
    assert sample(samples, "myapp_events_in_total", flux="one") == 1
    assert sample(samples, "myapp_events_in_total", flux="two") == 2
    assert not any(name.startswith("agentflux_") for name, _ in samples)


def test_collector_without_a_registry_is_not_registered_but_collects() -> None:
    flux = Flux.lift(lambda x: x, FluxConfig(agent_id="loose"))
    collector = FluxCollector(flux, registry=None)
    names = {family.name for family in collector.collect()}
    assert {"agentflux_events_in", "agentflux_state", "agentflux_latency_seconds"} <= names


@pytest.mark.parametrize("bad", ["flux", 42, None, object(), Flux])
def test_collector_rejects_what_is_not_a_flux_or_a_pipeline(bad: object) -> None:
    registry = CollectorRegistry()
    with pytest.raises(TypeError, match="flux"):
        FluxCollector(bad, registry=registry)  # type: ignore[arg-type]
    assert generate_latest(registry) == b""  # nothing half-registered
    collector = FluxCollector(registry=registry)
    with pytest.raises(TypeError):
        collector.add(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- opentelemetry


@pytest.fixture(scope="module")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process-wide tracer provider (settable once per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another test installed a non-SDK tracer provider"
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # stop recording spans of later test modules


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter


def our_spans(exporter: InMemorySpanExporter, flux_id: str) -> list[ReadableSpan]:
    return [
        span for span in exporter.get_finished_spans()
        if (span.attributes or {}).get("agentflux.flux_id") == flux_id
    ]


def traced_work(x: int) -> int:
    """Tags the span it runs in with its input, and fails on negative inputs."""
    trace.get_current_span().set_attribute("test.input", x)
    if x < 0:
        raise ValueError(f"negative {x}")
    return x


async def test_tracing_makes_one_span_per_processed_event_with_error_status_on_failures(
    spans: InMemorySpanExporter,
) -> None:
    flux = Flux.lift(traced_work, FluxConfig(agent_id="traced", trace_enabled=True))
    sender, receiver = open_channel(10)
    async with asyncio.timeout(5), flux.start(receiver) as out:
        assert await flux.invoke(100) == 100  # perturbation
        with pytest.raises(ValueError, match="negative -100"):
            await flux.invoke(-100)  # failing perturbation
        for x in (1, -2, 3):
            await sender.send(x)
        sender.close()
        assert [y async for y in out] == [1, 3]

    recorded = our_spans(spans, "traced")
    assert len(recorded) == 5 == flux.metrics().events_in
    assert {span.name for span in recorded} == {"agentflux.event"}
    by_input = {(span.attributes or {})["test.input"]: span for span in recorded}
    assert sorted(by_input) == [-100, -2, 1, 3, 100]
    for x, span in by_input.items():
        if x < 0:
            assert span.status.status_code is StatusCode.ERROR, f"span of {x}"
            assert any(event.name == "exception" for event in span.events)
        else:
            assert span.status.status_code is not StatusCode.ERROR, f"span of {x}"


async def test_tracing_with_concurrency_still_makes_one_span_per_event(spans: InMemorySpanExporter) -> None:
    async def slow_work(x: int) -> int:
        await asyncio.sleep(0.001)
        return traced_work(x)

    flux = Flux.lift(slow_work, FluxConfig(agent_id="traced-many", trace_enabled=True, concurrency=4))
    assert await drain(flux.start(range(-3, 17))) == list(range(17))
    recorded = our_spans(spans, "traced-many")
    assert sorted((span.attributes or {})["test.input"] for span in recorded) == list(range(-3, 17))
    assert sum(span.status.status_code is StatusCode.ERROR for span in recorded) == 3


async def test_no_spans_without_trace_enabled(spans: InMemorySpanExporter) -> None:
    flux = Flux.lift(traced_work, FluxConfig(agent_id="untraced"))
    assert await drain(flux.start([1, 2, 3])) == [1, 2, 3]
    assert our_spans(spans, "untraced") == []
    assert spans.get_finished_spans() == ()


# ----------------------------------------------------------------------- without extras


def run_python(*pieces: str) -> subprocess.CompletedProcess[str]:
    code = "\n".join(textwrap.dedent(piece) for piece in pieces)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_SMALL_FLUX = """
    import asyncio
    import agentflux
    import agentflux.sources
    from agentflux import Flux, FluxConfig, FluxState
    from agentflux.sources import EventBus, from_iterable, mapped, open_channel

    async def main():
        flux = Flux.lift(lambda x: x + 1, FluxConfig(agent_id="core"))
        async with flux.start(mapped(from_iterable(range(5)), lambda x: x * 2)) as out:
            outputs = [y async for y in out]
        assert outputs == [1, 3, 5, 7, 9], outputs
        assert flux.state is FluxState.STOPPED, flux.state
        sender, receiver = open_channel(1)
        sender.send_nowait("ok")
        sender.close()
        assert [x async for x in receiver] == ["ok"]

    asyncio.run(main())
"""


def test_the_core_imports_and_runs_without_the_extras() -> None:
    result = run_python(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if the extras were not installed
        sys.modules["opentelemetry"] = None
        """,
        _SMALL_FLUX,
        """
        try:
            import agentflux.prometheus
        except ImportError as exc:
            assert "agentflux[prometheus]" in str(exc), str(exc)
        else:
            raise AssertionError("agentflux.prometheus imported without prometheus_client")

        try:
            FluxConfig(trace_enabled=True)
        except ValueError as exc:
            assert "trace_enabled" in str(exc), str(exc)
            assert "otel" in str(exc), str(exc)
        else:
            raise AssertionError("trace_enabled=True accepted without OpenTelemetry")
        FluxConfig(trace_enabled=False)
        print("core-ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "core-ok"


def test_the_core_does_not_import_the_extras_until_asked() -> None:
    result = run_python(
        _SMALL_FLUX,
        """
        import sys
        loaded = [name for name in ("prometheus_client", "opentelemetry") if name in sys.modules]
        assert not loaded, f"imported eagerly: {loaded}"
        print("lazy-ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy-ok"
