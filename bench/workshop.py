"""CPU cost of a full five-phase workshop run with template dialogue (target: < 200 ms).

The runtime must never be the bottleneck next to an LLM: this measures process CPU time
(not wall time) of ``WorkshopFlux.start`` + ``run()`` to TASK_COMPLETED, median of runs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

from agentflux.workshop import WorkshopEventType, WorkshopFlux, WorkshopPhase, create_workshop

TASK = "Research how customers use saved searches and ship an improved version"  # routed to Scout: five phases


@dataclass
class WorkshopResults:
    cpu_ms_median: float
    cpu_ms_max: float
    events: int
    phases: int
    runs: int


async def _one_run(seed: int) -> tuple[float, int, int]:
    started = time.process_time()
    async with WorkshopFlux(create_workshop(), seed=seed, approval_gates=[WorkshopPhase.INTEGRATING]) as flux:
        plan = await flux.start(TASK)
        events = 0
        async for event in flux.run():
            events += 1
            if event.type is WorkshopEventType.APPROVAL_REQUESTED:
                await flux.resolve(str(event.metadata["token_id"]), "approve")
        phases = flux.get_metrics().phases_completed
    if len(plan.phases) != 5 or phases != 5:
        raise AssertionError(f"expected a five-phase run, got {len(plan.phases)} planned and {phases} completed")
    return (time.process_time() - started) * 1000, events, phases


def run(quick: bool = False) -> WorkshopResults:
    """Time several full runs (each in a fresh event loop) and return the median CPU ms."""
    runs = 5 if quick else 20
    samples = [asyncio.run(_one_run(seed)) for seed in range(runs)]
    cpu = [s[0] for s in samples]
    return WorkshopResults(statistics.median(cpu), max(cpu), samples[0][1], samples[0][2], runs)


def report(results: WorkshopResults) -> list[str]:
    """Markdown lines with the figure and the target."""
    r = results
    verdict = "PASS" if r.cpu_ms_median < 200 else "FAIL"
    return [
        "| workload | CPU per run (median / max) | events per run | target | result |",
        "|---|---|---|---|---|",
        f"| five-phase workshop run, template dialogue, approval gate ({r.runs} runs) | {r.cpu_ms_median:.1f} ms / "
        f"{r.cpu_ms_max:.1f} ms | {r.events} | < 200 ms | {verdict} |",
    ]


if __name__ == "__main__":
    print("\n".join(report(run(quick="--quick" in sys.argv))))
