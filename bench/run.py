"""Run every workload for every design in one run and print a markdown report.

Usage (from the repository root)::

    .venv/bin/python -m bench.run                  # full run (about two minutes)
    .venv/bin/python -m bench.run --quick          # smoke test, well under 20 s
    .venv/bin/python -m bench.run --write docs/benchmarks.md

Designs: (a) a hand-written ``async for`` loop, (b) producer/worker tasks over bounded
``asyncio.Queue``s with a separate perturbation lane, (c) aiostream ``map(task_limit=1)``,
(d) agentflux. Within each repeat the designs run interleaved (the starting design rotates
from one repeat to the next), every trial checks its outputs, and ratios are taken between
designs of the same repeat; the report shows medians over repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agentflux.benchmarks import FLUX_WORKLOADS, FULL, QUICK, BenchError, Results
from agentflux.benchmarks._report import report, verdicts
from agentflux.benchmarks._run import _run_one
from agentflux.benchmarks._workloads import log

perf_counter = time.perf_counter


WORKLOADS = {
    **FLUX_WORKLOADS,  # shipped in the package: agentflux bench runs these
    "7": "sources: merged() and EventBus fan-out",
    "8": "purgatory: durable park+resolve, group commit, race, crash",
    "9": "workshop: CPU per five-phase run",
    "10": "web: SSE viewers and the resolve endpoint",
    "11": "scale-out: Redis source and sink, 1/2/4 workers, Postgres purgatory",
}

# Workloads 7-11 report their own sections, appended after the stream runtime report.
SECTIONS = {
    "7": ("Sources", "bench.sources"),
    "8": ("Purgatory (SQLite, WAL, every commit fsynced before it is acknowledged)", "bench.purgatory"),
    "9": ("Workshop", "bench.workshop"),
    "10": ("Web (agentflux serve)", "bench.web"),
    "11": ("Scale-out (Redis Streams, workers, Postgres)", "bench.scale"),
}


def run_workload(key: str, results: Results) -> None:
    """Run workload ``key`` (see ``WORKLOADS``) and store its measurements in ``results``."""
    if key in FLUX_WORKLOADS:
        _run_one(key, results)
    elif key not in SECTIONS:  # run by run_section()
        raise ValueError(f"unknown workload {key!r}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats (CI smoke test)")
    parser.add_argument("--write", metavar="PATH", help="also write the markdown report to PATH")
    parser.add_argument("--only", metavar="LIST", help="comma-separated workloads to run, e.g. 1,4")
    parser.add_argument("--repeats", type=int, help="override the repeat count of workloads 1, 2 and 4")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(args_list)
    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            raise SystemExit("--repeats must be at least 1")
        settings = dataclasses.replace(settings, repeats=args.repeats, perturb_repeats=args.repeats)
    chosen = sorted(WORKLOADS, key=int) if not args.only else [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"--only: unknown workload(s) {', '.join(unknown)}; choose from 1-11")

    started_at = datetime.now(UTC)
    started = perf_counter()
    cpu_started = time.process_time()
    results = Results(settings)
    sections: list[str] = []
    sections_passed = True
    try:
        for workload in chosen:
            log(f"workload {workload}: {WORKLOADS[workload]}")
            if workload in SECTIONS:
                lines, passed = run_section(workload, args.quick)
                sections.extend(lines)
                sections_passed = sections_passed and passed
            else:
                run_workload(workload, results)
    except (BenchError, AssertionError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 2
    elapsed = perf_counter() - started
    cpu = time.process_time() - cpu_started

    command = " ".join([".venv/bin/python -m bench.run", *args_list])
    text = report(results, command, started_at, elapsed, cpu, sections=bool(sections))
    if sections:
        text = text.rstrip("\n") + "\n\n" + "\n".join(sections) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text, encoding="utf-8")
        log(f"wrote {args.write}")
    log(f"done in {elapsed:.1f} s")
    if args.strict and not (sections_passed and all(v.passed for v in verdicts(results))):
        return 1
    return 0


def run_section(key: str, quick: bool) -> tuple[list[str], bool]:
    """Run one of the workloads 7-11; return its markdown section and whether its targets passed."""
    import importlib

    title, module_name = SECTIONS[key]
    module = importlib.import_module(module_name)
    lines = module.report(module.run(quick=quick))
    passed = not any("FAIL" in line for line in lines)
    doc = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    return [f"## {title}", "", doc, "", *lines, ""], passed


if __name__ == "__main__":
    raise SystemExit(main())
