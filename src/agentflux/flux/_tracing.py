"""OpenTelemetry spans around agent calls (the ``otel`` extra, imported only when enabled)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["traced"]

SPAN_NAME = "agentflux.event"


def traced(invoke: Callable[[Any], Awaitable[Any]], flux_id: str) -> Callable[[Any], Awaitable[Any]]:
    """Wrap ``invoke`` so that every call runs in its own span.

    The span carries the flux id; an exception is recorded on it and marks it as an
    error (OpenTelemetry's default), then propagates unchanged.
    """
    from opentelemetry import trace

    tracer = trace.get_tracer("agentflux")
    attributes = {"agentflux.flux_id": flux_id}

    async def invoke_in_span(x: Any) -> Any:
        with tracer.start_as_current_span(SPAN_NAME, attributes=attributes):
            return await invoke(x)

    return invoke_in_span
