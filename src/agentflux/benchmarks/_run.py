"""Run some of the six flux workloads into one ``Results``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._workloads import (
    Results,
    Settings,
    log,
    run_cleanup,
    run_end_of_stream,
    run_memory,
    run_perturbation,
    run_throughput,
)

__all__ = ["FLUX_WORKLOADS", "run_flux_workloads"]

FLUX_WORKLOADS = {
    "1": "1-stage throughput",
    "2": "3-stage pipeline throughput",
    "3": "end-of-stream latency",
    "4": "perturbation latency",
    "5": "peak memory with a slow consumer",
    "6": "cleanup after break",
}


def _run_one(key: str, results: Results) -> None:
    settings = results.settings
    if key == "1":
        results.throughput1 = run_throughput(1, settings)
    elif key == "2":
        results.throughput3 = run_throughput(3, settings)
    elif key == "3":
        results.end_of_stream = run_end_of_stream(settings)
    elif key == "4":
        results.perturbation = run_perturbation(settings)
    elif key == "5":
        results.memory = run_memory(settings)
    else:
        results.cleanup = run_cleanup(settings)


def run_flux_workloads(
    settings: Settings, workloads: Sequence[str] = tuple(FLUX_WORKLOADS), *, progress: Callable[[str], None] = log
) -> Results:
    """Run ``workloads`` (keys of ``FLUX_WORKLOADS``, in that order) with ``settings``.

    Raises:
        ValueError: an unknown workload.
        BenchError: a design gave wrong outputs (wrong count or order).
    """
    unknown = [key for key in workloads if key not in FLUX_WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(FLUX_WORKLOADS)}")
    results = Results(settings)
    for key in workloads:
        progress(f"workload {key}: {FLUX_WORKLOADS[key]}")
        _run_one(key, results)
    return results
