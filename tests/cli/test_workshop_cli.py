"""``agentflux workshop run``: approvals, gates, usage errors, record/replay, the demo path (SPEC 6, 10 CLI)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agentflux.cli import main
from agentflux.cli._workshop import _ask
from workshop._helpers import FakeLLM, serving

TASK = "Research a caching layer for the search results"
# Keep a developer's LLM settings out of these runs: the default is template dialogue.
NO_LLM: dict[str, str | None] = {
    "AGENTFLUX_LLM_BASE_URL": None,
    "AGENTFLUX_LLM_MODEL": None,
    "AGENTFLUX_LLM_API_KEY": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_API_KEY": None,
    "AGENTFLUX_STORE": None,
}


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=NO_LLM)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/p.db"


def workshop_run(store: str, *extra: str, task: str = TASK) -> Result:
    return cli("workshop", "run", task, "--seed", "1", "--store", store, "--plain", *extra)


@contextmanager
def leaks_contained() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the ResourceWarnings of a run here (after a full GC) rather than in whichever test runs the GC next."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
        gc.collect()


def event_lines(output: str, kind: str) -> list[str]:
    return [line for line in output.splitlines() if line.split(" ", 1)[0] == kind]


def test_auto_approval_runs_to_completion(store: str) -> None:
    result = workshop_run(store, "--approve", "auto")
    assert result.exit_code == 0, (result.output, result.stderr)
    out = result.stdout
    assert event_lines(out, "task_assigned")
    assert len(event_lines(out, "task_completed")) == 1
    assert len(event_lines(out, "approval_requested")) == 1  # INTEGRATING is gated by default
    assert "auto-approving" in out
    assert "outcome: completed" in out
    assert "phases completed: 5" in out
    for title in ("Exploration notes", "Design", "Prototype", "Review", "Integration summary"):
        assert title in out
    assert result.stderr == ""


def test_reject_ends_the_task_as_rejected(store: str) -> None:
    result = workshop_run(store, "--approve", "reject")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "auto-rejecting" in result.stdout
    assert "outcome: rejected" in result.stdout
    assert "integrating" not in " ".join(event_lines(result.stdout, "phase_started"))


@pytest.mark.parametrize("flags", [("--approve", "defer"), ()])  # without a terminal, the default is defer
def test_defer_parks_the_task_and_says_how_to_resolve(store: str, flags: tuple[str, ...]) -> None:
    result = workshop_run(store, *flags)
    assert result.exit_code == 0, (result.output, result.stderr)
    out = result.stdout
    assert "agentflux purgatory resolve" in out
    assert event_lines(out, "task_completed") == []
    match = re.search(r"parked as semaphore (\w+)", out)
    assert match, out
    token_id = match.group(1)
    assert f"agentflux purgatory resolve {token_id} approve --store {store}" in out
    listed = cli("purgatory", "list", "--store", store)
    assert listed.exit_code == 0, listed.output
    assert token_id in listed.stdout.split()
    shown = cli("purgatory", "show", token_id, "--store", store)
    assert re.search(r"status: pending", shown.stdout), shown.stdout
    # the command it printed works
    resolved = cli("purgatory", "resolve", token_id, "approve", "--store", store)
    assert resolved.exit_code == 0, (resolved.output, resolved.stderr)
    assert re.search(r"status: resolved", cli("purgatory", "show", token_id, "--store", store).stdout)


def test_no_gate_runs_without_an_approval(store: str) -> None:
    result = workshop_run(store, "--no-gate", "--approve", "defer")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert event_lines(result.stdout, "approval_requested") == []
    assert "outcome: completed" in result.stdout


@pytest.mark.parametrize("task", ["", "   "])
def test_an_empty_task_is_a_usage_error(store: str, task: str) -> None:
    result = workshop_run(store, "--approve", "auto", task=task)
    assert result.exit_code == 2
    assert "Traceback" not in result.output + result.stderr
    assert "empty" in result.stderr


def test_a_bad_store_is_a_one_line_error(tmp_path: Path) -> None:
    result = workshop_run("bogus://nowhere", "--approve", "auto")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("agentflux: error: ")
    assert "bogus://nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_record_needs_an_llm(store: str, tmp_path: Path) -> None:
    result = workshop_run(store, "--approve", "auto", "--record", str(tmp_path / "rec.jsonl"))
    assert result.exit_code == 2
    assert "--record" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_reproduces_a_recorded_run(store: str, tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    with serving() as server:
        recorded = workshop_run(
            store, "--no-gate", "--llm-base-url", server.url, "--model", "m", "--record", str(recording)
        )
        assert recorded.exit_code == 0, (recorded.output, recorded.stderr)
        calls = len(server.exchanges)
        assert calls > 0
        replayed = workshop_run(store, "--no-gate", "--replay", str(recording))
        assert replayed.exit_code == 0, (replayed.output, replayed.stderr)
        assert len(server.exchanges) == calls  # the replay did not call the model
    spoken = event_lines(recorded.stdout, "dialogue")
    assert spoken
    assert all("Model line" in line for line in spoken)  # the server's words, not templates
    assert event_lines(replayed.stdout, "dialogue") == spoken
    assert "outcome: completed" in replayed.stdout


def test_a_diverging_replay_still_completes_with_visible_fallbacks(store: str, tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    with serving() as server:
        recorded = workshop_run(
            store, "--no-gate", "--llm-base-url", server.url, "--model", "m", "--record", str(recording)
        )
    assert recorded.exit_code == 0, (recorded.output, recorded.stderr)
    replayed = workshop_run(store, "--no-gate", "--replay", str(recording), task="Deploy something else")
    assert replayed.exit_code == 0, (replayed.output, replayed.stderr)
    assert "replay diverged" in replayed.stdout
    assert "outcome: completed" in replayed.stdout


def test_an_llm_run_closes_its_http_client(store: str) -> None:
    with serving() as server, leaks_contained() as caught:
        result = workshop_run(store, "--no-gate", "--llm-base-url", server.url, "--model", "m")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_record_run_closes_its_http_client(store: str, tmp_path: Path) -> None:
    """Regression: the client wrapped by RecordingLLMClient was never closed (unclosed transport)."""
    with serving() as server, leaks_contained() as caught:
        result = workshop_run(
            store, "--no-gate", "--llm-base-url", server.url, "--model", "m", "--record", str(tmp_path / "r.jsonl")
        )
    assert result.exit_code == 0, (result.output, result.stderr)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_the_demo_path_runs_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in NO_LLM}
    completed = subprocess.run(
        [sys.executable, "-m", "agentflux", "workshop", "run", TASK, "--approve", "auto", "--seed", "7", "--plain"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, (completed.stdout, completed.stderr)
    assert "outcome: completed" in completed.stdout
    assert event_lines(completed.stdout, "task_completed")
    assert (tmp_path / ".agentflux" / "purgatory.db").exists()  # the embedded default store
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(("answer", "outcome"), [("approve", "completed"), ("reject", "rejected")])
def test_prompt_asks_the_person_at_the_terminal(store: str, answer: str, outcome: str) -> None:
    result = CliRunner().invoke(
        main,
        ["workshop", "run", TASK, "--seed", "1", "--store", store, "--plain", "--approve", "prompt"],
        input=f"{answer}\n",
        env=NO_LLM,
    )
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "approve or reject" in result.output
    assert f"outcome: {outcome}" in result.stdout


def test_wait_resumes_when_another_terminal_answers(tmp_path: Path) -> None:
    """``--approve defer --wait`` in one process, ``agentflux purgatory resolve`` in another."""
    store = f"sqlite:///{tmp_path}/p.db"
    env = {k: v for k, v in os.environ.items() if k not in NO_LLM} | {"PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "agentflux", "workshop", "run", TASK, "--approve", "defer", "--wait"]
    with subprocess.Popen(
        [*command, "--seed", "3", "--plain", "--store", store],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as runner:
        try:
            assert runner.stdout is not None
            token_id = None
            for line in runner.stdout:  # blocks on the pipe; the per-test timeout bounds it
                match = re.search(r"agentflux purgatory resolve (\w+) approve", line)
                if match:
                    token_id = match.group(1)
                    break
            assert token_id, "the run never said how to answer"
            answered = cli("purgatory", "resolve", token_id, "approve", "--store", store)
            assert answered.exit_code == 0, (answered.output, answered.stderr)
            rest, errors = runner.communicate(timeout=30)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.communicate()
    assert runner.returncode == 0, errors
    assert "approval_resolved" in rest
    assert "outcome: completed" in rest


# ----------------------------------------------------------------------------- untrusted text

# Screen clear, window title, an OSC 52 clipboard write, CR, a C1 CSI, bidi override and
# isolate, a line separator and a lone surrogate: none may reach the terminal as it is.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\rfake\x9b31m\u202egnp.exe\u2066\u2028\ud800"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2066", "\u2028", "\ud800")


def assert_no_raw(text: str) -> None:
    for char in RAW:
        assert char not in text, (char, text)


@pytest.fixture(params=["plain", "live"])
def view(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Run with the one-line-per-event output, or with the live view (as in a terminal)."""
    if request.param == "plain":
        return ("--plain",)
    monkeypatch.setattr("agentflux.cli._workshop._is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside what the tests look for
    return ()


def hostile_run(store: str, view: tuple[str, ...], *extra: str, task: str = TASK) -> Result:
    return cli("workshop", "run", task, "--seed", "1", "--store", store, "--approve", "auto", *view, *extra)


def test_hostile_llm_dialogue_and_artifacts_are_shown_escaped(store: str, view: tuple[str, ...]) -> None:
    def hostile(index: int, body: dict[str, object]) -> tuple[int, object]:
        return 200, {
            "choices": [{"message": {"role": "assistant", "content": f"# Title {HOSTILE}\n\nline {index} {HOSTILE}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }

    with serving(FakeLLM(hostile)) as server:
        result = hostile_run(store, view, "--llm-base-url", server.url, "--model", "m", "--show-artifacts")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert_no_raw(result.output)
    assert "\\x1b]52;c;ZXZpbA==" in result.stdout
    assert "\\u202egnp.exe" in result.stdout
    assert "outcome: completed" in result.stdout


def test_a_fallback_reason_quoting_a_hostile_error_body_is_shown_escaped(store: str, view: tuple[str, ...]) -> None:
    body = f'{{"error": "{HOSTILE}"}}'.encode(errors="surrogatepass")  # raw bytes, not JSON escapes
    with serving(FakeLLM(lambda index, _: (400, body))) as server:
        result = hostile_run(store, view, "--llm-base-url", server.url, "--model", "m")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert_no_raw(result.output)
    assert "answered 400" in result.stdout  # the fallback is visible, with the body quoted escaped
    assert "\\x1b]0;owned\\x07" in result.stdout


@pytest.mark.parametrize(
    "task", ["Fix the [/] parser", "[bold red]loud[/] and [link=http://x]y", f"task {HOSTILE[:-1]}"]
)
def test_the_task_text_is_shown_as_written(store: str, view: tuple[str, ...], task: str) -> None:
    result = hostile_run(store, view, task=task)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert_no_raw(result.output)
    if "\x1b" not in task:
        assert task.split("]")[0] + "]" in result.stdout  # markup shown, not applied
    assert "outcome: completed" in result.stdout


def test_an_approval_prompt_is_shown_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def prompt(text: str, **kwargs: object) -> str:
        asked.append(text)
        return "approve"

    monkeypatch.setattr("agentflux.cli._workshop.click.prompt", prompt)
    assert asyncio.run(_ask("t", f"approve {HOSTILE}?")) == "approve"
    assert_no_raw(asked[0])
    assert "\\x1b[2J" in asked[0]
