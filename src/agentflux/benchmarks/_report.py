"""The markdown report: the results table, the targets with PASS/FAIL, and the details."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..flux._config import FluxConfig
from ._workloads import CLEANUP_LABELS, DESIGNS, HAVE_AIOSTREAM, LABELS, Results, percentile

__all__ = ["Verdict", "report", "verdicts"]

# Targets (from the issue).
THROUGHPUT_MAX_RATIO = 4.0  # agentflux cost per event vs the hand loop
END_OF_STREAM_MAX_MS = 0.05
PERTURBATION_MAX_RATIO = 1.5  # agentflux p50/p99 vs the Queue design
MEMORY_SLACK = 1.25  # allowed over buffer_size + read-ahead items


def _aiostream_version() -> str:
    if not HAVE_AIOSTREAM:
        return "not installed, so (c) did not run"
    from importlib.metadata import version

    return version("aiostream")


def _agentflux_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentflux")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def memory_bound_items() -> float:
    """Items agentflux may hold: buffer_size + concurrency + 16 read-ahead, with slack."""
    config = FluxConfig()
    return MEMORY_SLACK * (config.buffer_size + config.concurrency + 16)


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool


def num(value: float) -> str:
    """Three significant figures, no scientific notation for the sizes seen here."""
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 0.01:
        return f"{value:.3f}"
    return f"{value:.4f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def mark(passed: bool) -> str:
    return "PASS" if passed else "**FAIL**"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "**no**"


def verdicts(results: Results) -> list[Verdict]:
    out: list[Verdict] = []
    for tp in (results.throughput1, results.throughput3):
        if tp is not None:
            r = tp.median_ratio("d")
            out.append(
                Verdict(
                    f"{tp.stages}-stage cost per event ≤ {THROUGHPUT_MAX_RATIO:g}x the hand loop",
                    f"{ratio(r)} ({num(tp.median_us('d'))} vs {num(tp.median_us('a'))} µs/event; "
                    f"fastest repeats {ratio(tp.best_ratio('d'))})",
                    r <= THROUGHPUT_MAX_RATIO,
                )
            )
    if results.end_of_stream is not None:
        ms = results.end_of_stream.median_ms("d")
        out.append(
            Verdict(
                f"end-of-stream latency < {END_OF_STREAM_MAX_MS:g} ms",
                f"{num(ms)} ms",
                ms < END_OF_STREAM_MAX_MS,
            )
        )
    pt = results.perturbation
    if pt is not None:
        for mode in ("idle", "busy"):
            for stat in ("p50", "p99"):
                r = pt.pooled_ratio(stat, mode)
                ours, theirs = pt.pooled_us(stat, mode, "d"), pt.pooled_us(stat, mode, "b")
                out.append(
                    Verdict(
                        f"perturbation {stat}, {mode} source ≤ {PERTURBATION_MAX_RATIO:g}x the Queue design",
                        f"{ratio(r)} ({num(ours)} vs {num(theirs)} µs)",
                        r <= PERTURBATION_MAX_RATIO,
                    )
                )
    mem = results.memory
    if mem is not None:
        bound = memory_bound_items()
        held = mem.median_items("d")
        out.append(
            Verdict(
                f"memory bounded with a 10x slower consumer (≤ {bound:.0f} items' worth, not {mem.items:,})",
                f"{num(mem.median_kb('d'))} KB ≈ {held:.0f} items",
                held <= bound,
            )
        )
    if results.cleanup is not None:
        for variant, how in (("d", "bare `break`"), ("d_with", "`break` inside `async with`")):
            c = results.cleanup[variant]
            out.append(
                Verdict(
                    f"after a {how}: zero tasks left and source closed",
                    f"{c.tasks_left} tasks left, source closed: {yes_no(c.source_closed)}",
                    c.tasks_left == 0 and c.source_closed,
                )
            )
    return out


def _cells(values: dict[str, str]) -> str:
    return " | ".join(values.get(d, "n/a") for d in DESIGNS)


def results_table(results: Results) -> list[str]:
    s = results.settings
    lines = [
        "| workload | measure | " + " | ".join(LABELS[d] for d in DESIGNS) + " |",
        "|---|---|" + "---:|" * len(DESIGNS),
    ]
    for tp in (results.throughput1, results.throughput3):
        if tp is None:
            continue
        title = "1. 1-stage throughput" if tp.stages == 1 else "2. 3-stage pipeline throughput"
        cells = {d: f"{ratio(tp.best_ratio(d))} ({num(tp.min_us(d))} µs)" for d in DESIGNS}
        lines.append(f"| {title}, {tp.events:,} events | ratio vs (a), fastest repeats (µs/event) | {_cells(cells)} |")
        cells = {d: f"{ratio(tp.median_ratio(d))} ({num(tp.median_us(d))} µs)" for d in DESIGNS}
        lines.append(f"| {title}, {tp.events:,} events | median of per-repeat ratios (µs/event) | {_cells(cells)} |")
    eos = results.end_of_stream
    if eos is not None:
        cells = {d: f"{num(eos.median_ms(d))} ms" for d in DESIGNS}
        lines.append(
            f"| 3. end-of-stream latency, median of {eos.runs} runs x {eos.events} events "
            f"| source return → loop end | {_cells(cells)} |"
        )
    pt = results.perturbation
    if pt is not None:
        for mode in ("idle", "busy"):
            for stat in ("p50", "p99"):
                cells = {
                    "b": f"1.00x ({num(pt.pooled_us(stat, mode, 'b'))} µs)",
                    "d": f"{ratio(pt.pooled_ratio(stat, mode))} ({num(pt.pooled_us(stat, mode, 'd'))} µs)",
                }
                lines.append(
                    f"| 4. perturbation {stat}, {mode} source, {pt.calls * pt.repeats:,} calls "
                    f"({pt.repeats} trials of {pt.calls}) | ratio vs (b) (µs) | {_cells(cells)} |"
                )
    mem = results.memory
    if mem is not None:
        cells = {d: f"{num(mem.median_kb(d))} KB (≈ {mem.median_items(d):.0f} items)" for d in DESIGNS}
        lines.append(
            f"| 5. peak memory, {mem.items:,} x {mem.item_size // 1024} KB items, consumer 10x slower "
            f"| tracemalloc peak | {_cells(cells)} |"
        )
    cl = results.cleanup
    if cl is not None:
        tasks = {d: str(cl[d].tasks_left) for d in DESIGNS if d != "d"}
        tasks["d"] = f"{cl['d'].tasks_left} (`async with`: {cl['d_with'].tasks_left})"
        closed = {d: yes_no(cl[d].source_closed) for d in DESIGNS if d != "d"}
        closed["d"] = f"{yes_no(cl['d'].source_closed)} (`async with`: {yes_no(cl['d_with'].source_closed)})"
        lines.append(f"| 6. tasks left after `break` | after gc + {s.settle_passes} loop passes | {_cells(tasks)} |")
        lines.append(f"| 6. source closed after `break` | source's `finally` ran | {_cells(closed)} |")
    return lines


def spread(values: Sequence[float], scale: float = 1.0) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{num(low * scale)} / {num(mid * scale)} / {num(high * scale)}"


def details(results: Results) -> list[str]:
    lines: list[str] = []
    for tp in (results.throughput1, results.throughput3):
        if tp is None:
            continue
        lines += [
            f"**{tp.stages}-stage throughput** ({tp.events:,} events x {len(tp.ratios['a'])} repeats; "
            "min / median / max over repeats; loop passes counted in one more, untimed run)",
            "",
            "| design | µs/event | ratio vs (a) | loop passes per 1,000 events |",
            "|---|---:|---:|---:|",
            *(
                f"| {LABELS[d]} | {spread(tp.per_event_us[d])} | {spread(tp.ratios[d])} "
                f"| {num(tp.passes_per_1000[d])} |"
                for d in DESIGNS
            ),
            "",
        ]
    eos = results.end_of_stream
    if eos is not None:
        lines += [
            f"**End-of-stream latency** ({eos.runs} runs x {eos.events} events; ms; loop passes from the "
            "source's return to the end of the consumer's loop, counted in one more, untimed run)",
            "",
            "| design | min | median | p90 | max | loop passes |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for d in DESIGNS:
            v = [x * 1e3 for x in eos.latencies_s[d]]
            lines.append(
                f"| {LABELS[d]} | {num(min(v))} | {num(statistics.median(v))} | {num(percentile(v, 0.9))} "
                f"| {num(max(v))} | {eos.passes[d]} |"
            )
        lines.append("")
    pt = results.perturbation
    if pt is not None:
        lines += [
            f"**Perturbation latency** ({pt.calls} calls per trial after {results.settings.perturb_warmup} "
            f"warm-up calls, {pt.repeats} repeats; the results table pools the calls of all trials; "
            "here: min / median / max of the per-trial percentiles, µs)",
            "",
            "| source | statistic | (b) asyncio.Queue | (d) agentflux | ratio (d)/(b) |",
            "|---|---|---:|---:|---:|",
        ]
        for mode in ("idle", "busy"):
            for stat in ("p50", "p99"):
                table = pt.p50 if stat == "p50" else pt.p99
                ratios = [d / b for d, b in zip(table[mode]["d"], table[mode]["b"], strict=True)]
                lines.append(
                    f"| {mode} | {stat} | {spread(table[mode]['b'], 1e6)} | {spread(table[mode]['d'], 1e6)} "
                    f"| {spread(ratios)} |"
                )
        busy_items = pt.source_items["busy"]
        lines += [
            "",
            f"The busy source streamed {min(busy_items):,}-{max(busy_items):,} items to the consumer "
            "while each trial's perturbations ran.",
            "",
        ]
    mem = results.memory
    if mem is not None:
        lines += [
            f"**Peak memory**: agentflux may hold `buffer_size` (100) + `concurrency` (1) + 16 read-ahead "
            f"items; the target allows {MEMORY_SLACK:g}x that ({memory_bound_items():.0f} items of "
            f"{mem.item_size // 1024} KB). Median over {len(mem.peaks['a'])} repeat(s).",
            "",
        ]
    cl = results.cleanup
    if cl is not None:
        lines += [
            "**Cleanup after `break`** (10 items taken from an endless source, references dropped, "
            f"`gc.collect()`, then {results.settings.settle_passes} `await asyncio.sleep(0)`)",
            "",
            "| variant | tasks left | source closed | loop passes until clean |",
            "|---|---:|---|---:|",
            *(
                f"| {CLEANUP_LABELS[v]} | {r.tasks_left} | {yes_no(r.source_closed)} "
                f"| {r.clean_after if r.clean_after is not None else 'not within 100'} |"
                for v, r in cl.items()
            ),
            "",
        ]
    return lines


def machine_note() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()}-core VM ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, aiostream {_aiostream_version()}, "
        f"agentflux {_agentflux_version()}"
    )


def source_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "no commit yet"


def report(
    results: Results, command: str, started: datetime, elapsed: float, cpu: float, *, sections: bool = False
) -> str:
    """The whole markdown document; ``elapsed`` and ``cpu`` are the run's wall and CPU seconds;
    ``sections``: more sections (with their own targets) will follow it."""
    verdict_list = verdicts(results)
    lines = [
        "# agentflux benchmarks",
        "",
        "Generated by the command below; rerun it rather than editing by hand.",
        "",
        f"- Command: `{command}`" + (" (from the repository root)" if command.startswith(".venv") else ""),
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')} (run took {elapsed:.0f} s; the benchmark "
        f"process had the CPU {cpu / elapsed:.0%} of that time, load average at the end "
        f"{os.getloadavg()[0]:.1f}: less than ~95% means other processes competed for the CPU)",
        f"- Machine: {machine_note()}; a shared, noisy VM: compare ratios within one run, "
        "not absolute times across runs",
        f"- Source revision: {source_revision()} (working tree)",
        "- Method: the designs run interleaved within each repeat (the first design rotates between "
        "repeats); each trial runs in a fresh event loop except the end-of-stream runs; every trial "
        "checks the count and order of its outputs. Throughput ratios are the median of the ratios "
        "taken within each repeat; the ratio of each design's fastest repeat is shown as well, since "
        "this machine's speed changes in phases shorter than one trial and a repeat whose trials fall "
        "in different phases can show several times the real ratio. Perturbation percentiles are "
        "taken over the calls of all trials pooled.",
        "",
        "## Results",
        "",
        "(a) `async for x in src: out.append(await agent.invoke(x))`; "
        "(b) producer task → `asyncio.Queue(100)` → worker task(s) → `asyncio.Queue(100)` → consumer, "
        "perturbations through a separate unbounded lane and one wake-up `Event`; "
        "(c) aiostream `stream.map(src, agent.invoke, task_limit=1)` per stage; "
        "(d) `Flux.lift(agent)` / `Flux.lift(f) | Flux.lift(g) | Flux.lift(h)` "
        "with the default `FluxConfig`.",
        "(a) and (c) have no perturbation lane: n/a.",
        "",
        *results_table(results),
        "",
        "## Targets",
        "",
        "| target | agentflux | result |",
        "|---|---|---|",
        *(f"| {v.target} | {v.measured} | {mark(v.passed)} |" for v in verdict_list),
        "",
        f"{sum(v.passed for v in verdict_list)} of {len(verdict_list)} of these targets met."
        + (" The sections after the details judge their own targets (look for FAIL there)." if sections else ""),
        "",
        "## Details",
        "",
        *details(results),
    ]
    return "\n".join(lines).rstrip() + "\n"
