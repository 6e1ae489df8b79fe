"""``agentflux workshop resume TOKEN_ID``: a parked task taken up again from the store (issue 13.4)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import Result

from agentflux import SemaphoreReason, open_purgatory
from semaphores._helpers import make_token

from .test_workshop_cli import TASK, cli  # TASK has five phases


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/p.db"


def parked(store: str, *, view: tuple[str, ...] = ("--plain",)) -> tuple[str, str]:
    """Run a task to its gate and leave it parked: (token id, the run's output)."""
    result = cli("workshop", "run", TASK, "--seed", "1", "--store", store, "--approve", "defer", *view)
    assert result.exit_code == 0, (result.output, result.stderr)
    match = re.search(r"parked as semaphore (\w+)", result.stdout)
    assert match, result.stdout
    assert f"agentflux workshop resume {match.group(1)} --store {store}" in result.stdout
    return match.group(1), result.stdout


def resume(store: str, token_id: str, *extra: str) -> Result:
    return cli("workshop", "resume", token_id, "--store", store, "--plain", *extra)


def test_resume_after_an_answer_from_elsewhere_carries_the_task_to_its_end(store: str) -> None:
    token_id, _first = parked(store)
    assert cli("purgatory", "resolve", token_id, "approve", "--store", store).exit_code == 0
    result = resume(store, token_id)
    assert result.exit_code == 0, (result.output, result.stderr)
    out = result.stdout
    assert "resuming task" in out
    assert "4 artifacts so far" in out
    assert "approval_resolved" in out
    assert "outcome: completed" in out
    assert "approvals 1/1" in out
    assert len(re.findall(r"^  \[\w+\] ", out, re.MULTILINE)) == 5  # every artifact, the first four included
    again = resume(store, token_id)
    assert again.exit_code == 1
    assert "has already ended (completed)" in again.stderr


@pytest.mark.parametrize(("mode", "outcome"), [("auto", "completed"), ("reject", "rejected")])
def test_resume_answers_a_pending_approval_as_told(store: str, mode: str, outcome: str) -> None:
    token_id, _ = parked(store)
    result = resume(store, token_id, "--approve", mode)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert f"outcome: {outcome}" in result.stdout
    shown = cli("purgatory", "show", token_id, "--store", store).stdout
    assert f"--approve {mode}" in shown  # the audit names how it was answered


def test_resume_in_the_live_view(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    token_id, _ = parked(store)
    monkeypatch.setattr("agentflux.cli._workshop._is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("workshop", "resume", token_id, "--store", store, "--approve", "auto")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "outcome: completed" in result.stdout


def test_resume_deferred_again_leaves_the_task_parked(store: str) -> None:
    token_id, _ = parked(store)
    result = resume(store, token_id, "--approve", "defer")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "parked, waiting for approval" in result.stdout
    assert resume(store, token_id, "--approve", "auto").exit_code == 0


def test_a_cancelled_approval_ends_the_resumed_task_as_cancelled(store: str) -> None:
    token_id, _ = parked(store)
    assert cli("purgatory", "cancel", token_id, "--store", store).exit_code == 0
    result = resume(store, token_id)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "outcome: cancelled" in result.stdout


def test_resume_of_an_unknown_token_is_a_one_line_error(store: str) -> None:
    result = resume(store, "0" * 32)
    assert result.exit_code == 1
    assert result.stderr.startswith("agentflux: error:")
    assert len(result.stderr.strip().splitlines()) == 1


async def _foreign(store: str) -> str:
    async with open_purgatory(store) as purgatory:
        token = await purgatory.save(make_token("not a workshop's", reason=SemaphoreReason.APPROVAL_NEEDED))
        return token.id


def test_resume_of_a_token_that_is_no_workshop_approval_is_refused(store: str) -> None:
    import asyncio

    token_id = asyncio.run(_foreign(store))
    result = resume(store, token_id)
    assert result.exit_code == 1
    assert "is not a workshop task's approval" in result.stderr


def test_resume_from_the_gates_own_copy_when_the_tasks_table_has_none(store: str, tmp_path: Path) -> None:
    import sqlite3

    token_id, _ = parked(store)
    with sqlite3.connect(tmp_path / "p.db") as conn:
        conn.execute("DELETE FROM tasks")
    result = resume(store, token_id, "--approve", "auto")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "outcome: completed" in result.stdout


def test_resume_of_an_approval_the_task_has_moved_past_is_refused(store: str, tmp_path: Path) -> None:
    import json
    import sqlite3

    token_id, _ = parked(store)
    with sqlite3.connect(tmp_path / "p.db") as conn:
        (data,) = conn.execute("SELECT data FROM tasks").fetchone()
        snapshot = json.loads(data)
        snapshot["state"]["parked_token"] = "a" * 32
        conn.execute("UPDATE tasks SET data = ?", (json.dumps(snapshot),))
    result = resume(store, token_id)
    assert result.exit_code == 1
    assert f"has moved past approval {token_id}; it waits on {'a' * 32}" in result.stderr


async def _claimed_elsewhere(store: str, token_id: str) -> None:
    async with open_purgatory(store) as purgatory:
        await purgatory.resolve(token_id, "approve", claim=True)


def test_resume_of_an_approval_another_process_is_resuming_is_refused(store: str) -> None:
    import asyncio

    token_id, _ = parked(store)
    asyncio.run(_claimed_elsewhere(store, token_id))
    result = resume(store, token_id)
    assert result.exit_code == 1
    assert "already taken up by another process" in result.stderr
