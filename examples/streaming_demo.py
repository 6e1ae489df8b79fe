"""A small live stream: triage support tickets while an urgent one jumps the queue.

Run with ``make demo`` (or ``python examples/streaming_demo.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from agentflux import Flux, FluxConfig, agent

TICKETS = [
    "login page returns 500",
    "please update my billing address",
    "export to CSV is slow",
    "password reset email never arrives",
    "dark mode request",
    "API rate limit too low for our plan",
    "invoice shows the wrong currency",
    "mobile app crashes on start",
]


async def ticket_feed(gap: float) -> AsyncIterator[str]:
    """Tickets arriving with a gap between them, like a live queue."""
    for ticket in TICKETS:
        await asyncio.sleep(gap)
        yield ticket


@agent
async def triage(ticket: str) -> str:
    """Pretend to think, then label the ticket."""
    await asyncio.sleep(0.01)
    urgent = any(word in ticket for word in ("500", "crash", "never", "URGENT"))
    label = "P1" if urgent else "P3"
    return f"[{label}] {ticket}"


@agent
def route(labelled: str) -> str:
    team = "on-call" if labelled.startswith("[P1]") else "support queue"
    return f"{labelled}  ->  {team}"


async def main() -> None:
    pipeline = Flux.lift(triage, FluxConfig(agent_id="triage")) | Flux.lift(
        route, FluxConfig(agent_id="route")
    )
    started = time.perf_counter()
    print("agentflux demo: two-stage ticket pipeline over a live feed\n")
    async with pipeline.start(ticket_feed(gap=0.03)) as outputs:
        count = 0
        async for line in outputs:
            count += 1
            print(f"  {time.perf_counter() - started:6.3f}s  {line}")
            if count == 3:
                # While the stream flows, an urgent request is injected ahead of the queue.
                t0 = time.perf_counter()
                answer = await pipeline.invoke("URGENT: checkout is down for every customer")
                waited = (time.perf_counter() - t0) * 1000
                print(f"  perturbation answered in {waited:.1f} ms: {answer}")
    print()
    for metrics in pipeline.metrics():
        print(
            f"  {metrics.state.name:<8} in={metrics.events_in} out={metrics.events_out} "
            f"errors={metrics.errors} perturbations={metrics.perturbations} "
            f"p50={metrics.latency_p50 * 1000:.1f}ms p99={metrics.latency_p99 * 1000:.1f}ms"
        )
    print(f"\ndone in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
