"""What only the PostgreSQL store has: LISTEN/NOTIFY with catch-up across a dropped connection,
reconnecting after the server ended a session, group commit, schema versions, error mapping.
The store conformance suite runs on it as well (``STORE_KINDS`` includes postgres)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentflux import Purgatory, SemaphoreError, SemaphoreStoreError, open_purgatory
from servers import POSTGRES, postgres_schema_url

from .._helpers import make_token, next_changes

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")


@pytest.fixture
def url() -> str:
    return postgres_schema_url()


async def terminate(pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def listening(purgatory: Purgatory) -> int:
    """The pid of the store's listening connection, once its watcher made it."""
    store: Any = purgatory.store
    async with asyncio.timeout(5):
        while store.listener_pid is None:  # noqa: ASYNC110 - the watcher connects in its own task
            await asyncio.sleep(0.01)
    return int(store.listener_pid)


async def test_no_change_is_missed_across_a_dropped_listening_connection(url: str) -> None:
    async with open_purgatory(url) as watcher, open_purgatory(url) as writer:
        feed = watcher.changes()
        first = await writer.save(make_token("before the drop"))
        assert [(c.kind, c.token.id) for c in await next_changes(feed, 1)] == [("saved", first.id)]
        old_pid = await listening(watcher)
        await terminate(old_pid)
        # Written while the watcher's listener is down or reconnecting: no notification reaches it.
        during = [await writer.save(make_token(f"during the drop {n}")) for n in range(5)]
        await writer.resolve(during[0].id, "yes")
        seen = await next_changes(feed, 6, within=10)
        assert [(c.kind, c.token.id) for c in seen] == [
            *(("saved", token.id) for token in during),
            ("resolved", during[0].id),
        ]
        assert await listening(watcher) != old_pid
        after = await writer.save(make_token("after the drop"))
        assert [(c.kind, c.token.id) for c in await next_changes(feed, 1)] == [("saved", after.id)]
        feed.close()


async def test_a_session_the_server_ended_fails_once_as_a_store_error_then_reconnects(url: str) -> None:
    from agentflux.semaphores.stores._postgres import PostgresStore

    async with open_purgatory(url) as purgatory:
        kept = await purgatory.save(make_token("kept"))
    store = PostgresStore(url)  # no purgatory, so no watcher shares the session
    await store.open()
    try:
        assert (await store.get(kept.id)) is not None
        await terminate(int(store._conn.info.backend_pid))
        with pytest.raises(SemaphoreStoreError, match="a transaction failed: AdminShutdown"):
            await store.get(kept.id)
        record = await store.get(kept.id)  # a new session, nothing lost
        assert record is not None
        assert record.prompt == "kept"
    finally:
        await store.close()


async def test_concurrent_operations_share_transactions(url: str) -> None:
    async with open_purgatory(url) as purgatory:
        store: Any = purgatory.store
        before = store._writes
        tokens = await asyncio.gather(*(purgatory.save(make_token(f"t{n}")) for n in range(64)))
        transactions = store._writes - before
        assert transactions < 16, transactions  # one round trip at a time, the rest join the next
        assert sorted(t.id for t in await purgatory.list_pending()) == sorted(t.id for t in tokens)


async def test_one_refused_operation_does_not_undo_the_others_in_its_transaction(url: str) -> None:
    async with open_purgatory(url) as purgatory:
        taken = await purgatory.save(make_token("first"))
        results = await asyncio.gather(
            purgatory.save(make_token("a")),
            purgatory.store.insert(await purgatory.store.get(taken.id)),  # type: ignore[arg-type]
            purgatory.save(make_token("nul \x00 in text")),
            purgatory.save(make_token("b")),
            return_exceptions=True,
        )
        assert isinstance(results[1], SemaphoreError)
        assert "already exists" in str(results[1])
        assert isinstance(results[2], SemaphoreStoreError)
        prompts = sorted(t.prompt for t in await purgatory.list_pending())
        assert prompts == ["a", "b", "first"]


async def test_a_schema_newer_than_this_agentflux_is_refused(url: str) -> None:
    async with open_purgatory(url) as purgatory:
        await purgatory.save(make_token("x"))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("UPDATE agentflux_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SemaphoreStoreError, match="schema version 99, newer than this agentflux"):
        async with open_purgatory(url):
            pass


async def test_reopening_keeps_everything_and_migrates_nothing_twice(url: str) -> None:
    async with open_purgatory(url) as purgatory:
        token = await purgatory.save(make_token("x"))
        await purgatory.store.save_task("t", "{}")
    for _ in range(2):
        async with open_purgatory(url) as purgatory:
            assert (await purgatory.get(token.id)).prompt == "x"
            assert await purgatory.store.load_tasks() == [("t", "{}")]


async def test_an_unreachable_server_is_a_store_error_naming_the_url_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(SemaphoreStoreError) as caught:
        async with open_purgatory("postgresql://someone:hunter2@127.0.0.1:1/nothing?connect_timeout=2"):
            pass
    assert "connecting failed" in str(caught.value)
    assert "someone:***@127.0.0.1:1/nothing" in str(caught.value)
    assert "hunter2" not in str(caught.value)
