"""A claim to resume is a lease (issue 15.1): a process killed between claiming a resolution
and completing its resumption never loses the human's answer; a live one keeps its claim."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import signal
import sqlite3
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentflux import Flux, FluxConfig, SemaphoreMixin, SemaphoreReason, open_purgatory
from agentflux.semaphores.stores import _sqlite
from conftest import collect

from ._helpers import make_token

LEASE = 0.3  # seconds: short, so that a dead holder's claim lapses within the test

CHILD = r"""
import asyncio, sys
from agentflux import Flux, FluxConfig, Purgatory, SemaphoreMixin, open_purgatory

url, point = sys.argv[1], sys.argv[2]


class Holding(Purgatory):
    async def claim_resume(self, token_id):
        claimed = await super().claim_resume(token_id)
        if claimed and point == "claimed":
            print("claimed", flush=True)
            await asyncio.Event().wait()  # killed here: claimed, never resumed
        return claimed


class Agent(SemaphoreMixin):
    async def invoke(self, x):
        return x

    async def resume(self, frozen_state, human_input):
        print("resuming", flush=True)
        await asyncio.Event().wait()  # killed here: inside resume


async def idle():
    await asyncio.Event().wait()
    yield None


async def main():
    purgatory = Holding(open_purgatory(url).store, claim_lease=float(sys.argv[3]))
    async with purgatory:
        flux = Flux.lift(Agent(), FluxConfig(purgatory=purgatory, agent_id="svc"))
        async for _ in flux.start(idle()):
            pass


asyncio.run(main())
"""


class Asker(SemaphoreMixin):
    """Asks about every event; a resumption returns ``x:answer`` (``hold``: after a wait)."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.resumed: list[tuple[Any, Any]] = []
        self.resuming = asyncio.Event()

    async def invoke(self, x: Any) -> Any:
        return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"approve {x}?", {"x": x})

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        state = self.restore_state(frozen_state)
        self.resumed.append((state, human_input))
        self.resuming.set()
        await asyncio.sleep(self.hold)
        return f"{state['x']}:{human_input}"


async def idle() -> AsyncIterator[Any]:
    await asyncio.Event().wait()
    yield None  # pragma: no cover - never reached


def claim_row(path: Path, token_id: str) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row: tuple[Any, ...] = conn.execute(
            "SELECT resumed, claim_expires, claim_origin FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
    return row


async def park_and_resolve(url: str) -> str:
    """A token parked by flux ``svc`` and resolved from elsewhere (as by the CLI)."""
    async with open_purgatory(url) as purgatory:
        assert await collect(Flux.lift(Asker(), FluxConfig(purgatory=purgatory, agent_id="svc")).start([4])) == []
        (token,) = await purgatory.list_pending()
        await purgatory.resolve(token.id, "go")
        return token.id


async def run_until_output(url: str, agent: Asker, within: float) -> Any:
    async with open_purgatory(url, claim_lease=LEASE) as purgatory:
        flux = Flux.lift(agent, FluxConfig(purgatory=purgatory, agent_id="svc"))
        async with flux.start(idle()) as stream:
            async with asyncio.timeout(within):
                return await anext(stream)


@pytest.mark.parametrize("point", ["claimed", "resuming"])
async def test_a_process_killed_between_claim_and_completed_resume_loses_no_answer(tmp_path: Path, point: str) -> None:
    path = tmp_path / "p.db"
    url = f"sqlite:///{path}"
    token_id = await park_and_resolve(url)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, point, str(LEASE), stdout=PIPE, stderr=PIPE
    )
    assert child.stdout is not None
    assert child.stderr is not None
    try:
        async with asyncio.timeout(20):
            line = await child.stdout.readline()
        assert line == f"{point}\n".encode(), (await child.stderr.read()).decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed, expires, origin = claim_row(path, token_id)
    assert (resumed, origin is None, expires is None) == (1, False, False)  # a lease nobody renews now

    restarted = Asker()
    started = time.monotonic()
    assert await run_until_output(url, restarted, within=10) == "4:go"
    assert restarted.resumed == [({"x": 4}, "go")]
    assert time.monotonic() - started < 5
    resumed, expires, _ = claim_row(path, token_id)
    assert (resumed, expires) == (1, None)  # completed: held for good

    again = Asker()  # a later start resumes it no more
    with pytest.raises(TimeoutError):
        await run_until_output(url, again, within=3 * LEASE)
    assert again.resumed == []


