"""Every resolution records who answered and from where (issue 13.3): ``resolved_by``."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentflux import Flux, FluxConfig, SemaphoreMixin, SemaphoreReason, SemaphoreTokenError, open_purgatory
from agentflux.cli import main
from agentflux.semaphores.stores import _sqlite
from conftest import collect

from ._helpers import SHARED_STORE_KINDS, STORE_KINDS, STORE_URLS, make_token

ME = f"{getpass.getuser()}@{socket.gethostname()} (cli)"


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_resolve_and_cancel_record_who_answered(kind: str, tmp_path: Path) -> None:
    async with open_purgatory(STORE_URLS[kind](tmp_path)) as purgatory:
        changes = purgatory.changes()
        first, second, third = [await purgatory.save(make_token(f"t{i}")) for i in range(3)]
        await purgatory.resolve(first.id, "yes", by="alice@laptop (cli)")
        await purgatory.cancel(second.id, "not today", by="dashboard:ops from 10.0.0.7")
        await purgatory.resolve(third.id, "no")  # nobody said who: recorded as unknown
        assert (await purgatory.get(first.id)).resolved_by == "alice@laptop (cli)"
        assert (await purgatory.get(second.id)).resolved_by == "dashboard:ops from 10.0.0.7"
        assert (await purgatory.get(third.id)).resolved_by is None
        seen = {}
        async with asyncio.timeout(3):
            async for change in changes:
                seen[change.token.id, change.kind] = change.token.resolved_by
                if len(seen) == 6:
                    break
        assert seen[first.id, "saved"] is None
        assert seen[first.id, "resolved"] == "alice@laptop (cli)"
        assert seen[second.id, "cancelled"] == "dashboard:ops from 10.0.0.7"


@pytest.mark.parametrize("by", [42, "x" * 257, "bad \udcff text"])
@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_bad_answerer_is_refused_and_nothing_changes(kind: str, by: Any, tmp_path: Path) -> None:
    async with open_purgatory(STORE_URLS[kind](tmp_path)) as purgatory:
        token = await purgatory.save(make_token())
        with pytest.raises(ValueError, match="by \\(who answered\\)"):
            await purgatory.resolve(token.id, "yes", by=by)
        with pytest.raises(ValueError, match="by \\(who answered\\)"):
            await purgatory.cancel(token.id, by=by)
        assert (await purgatory.get(token.id)).status.value == "pending"


def test_a_token_refuses_an_answerer_that_is_not_text() -> None:
    with pytest.raises(SemaphoreTokenError, match="resolved_by"):
        make_token(resolved_by=7)
    with pytest.raises(SemaphoreTokenError, match="resolved_by"):
        make_token(resolved_by="\ud800")


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_another_process_sees_who_answered(kind: str, tmp_path: Path) -> None:
    url = STORE_URLS[kind](tmp_path)
    async with open_purgatory(url) as mine, open_purgatory(url) as theirs:
        token = await mine.save(make_token())
        await theirs.resolve(token.id, "yes", by="bob@desk (cli)")
        assert (await mine.get(token.id)).resolved_by == "bob@desk (cli)"


class Asker(SemaphoreMixin):
    async def invoke(self, x: Any) -> Any:
        return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"ok {x}?", {"x": x})

    async def resume(self, frozen_state: bytes, answer: Any) -> Any:
        return f"{self.restore_state(frozen_state)['x']}:{answer}"


async def test_a_flux_resolve_records_who_answered() -> None:
    purgatory = open_purgatory("memory://")
    flux = Flux.lift(Asker(), FluxConfig(purgatory=purgatory, agent_id="asker"))
    assert await collect(flux.start([1])) == []
    (token,) = await purgatory.list_pending()
    assert await flux.resolve(token.id, "go", by="carol@phone (dashboard)") == "1:go"
    assert (await purgatory.get(token.id)).resolved_by == "carol@phone (dashboard)"
    await purgatory.aclose()


def test_the_cli_records_the_os_user_and_host_and_shows_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"

    async def seed() -> list[str]:
        async with open_purgatory(url) as p:
            return [(await p.save(make_token(f"t{i}"))).id for i in range(2)]

    resolved, cancelled = asyncio.run(seed())
    runner = CliRunner()
    assert runner.invoke(main, ["purgatory", "resolve", resolved, "yes", "--store", url]).exit_code == 0
    assert runner.invoke(main, ["purgatory", "cancel", cancelled, "--store", url]).exit_code == 0
    for token_id in (resolved, cancelled):
        shown = runner.invoke(main, ["purgatory", "show", token_id, "--store", url])
        assert shown.exit_code == 0, shown.output
        assert f"resolved_by: {ME}" in shown.stdout


def test_a_hostile_answerer_in_a_row_is_shown_escaped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"

    async def seed() -> str:
        async with open_purgatory(url) as p:
            token = await p.save(make_token())
            await p.resolve(token.id, "yes", by="mallory\x1b]52;c;cGF3bmVk\x07\u202e (cli)")
            return token.id

    token_id = asyncio.run(seed())
    shown = CliRunner().invoke(main, ["purgatory", "show", token_id, "--store", url])
    assert shown.exit_code == 0
    assert "\x1b" not in shown.stdout
    assert "\u202e" not in shown.stdout
    assert "mallory" in shown.stdout


def test_the_workshop_cli_records_an_automatic_answer_as_such(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = CliRunner().invoke(
        main, ["workshop", "run", "Fix the parser", "--seed", "1", "--store", url, "--plain", "--approve", "auto"]
    )
    assert result.exit_code == 0, result.output
    with contextlib.closing(sqlite3.connect(tmp_path / "p.db")) as conn:
        rows = conn.execute("SELECT status, resolved_by FROM tokens").fetchall()
    assert rows == [("resolved", f"{ME} --approve auto")]


async def test_a_version_4_file_gains_the_audit_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    async with open_purgatory(f"sqlite:///{tmp_path / 'donor.db'}") as donor:
        kept = await donor.save(make_token("from version 4"))
        row = await donor.store.get(kept.id)  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in _sqlite._MIGRATIONS[:4]:
            for statement in migration:
                conn.execute(statement)
        values = _sqlite._row(row, "old")
        columns = _sqlite._COLUMNS.removesuffix(", resolved_by")
        conn.execute(
            f"INSERT INTO tokens ({columns}, origin) VALUES ({', '.join('?' * 17)})", values[:16] + values[17:]
        )
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    async with open_purgatory(f"sqlite:///{path}") as p:
        assert (await p.get(kept.id)).resolved_by is None
        await p.resolve(kept.id, "yes", by="dave@host (cli)")
        assert (await p.get(kept.id)).resolved_by == "dave@host (cli)"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sqlite.SCHEMA_VERSION == 6
