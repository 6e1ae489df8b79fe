"""``TaskRunner``: many workshop tasks over one purgatory, each owned and stopped on close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentflux import open_purgatory
from agentflux.workshop import TaskRecord, TaskRunner, WorkshopEvent, WorkshopFlux


async def until(record: TaskRecord, *statuses: str) -> None:
    async with asyncio.timeout(10):
        while record.status not in statuses:  # noqa: ASYNC110 - the record is plain data
            await asyncio.sleep(0.01)


async def test_tasks_run_side_by_side_and_each_event_is_seen() -> None:
    seen: list[tuple[str, str]] = []
    async with open_purgatory("memory://") as purgatory:
        runner = TaskRunner(purgatory, on_event=lambda record, event: seen.append((record.id, event.type.value)))
        first = await runner.submit("Add a login page", seed=1)
        gated = await runner.submit("Migrate the billing database", seed=2, gates=["integrating"])
        await until(first, "completed")
        await until(gated, "waiting")
        assert gated.pending_approval is not None
        await purgatory.resolve(gated.pending_approval, "reject")
        await until(gated, "rejected")
        assert {task for task, _ in seen} == {first.id, gated.id}
        assert (first.id, "task_completed") in seen
        detail = first.detail()
        assert detail["metrics"]["phases_completed"] == len(detail["plan"]["phases"])
        assert all(artifact["content"] for artifact in detail["artifacts"])
        await runner.aclose()


async def test_closing_stops_a_waiting_task_and_leaves_its_approval_in_the_store() -> None:
    async with open_purgatory("memory://") as purgatory:
        runner = TaskRunner(purgatory)
        record = await runner.submit("Deploy the payments service", seed=3, gates=["integrating"])
        await until(record, "waiting")
        await runner.aclose()
        assert record.status == "stopped"
        assert [t.id for t in await purgatory.list_pending()] == [record.pending_approval]


async def test_a_task_that_fails_is_recorded_and_logged_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = WorkshopFlux.run

    async def broken(self: WorkshopFlux) -> AsyncIterator[WorkshopEvent]:
        if "break" in (self.get_status()["task"] or ""):
            raise RuntimeError("the model went away")
        async for event in original(self):
            yield event

    monkeypatch.setattr(WorkshopFlux, "run", broken)
    async with open_purgatory("memory://") as purgatory:
        runner = TaskRunner(purgatory)
        failing = await runner.submit("break everything", seed=1)
        fine = await runner.submit("Add a login page", seed=1)
        await until(failing, "failed")
        await until(fine, "completed")
        assert failing.error == "RuntimeError: the model went away"
        assert "workshop task" in caplog.text
        await runner.aclose()


@pytest.mark.parametrize(
    ("description", "gates", "complaint"),
    [("", (), "non-empty"), ("x" * 2001, (), "at most"), ("ok", ("nowhere",), "nowhere")],
)
async def test_a_bad_task_is_refused(description: str, gates: Any, complaint: str) -> None:
    runner = TaskRunner(open_purgatory("memory://"))
    with pytest.raises(ValueError, match=complaint):
        await runner.submit(description, gates=gates)
    assert runner.tasks == {}