async def test_a_live_holder_keeps_its_claim_through_a_resume_longer_than_its_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    token_id = await park_and_resolve(url)
    slow, other = Asker(hold=6 * LEASE), Asker()
    async with open_purgatory(url, claim_lease=LEASE) as mine, open_purgatory(url, claim_lease=LEASE) as theirs:
        first = Flux.lift(slow, FluxConfig(purgatory=mine, agent_id="svc")).start(idle())
        async with asyncio.timeout(5):
            await slow.resuming.wait()  # the first flux has claimed it and is resuming
        assert mine.holds(token_id)
        second = Flux.lift(other, FluxConfig(purgatory=theirs, agent_id="svc")).start(idle())
        async with asyncio.timeout(10):
            assert await anext(first) == "4:go"
        assert not mine.holds(token_id)
        await asyncio.sleep(3 * LEASE)  # the second flux had every chance to take it over
        await first.aclose()
        await second.aclose()
    assert other.resumed == []
    assert slow.resumed == [({"x": 4}, "go")]


async def test_a_renewal_that_fails_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with open_purgatory("memory://", claim_lease=0.06) as purgatory:
        token = await purgatory.save(make_token(flux_id="f"))
        await purgatory.resolve(token.id, "go", claim=True)
        calls = 0
        renew = purgatory.store.renew_claims

        async def failing(ids: Any, until: float) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("disk gone for a moment")
            await renew(ids, until)

        purgatory.store.renew_claims = failing  # type: ignore[method-assign]
        with caplog.at_level("WARNING", logger="agentflux.purgatory"):
            await asyncio.sleep(0.2)
        assert calls >= 2
        assert "renewing 1 claim(s)" in caplog.text
        assert "disk gone" in caplog.text
        await purgatory.release_claim(token.id)
        assert not purgatory.holds(token.id)


@pytest.mark.parametrize("lease", [0, -1, math.nan, math.inf, True, "30"])
def test_a_claim_lease_that_is_not_a_positive_finite_number_is_refused(lease: Any) -> None:
    with pytest.raises(ValueError, match="claim_lease"):
        open_purgatory("memory://", claim_lease=lease)


async def test_a_version_3_file_gains_leases_and_keeps_its_claims(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    async with open_purgatory(f"sqlite:///{tmp_path / 'donor.db'}") as donor:
        claimed, free = [await donor.save(make_token(n, flux_id="f")) for n in ("claimed", "free")]
        rows = [await donor.store.get(t.id) for t in (claimed, free)]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in _sqlite._MIGRATIONS[:3]:
            for statement in migration:
                conn.execute(statement)
        for row in rows:  # as version 3 left them: both resolved, one claimed
            assert row is not None
            values = _sqlite._row(dataclasses.replace(row, status="resolved", resumed=row.id == claimed.id), "old")
            columns = _sqlite._COLUMNS.removesuffix(", resolved_by")  # as in version 3
            conn.execute(
                f"INSERT INTO tokens ({columns}, origin) VALUES ({', '.join('?' * 17)})", values[:16] + values[17:]
            )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    async with open_purgatory(f"sqlite:///{path}") as p:
        # A claim made before leases existed is held for good: it never lapses.
        assert [t.id for t in await p.resolved_unclaimed("f", lapsed=True)] == [free.id]
        assert await p.next_claim_expiry("f") is None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sqlite.SCHEMA_VERSION >= 4
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM tokens WHERE flux_id = ? AND status = 'resolved' "
            "AND claim_expires IS NOT NULL AND claim_expires < ?",
            ("f", 1.0),
        ).fetchall()
    assert "USING INDEX leased_claims" in str(plan)
