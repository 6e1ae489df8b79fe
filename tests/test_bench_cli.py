"""``agentflux bench``: the flux workloads shipped in the package, run on this machine (SPEC 6)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflux.benchmarks import FLUX_WORKLOADS, QUICK, run_flux_workloads
from agentflux.benchmarks._report import report, verdicts
from agentflux.cli import main

# A run small enough for the test suite that still exercises every workload and design.
TINY = dataclasses.replace(
    QUICK,
    events=300,
    repeats=1,
    eos_runs=3,
    perturb_calls=20,
    perturb_warmup=2,
    perturb_repeats=1,
    mem_items=100,
    mem_item_size=1024,
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agentflux.benchmarks.QUICK", TINY)
    monkeypatch.setattr("agentflux.benchmarks.FULL", TINY)


@pytest.mark.timeout(120)
def test_every_workload_runs_and_reports_ratios_and_targets(tiny: None, tmp_path: Path) -> None:
    written = tmp_path / "out" / "bench.md"
    result = CliRunner().invoke(main, ["bench", "--write", str(written)])
    assert result.exit_code == 0, (result.output, result.stderr)
    out = result.stdout
    for key, name in FLUX_WORKLOADS.items():
        assert f"workload {key}: {name}" in result.stderr
    assert "| workload | measure | (a) hand loop | (b) asyncio.Queue | (c) aiostream | (d) agentflux |" in out
    for row in ("1. 1-stage throughput", "2. 3-stage pipeline", "3. end-of-stream", "4. perturbation p99",
                "5. peak memory", "6. tasks left after `break`"):  # fmt: skip
        assert row in out
    assert "## Targets" in out
    assert "- Command: `agentflux bench" in out
    assert written.read_text(encoding="utf-8").strip() == out.strip()


@pytest.mark.parametrize("flags", [("--full", "--only", "1"), ("--only", "3, 6", "--repeats", "2")])
def test_a_choice_of_workloads_runs_only_those(tiny: None, flags: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, ["bench", *flags])
    assert result.exit_code == 0, (result.output, result.stderr)
    started = [line for line in result.stderr.splitlines() if line.startswith("[bench] workload")]
    chosen = [key.strip() for key in flags[flags.index("--only") + 1].split(",")]
    assert [line.split()[2].rstrip(":") for line in started] == chosen


@pytest.mark.parametrize("only", ["7", "1,x", ","])
def test_an_unknown_workload_is_a_usage_error(only: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--only", only])
    assert result.exit_code == 2
    assert "choose from 1 (1-stage throughput)" in result.stderr


def test_strict_fails_when_a_target_is_missed(tiny: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agentflux.benchmarks._report.END_OF_STREAM_MAX_MS", 0.0)  # nothing can meet it
    result = CliRunner().invoke(main, ["bench", "--only", "3", "--strict"])
    assert result.exit_code == 1
    assert "**FAIL**" in result.stdout


def test_wrong_outputs_stop_the_run_with_status_2(tiny: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentflux.benchmarks import BenchError

    def broken(*args: object) -> None:
        raise BenchError("(d) agentflux produced 3 outputs, expected 300")

    monkeypatch.setattr("agentflux.benchmarks._run.run_throughput", broken)
    result = CliRunner().invoke(main, ["bench", "--only", "1"])
    assert result.exit_code == 2
    assert "benchmark stopped: (d) agentflux produced 3 outputs" in result.stderr


def test_the_library_api_refuses_an_unknown_workload() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        run_flux_workloads(TINY, ["9"])


def test_a_report_of_one_workload_has_its_rows() -> None:
    results = run_flux_workloads(TINY, ["6"], progress=lambda message: None)
    assert all(v.passed for v in verdicts(results))
    from datetime import UTC, datetime

    text = report(results, "agentflux bench --only 6", datetime.now(UTC), 1.0, 1.0)
    assert "6. source closed after `break`" in text


@pytest.mark.timeout(120)
def test_without_aiostream_the_other_designs_still_run() -> None:
    code = (
        "import sys, dataclasses; sys.modules['aiostream'] = None\n"
        "import agentflux.benchmarks as b\n"
        "tiny = dataclasses.replace(b.QUICK, events=200, repeats=1)\n"
        "b.QUICK = tiny\n"
        "from agentflux.cli import main\n"
        "main(['bench', '--only', '1,6'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert "| (a) hand loop | (b) asyncio.Queue | (d) agentflux |" in done.stdout
    assert "aiostream not installed, so (c) did not run" in done.stdout
