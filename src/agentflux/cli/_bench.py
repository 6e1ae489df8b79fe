"""``agentflux bench``: the flux benchmark workloads on this machine, as a markdown report."""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from ._common import fail

__all__ = ["bench"]


@click.command()
@click.option("--full", is_flag=True, help="The whole run (100k events, 9 repeats: about two minutes).")
@click.option("--only", metavar="LIST", default=None, help="Comma-separated workloads to run, e.g. 1,4 (1-6).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Repeats of workloads 1, 2 and 4.")
@click.option(
    "--write", type=click.Path(dir_okay=False, writable=True), default=None, help="Also write the report here."
)
@click.option("--strict", is_flag=True, help="Exit with status 1 when agentflux misses a target.")
def bench(full: bool, only: str | None, repeats: int | None, write: str | None, strict: bool) -> None:
    """Measure agentflux against a hand-written loop, an asyncio.Queue design and aiostream
    (when installed) on this machine, and print the table of ratios.

    Quick by default (5,000 events, 3 repeats: well under a minute); --full for the whole
    run. Progress goes to stderr, the report to stdout.
    """
    from ..benchmarks import FLUX_WORKLOADS, FULL, QUICK, BenchError, run_flux_workloads
    from ..benchmarks._report import report, verdicts

    settings = FULL if full else QUICK
    if repeats is not None:
        settings = dataclasses.replace(settings, repeats=repeats, perturb_repeats=repeats)
    chosen = list(FLUX_WORKLOADS) if only is None else [key.strip() for key in only.split(",") if key.strip()]
    unknown = [key for key in chosen if key not in FLUX_WORKLOADS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown workload(s) {', '.join(unknown) or '(none given)'}; choose from "
            + ", ".join(f"{key} ({name})" for key, name in FLUX_WORKLOADS.items()),
            param_hint="--only",
        )
    started_at, started, cpu_started = datetime.now(UTC), time.perf_counter(), time.process_time()
    try:
        results = run_flux_workloads(settings, chosen)
    except BenchError as exc:
        fail(f"benchmark stopped: {exc}", code=2)
        return  # pragma: no cover - fail() exits
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    command = " ".join(["agentflux bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else "agentflux bench"
    text = report(results, command, started_at, elapsed, cpu)
    click.echo(text)
    if write:
        Path(write).parent.mkdir(parents=True, exist_ok=True)
        Path(write).write_text(text, encoding="utf-8")
        click.echo(f"wrote {write}", err=True)
    if strict and not all(verdict.passed for verdict in verdicts(results)):
        sys.exit(1)
