"""The embedded SQLite store: durability, schema, WAL, a free event loop, other processes (SPEC 4, 10)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentflux import (
    Purgatory,
    SemaphoreError,
    SemaphoreNotFound,
    SemaphoreStatus,
    SemaphoreStoreError,
    open_purgatory,
)
from agentflux.semaphores.stores import _fsync, _sqlite
from agentflux.semaphores.stores._base import StoreChange
from agentflux.semaphores.stores._sqlite import SCHEMA_VERSION, SqliteStore

from .._helpers import make_token, next_changes, wait_for_change

FAR = datetime.now(UTC) + timedelta(days=30)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def pragma(path: Path, name: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def all_rows(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT id, status FROM tokens").fetchall())


# ----------------------------------------------------------------------------- durability


async def test_a_new_purgatory_on_the_same_file_sees_every_token(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.db")
    async with open_purgatory(url) as first:
        base = datetime(2024, 1, 1, tzinfo=UTC)
        tokens = [
            await first.save(
                make_token(
                    f"t{i}",
                    created_at=base + timedelta(seconds=i),
                    original_event={"i": i},
                    frozen_state=bytes([i]),
                    deadline=FAR,
                    escalation="lead" if i == 3 else None,
                    flux_id="flux-a",
                )
            )
            for i in range(6)
        ]
        await first.resolve(tokens[0].id, {"ok": True})
        await first.cancel(tokens[1].id, "dup")
        await first.void_expired(now=FAR)  # voids 2, 4, 5 and escalates 3
        before = {t.id: await first.get(t.id) for t in tokens}

    async with open_purgatory(url) as second:
        after = {t.id: await second.get(t.id) for t in tokens}
        assert after == before
        statuses = [after[t.id].status for t in tokens]
        assert statuses == [
            SemaphoreStatus.RESOLVED,
            SemaphoreStatus.CANCELLED,
            SemaphoreStatus.VOIDED,
            SemaphoreStatus.ESCALATED,
            SemaphoreStatus.VOIDED,
            SemaphoreStatus.VOIDED,
        ]
        assert after[tokens[0].id].resolution == {"ok": True}
        assert [t.prompt for t in await second.list_pending()] == ["t3"]
        # A new process can resolve what the old one left open.
        await second.resolve(tokens[3].id, "handled")
        assert [t.id for t in await second.resolved_unclaimed("flux-a")] == [tokens[0].id, tokens[3].id]


async def test_the_directory_of_the_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
    assert path.exists()


async def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_purgatory("sqlite:///.agentflux/rel.db") as p:
        token = await p.save(make_token())
    assert token.id in all_rows(tmp_path / ".agentflux" / "rel.db")


# ----------------------------------------------------------------------------- schema, pragmas


async def test_the_schema_version_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
    assert SCHEMA_VERSION >= 1
    assert pragma(path, "user_version") == SCHEMA_VERSION


async def test_a_file_with_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE from_the_future (x)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    p = open_purgatory(sqlite_url(path))
    with pytest.raises(SemaphoreStoreError, match=str(SCHEMA_VERSION + 1)):
        async with p:
            pass
    with pytest.raises(SemaphoreStoreError):
        await p.list_pending()
    await p.aclose()
    assert pragma(path, "user_version") == SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"from_the_future"}


async def test_a_file_that_is_not_a_database_raises_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite database, just some text " * 100)
    p = open_purgatory(sqlite_url(path))
    try:
        with pytest.raises(SemaphoreStoreError) as caught:
            await p.save(make_token())
        assert isinstance(caught.value, SemaphoreError)
        assert isinstance(caught.value.__cause__, sqlite3.Error)
    finally:
        await p.aclose()


async def test_a_path_that_cannot_be_opened_raises_a_store_error(tmp_path: Path) -> None:
    p = open_purgatory(sqlite_url(tmp_path))  # a directory
    try:
        with pytest.raises(SemaphoreStoreError):
            await p.get("x")
    finally:
        await p.aclose()


async def test_using_a_closed_purgatory_raises_a_store_error(tmp_path: Path) -> None:
    async with open_purgatory(sqlite_url(tmp_path / "p.db")) as p:
        token = await p.save(make_token())
    with pytest.raises(SemaphoreStoreError, match="closed"):
        await p.get(token.id)


async def test_opening_a_new_file_waits_for_another_writer_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    # Another connection is about to write the new file (not in WAL mode yet), as a second
    # store switching it to WAL is. The switch reads the file first, and a reader asking for
    # the write lock another connection holds gets SQLITE_BUSY at once (SQLite does not call
    # the busy handler, which could deadlock there): opening used to fail at once.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        if not pauses:
            writer.execute("COMMIT")  # the store found the file locked and waits: let it go
        pauses.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(_sqlite, "_pause", pause, raising=False)
    store = SqliteStore(path)
    try:
        await store.open()
        assert await store.get("x") is None
    finally:
        await store.close()
        writer.close()
    assert pauses
    assert pragma(path, "journal_mode") == "wal"


async def test_opening_gives_up_on_a_lock_held_past_the_lock_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    monkeypatch.setattr(_sqlite, "_LOCK_TIMEOUT", 0.3)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        store = SqliteStore(path)
        try:
            with pytest.raises(SemaphoreStoreError, match="locked"):
                await asyncio.wait_for(store.open(), 5)
        finally:
            await store.close()


async def test_a_hundred_stores_opening_a_new_file_at_once_all_open(tmp_path: Path) -> None:
    stores = [SqliteStore(tmp_path / "p.db") for _ in range(100)]
    try:
        outcomes = await asyncio.gather(*(store.open() for store in stores), return_exceptions=True)
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    assert outcomes == [None] * 100


def test_a_store_is_closed_on_its_own_event_loop_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(store.open())
        with pytest.raises(SemaphoreStoreError, match="another event loop"):
            asyncio.run(asyncio.wait_for(store.close(), 5))  # bounded: it used to hang
        assert first.run_until_complete(store.get("x")) is None  # still open and working
    finally:
        first.run_until_complete(store.close())
        first.close()
    asyncio.run(store.close())  # closed: nothing is left to release, on any loop


@pytest.mark.parametrize("which", ["database", "wal"])
async def test_a_file_deleted_under_an_open_store_fails_it_instead_of_acknowledging_lost_saves(
    tmp_path: Path, which: str
) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token("kept"))
        os.unlink(path if which == "database" else f"{path}-wal")
        with pytest.raises(SemaphoreStoreError, match="was deleted while the store"):
            await p.save(make_token("lost"))
        with pytest.raises(SemaphoreStoreError, match="takes no more work"):
            await p.list_pending()


async def test_a_database_file_replaced_under_an_open_store_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    replacement = tmp_path / "new.db"
    with contextlib.closing(sqlite3.connect(replacement)) as conn:
        conn.execute("CREATE TABLE mine (x)")
        conn.execute("INSERT INTO mine VALUES (1)")
        conn.commit()
    aside = tmp_path / "old.db"
    async with open_purgatory(sqlite_url(path)) as p:
        kept = await p.save(make_token("before"))
        os.rename(path, aside)  # the database file alone: its WAL stays at p.db-wal
        os.rename(replacement, path)
        with pytest.raises(SemaphoreStoreError, match="was replaced by another file"):
            await p.save(make_token("after"))
    # Nothing of the old database was written or replayed into the new file (the WAL left
    # beside it used to be)...
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]
        assert conn.execute("SELECT x FROM mine").fetchall() == [(1,)]
    # ...and the acknowledged save is in the file it was made to, wherever that went.
    assert all_rows(aside) == {kept.id: "pending"}


async def test_wal_and_the_durability_settings_of_each_connection(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
        store = p.store
        assert isinstance(store, SqliteStore)
        # The loop's connection leaves the WAL sync to the store and never checkpoints...
        fast = await store._submit(
            lambda conn: (
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                conn.execute("PRAGMA busy_timeout").fetchone()[0],
            ),
            writes=False,
        )
        assert fast == (0, 0, 0)  # and it never waits for a lock: another process's lock goes to the helper
        # ...the helper's connection, which checkpoints, syncs fully.
        assert store._helper is not None
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        store._helper.work.put(
            (
                "batch",
                (
                    [_sqlite._Job(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0], done, False, None)],
                    _sqlite._deliver,
                ),
            )
        )
        assert await done == 2  # FULL
    assert pragma(path, "journal_mode") == "wal"  # WAL is recorded in the file itself


@pytest.mark.parametrize("mode", ["auto", "thread"])
async def test_no_write_is_acknowledged_before_a_sync_that_started_after_its_commit(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_run_batch = _sqlite._run_batch

    def run_batch(conn: sqlite3.Connection, jobs: list[_sqlite._Job], *, locked_raises: bool) -> bool:
        wrote = real_run_batch(conn, jobs, locked_raises=locked_raises)
        if wrote:
            events.append("commit")
        return wrote

    monkeypatch.setattr(_sqlite, "_run_batch", run_batch)
    async with open_purgatory(f"{sqlite_url(tmp_path / 'p.db')}?sync={mode}") as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        assert type(store._sync).__name__ == ("ThreadSync" if mode == "thread" else "AioSync")
        sync = store._sync
        assert sync is not None
        real_start, real_done = sync.start, sync.done

        def start() -> None:
            events.append("sync started")
            real_start()

        def done(error: OSError | None) -> None:
            events.append("sync done")
            real_done(error)

        sync.start, sync.done = start, done  # type: ignore[method-assign]
        for _ in range(5):
            token = await p.save(make_token())
            events.append("acknowledged")
            await p.resolve(token.id, "ok")
            events.append("acknowledged")
        await asyncio.gather(*(p.save(make_token()) for _ in range(20)))
        events.append("acknowledged")
    # Every acknowledgement follows a commit, then a sync that started after it and finished.
    for index, event in enumerate(events):
        if event == "acknowledged":
            before = events[:index]
            last_commit = max(i for i, e in enumerate(before) if e == "commit")
            started = [i for i, e in enumerate(before) if e == "sync started" and i > last_commit]
            assert started, events
            assert "sync done" in before[started[0] :], events


async def test_kernel_aio_that_is_missing_or_refused_falls_back_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(*args: object) -> None:
        raise OSError("no kernel AIO here")

    with monkeypatch.context() as patch:
        patch.setattr(_fsync.AioSync, "__init__", missing)
        async with open_purgatory(sqlite_url(tmp_path / "a.db")) as p:
            assert isinstance(p.store, SqliteStore)
            assert isinstance(p.store._sync, _fsync.ThreadSync)
            token = await p.save(make_token())
            await p.resolve(token.id, "ok")

    def refused(self: _fsync.AioSync) -> None:  # the kernel takes the context but fails the request
        self._loop.call_soon(self.done, OSError(22, "fdatasync: Invalid argument"))

    with monkeypatch.context() as patch:
        patch.setattr(_fsync.AioSync, "start", refused)
        async with open_purgatory(sqlite_url(tmp_path / "b.db")) as p:
            assert isinstance(p.store, SqliteStore)
            assert isinstance(p.store._sync, _fsync.ThreadSync)
            token = await p.save(make_token())
            assert (await p.get(token.id)).status is SemaphoreStatus.PENDING


async def test_aio_hands_the_pages_to_the_device_first_and_needs_that_only_as_a_head_start(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        sync = store._sync
        if not isinstance(sync, _fsync.AioSync):
            pytest.skip("kernel AIO is not available on this machine")
        calls: list[tuple[object, ...]] = []

        def refused(*args: object) -> int:  # as if the kernel refused the hint
            calls.append(args)
            return -1

        sync._write_out = refused  # type: ignore[assignment]
        wal = store._wal
        token = await p.save(make_token("synced anyway"))
        await p.resolve(token.id, "ok")
    assert calls == [(wal, 0, 0, 2)] * 2  # the WAL file, all of it, start writing, once per commit
    assert all_rows(path) == {token.id: "resolved"}


async def test_a_failed_sync_fails_the_waiting_writes_and_the_store(tmp_path: Path) -> None:
    async with open_purgatory(sqlite_url(tmp_path / "p.db")) as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        assert store._sync is not None
        sync = store._sync
        real_done = sync.done
        sync.done = lambda error: real_done(OSError(5, "Input/output error"))  # type: ignore[method-assign]
        with pytest.raises(SemaphoreStoreError, match="could not be synced"):
            await p.save(make_token())
        # After a failed fsync the kernel may have dropped pages: the store takes no more work.
        with pytest.raises(SemaphoreStoreError, match="failed earlier"):
            await p.list_pending()


async def test_after_a_failed_sync_no_queued_write_is_acknowledged(tmp_path: Path) -> None:
    async with open_purgatory(sqlite_url(tmp_path / "p.db")) as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        assert store._sync is not None
        real_done = store._sync.done
        store._sync.done = lambda error: real_done(OSError(5, "Input/output error"))  # type: ignore[method-assign]
        # More than one transaction's worth: some wait in the queue while the first batch syncs.
        outcomes = await asyncio.gather(*(p.save(make_token()) for _ in range(600)), return_exceptions=True)
        assert all(isinstance(outcome, SemaphoreStoreError) for outcome in outcomes)


async def test_maintenance_skips_a_round_when_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)  # as the helper's connection
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert _sqlite._Helper._maintain(conn, f"{path}-wal") == (None, 0)  # busy: skipped, not fatal
        assert time.monotonic() - started < 2  # and at once: the loop's writes wait for the round
        other.execute("COMMIT")
        error, wal_bytes = _sqlite._Helper._maintain(conn, f"{path}-wal")
        assert error is None
        assert wal_bytes % (4096 + 24) == 0
        conn.execute("DROP TABLE changes")
        assert isinstance(_sqlite._Helper._maintain(conn, f"{path}-wal")[0], SemaphoreStoreError)  # anything else is
    finally:
        conn.close()
        other.close()


async def test_closing_during_a_checkpoint_still_runs_what_was_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "_CHECKPOINT_BYTES", 1)  # every commit starts a checkpoint
    path = tmp_path / "p.db"
    p = open_purgatory(sqlite_url(path))
    first = await p.save(make_token("first"))
    saving = asyncio.ensure_future(p.save(make_token("second")))
    await asyncio.sleep(0)
    await p.aclose()
    second = await saving
    assert all_rows(path) == {first.id: "pending", second.id: "pending"}


async def test_the_loop_keeps_running_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token("first"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process is writing
            saving = asyncio.ensure_future(p.save(make_token("second")))
            ticks = 0
            for _ in range(20):  # the loop turns while the save waits for the lock on the helper thread
                await asyncio.sleep(0.005)
                ticks += 1
            assert not saving.done()
            assert ticks == 20
            other.execute("COMMIT")
            second = await asyncio.wait_for(saving, 5)
        finally:
            other.close()
        assert (await p.get(second.id)).prompt == "second"
        # With the lock free again, work goes back to the loop's own connection.
        token = await p.save(make_token("third"))
        await p.resolve(token.id, "done")
    assert all_rows(path)[token.id] == "resolved"


def reserve_bytes() -> int:
    return 32 + _sqlite._RESERVE_BYTES // (4096 + 24) * (4096 + 24)


async def test_checkpoints_keep_the_wal_small_and_prune_the_change_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "_CHECKPOINT_BYTES", 100 * (4096 + 24))
    monkeypatch.setattr(_sqlite, "_KEEP_CHANGES", 30)
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        for _ in range(360):
            token = await p.save(make_token(frozen_state=b"s" * 1024))
            await p.resolve(token.id, "ok")
        changes = await store._submit(
            lambda conn: conn.execute("SELECT count(*) FROM changes").fetchone()[0], writes=False
        )
        # 720 commits of three or four frames each: without checkpoints the WAL would have
        # outgrown its reserve of about 1000 frames. It started over after each one instead.
        assert os.stat(f"{path}-wal").st_size == reserve_bytes()
        # Each checkpoint measured what a write costs in the WAL.
        assert 2 * (4096 + 24) <= store._bytes_per_write <= 5 * (4096 + 24), store._bytes_per_write
    assert changes < 30 + 2 * 100 + 2, changes
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM tokens WHERE status = 'resolved'").fetchone()[0] == 360


async def test_the_wal_stays_bounded_in_bytes_with_big_records_and_shrinks_back_to_its_reserve(
    tmp_path: Path,
) -> None:
    # The bound: the reserve, plus a transaction of up to _CHECKPOINT_BYTES of rows and one
    # more record, plus the pages around them. (Checkpoints used to come after a number of
    # writes: 40 records of 1 MiB grew the WAL to 41 MiB, 40 at once to 81 MiB.)
    bound = reserve_bytes() + 2 * _sqlite._CHECKPOINT_BYTES
    path = tmp_path / "p.db"
    wal = f"{path}-wal"
    async with open_purgatory(sqlite_url(path)) as p:
        sizes = []
        for _ in range(40):
            await p.save(make_token(frozen_state=os.urandom(1 << 20)))
            sizes.append(os.stat(wal).st_size)
        tokens = await asyncio.gather(*(p.save(make_token(frozen_state=os.urandom(1 << 20))) for _ in range(40)))
        sizes.append(os.stat(wal).st_size)
        for token in tokens:
            await p.resolve(token.id, "ok")  # rewrites each 1 MiB row
            sizes.append(os.stat(wal).st_size)
        assert max(sizes) <= bound, [size >> 20 for size in sizes]
        # One record bigger than the reserve grows the WAL past it; the WAL starts over
        # after the next checkpoint and is cut back to the reserve.
        await p.save(make_token(frozen_state=os.urandom(3 * bound)))
        assert os.stat(wal).st_size > bound
        for _ in range(3):
            await p.save(make_token())
        assert os.stat(wal).st_size == reserve_bytes()
    assert len(all_rows(path)) == 84


async def test_the_wal_is_reserved_at_open_and_its_zeros_are_ignored_by_recovery(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    copy = tmp_path / "copy"
    copy.mkdir()
    async with open_purgatory(sqlite_url(path)) as p:
        assert os.stat(f"{path}-wal").st_size == reserve_bytes()  # zero-filled before the first write
        token = await p.save(make_token("kept"))
        # As after a crash: the database and its WAL without the wal-index, so a new
        # connection must recover the WAL by reading its frames, then the zeros after them.
        for name in ("p.db", "p.db-wal"):
            (copy / name).write_bytes((tmp_path / name).read_bytes())
    with contextlib.closing(sqlite3.connect(copy / "p.db")) as reader:
        assert reader.execute("SELECT id, prompt FROM tokens").fetchall() == [(token.id, "kept")]
        assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_closing_a_store_keeps_the_locks_of_other_connections_in_the_process(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM tokens").fetchone() == (1,)
        async with open_purgatory(sqlite_url(path)) as p:  # opened and closed while the reader reads
            await p.save(make_token())
        # Closing any descriptor of a file drops every POSIX lock the process holds on it;
        # the reader's lock on the wal-index must still keep another process from
        # truncating the WAL under it.
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0); "
            "print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])"
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(path), stdout=asyncio.subprocess.PIPE
        )
        busy, _ = await child.communicate()
        assert (child.returncode, busy.strip()) == (0, b"1")
        assert reader.execute("SELECT count(*) FROM tokens").fetchone() == (1,)  # its snapshot, intact
        reader.execute("COMMIT")
    finally:
        reader.close()


async def test_a_failing_checkpoint_fails_the_store_without_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: sqlite3.Connection, wal: str) -> tuple[BaseException | None, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_sqlite, "_CHECKPOINT_BYTES", 1)
    monkeypatch.setattr(_sqlite._Helper, "_maintain", staticmethod(broken))
    p = open_purgatory(sqlite_url(tmp_path / "p.db"))
    await p.save(make_token())  # committed and synced; its checkpoint fails
    with pytest.raises(SemaphoreStoreError, match="Too many open files"):
        await asyncio.wait_for(p.save(make_token()), 5)
    await asyncio.wait_for(p.aclose(), 5)


async def test_the_wal_reserve_skips_a_locked_file_and_survives_os_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        await p.save(make_token())
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    other = sqlite3.connect(path, isolation_level=None)
    wal = f"{path}-wal"
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        os.truncate(wal, 0)  # as another process's TRUNCATE checkpoint leaves it
        other.execute("BEGIN IMMEDIATE")
        _sqlite._reserve_wal(conn, wal)  # another writer: skipped, nothing written
        assert os.stat(wal).st_size == 0
        other.execute("COMMIT")

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(28, "No space left on device")

        def no_files(*args: object) -> int:
            raise OSError(24, "Too many open files")

        with monkeypatch.context() as patched:
            patched.setattr(_sqlite.os, "pwrite", full)
            _sqlite._reserve_wal(conn, wal)  # only the speed-up is lost
            patched.setattr(_sqlite.os, "open", no_files)
            _sqlite._reserve_wal(conn, wal)
        assert not conn.in_transaction
        assert os.stat(wal).st_size < reserve_bytes()
        assert _sqlite._Helper._maintain(conn, wal)[0] is None  # maintenance restores the reserve
        assert os.stat(wal).st_size == reserve_bytes()
    finally:
        conn.close()
        other.close()


V1_COLUMNS = _sqlite._COLUMNS.removesuffix(", resolved_by")  # version 1's columns (resolved_by came in 5)


async def test_a_version_1_file_is_migrated_and_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    async with open_purgatory(sqlite_url(tmp_path / "donor.db")) as donor:
        kept = await donor.save(make_token("from version 1", original_event={"n": 1}))
        row = await donor.store.get(kept.id)  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for statement in _sqlite._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            f"INSERT INTO tokens ({V1_COLUMNS}) VALUES ({', '.join('?' * 16)})", _sqlite._row(row, "old")[:16]
        )
        conn.execute("INSERT INTO changes (token_id, kind) VALUES (?, 'saved')", (kept.id,))
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    async with open_purgatory(sqlite_url(path)) as p:
        assert [t.prompt for t in await p.list_pending()] == ["from version 1"]
        context = await p.resolve(kept.id, "yes")
        assert context.original_event == {"n": 1}
        fresh = await p.save(make_token("new"))
    assert pragma(path, "user_version") == SCHEMA_VERSION == 6
    with contextlib.closing(sqlite3.connect(path)) as conn:
        log = conn.execute("SELECT token_id, kind FROM changes ORDER BY seq").fetchall()
    assert log == [(kept.id, "saved"), (kept.id, "resolved"), (fresh.id, "saved")]


async def test_a_version_2_file_keeps_its_unclaimed_resolutions_and_indexes_only_fluxed_ones(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in _sqlite._MIGRATIONS[:2]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    async with open_purgatory(sqlite_url(path)) as p:
        fluxed = await p.save(make_token("fluxed", flux_id="flux-a"))
        loose = await p.save(make_token("loose"))
        for token in (fluxed, loose):
            await p.resolve(token.id, "ok")
        assert [t.id for t in await p.resolved_unclaimed("flux-a")] == [fluxed.id]
    assert pragma(path, "user_version") == SCHEMA_VERSION
    with contextlib.closing(sqlite3.connect(path)) as conn:
        index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'unclaimed_resolutions'").fetchone()[0]
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM tokens WHERE flux_id = ? AND status = 'resolved' AND resumed = 0",
            ("flux-a",),
        ).fetchall()
    assert index.endswith("AND flux_id IS NOT NULL")
    assert "USING INDEX unclaimed_resolutions" in str(plan)


async def test_an_unknown_store_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync=auto"):
        open_purgatory(f"{sqlite_url(tmp_path / 'p.db')}?fsync=never")
    with pytest.raises(ValueError, match="sync=auto"):
        open_purgatory(f"{sqlite_url(tmp_path / 'p.db')}?sync=sometimes")


# ----------------------------------------------------------------------------- transitions without a read-back


async def test_a_transition_returns_the_row_as_stored_whether_or_not_this_store_saved_it(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first, second = SqliteStore(path), SqliteStore(path)
    try:
        records = {}
        for name, escalation, flux in (("plain", None, None), ("escalating", "oncall", "flux-1")):
            token = make_token(
                name, id=name, escalation=escalation, flux_id=flux, deadline=FAR, original_event={"n": name}
            )
            record = Purgatory(first)._to_record(token)
            await first.insert(record)
            records[name] = record
        # Saved here: built from what was saved. Escalated with a claim (still remembered, and its
        # claim with it), then resolved without one: the claim stays, as in the row.
        escalated = await first.transition("escalating", ("pending",), "escalated", None, None, claim=True)
        assert escalated == await second.get("escalating")
        assert escalated is not None
        assert escalated.status == "escalated"
        assert escalated.resumed is True
        assert "escalating" in first._saved
        resolved = await first.transition(
            "escalating", ("pending", "escalated"), "resolved", b'"yes"', "2030-01-01T00:00:00+00:00"
        )
        assert resolved == await first.get("escalating") == await second.get("escalating")
        assert resolved is not None
        assert resolved.resumed is True
        assert resolved.status == "resolved"
        assert "escalating" not in first._saved
        # The types are those of a read-back too: a bool claim flag, a float deadline.
        whole = dataclasses.replace(
            Purgatory(first)._to_record(make_token("whole", id="whole")), deadline_ts=2_000_000_000
        )
        await first.insert(whole)
        voided = await first.transition("whole", ("pending",), "voided", None, "2030-01-01T00:00:00+00:00")
        assert voided == await second.get("whole")
        assert voided is not None
        assert type(voided.resumed) is bool
        assert type(voided.deadline_ts) is float
        # Saved by another store object: read back.
        cancelled = await second.transition(
            "plain", ("pending", "escalated"), "cancelled", b"null", "2030-01-01T00:00:00+00:00"
        )
        assert cancelled == await second.get("plain")
        # The first store still remembers "plain" but its transition now finds nothing to change.
        assert "plain" in first._saved
        assert await first.transition("plain", ("pending", "escalated"), "resolved", b"1", None) is None
        assert "plain" not in first._saved
        assert first._saved_bytes == 0
    finally:
        await first.close()
        await second.close()


async def test_remembered_saves_are_bounded_in_bytes_and_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "_REMEMBER_BYTES", 3000)
    store, elsewhere = SqliteStore(tmp_path / "p.db"), SqliteStore(tmp_path / "p.db")
    purgatory = Purgatory(store)
    try:
        # Big prompts count as much as big states.
        tokens = [await purgatory.save(make_token("p" * 1000, frozen_state=b"s" * 1000)) for _ in range(3)]
        tokens += [await purgatory.save(make_token("p", frozen_state=b"s" * 1000)) for _ in range(2)]
        assert store._saved_bytes <= 3000
        assert list(store._saved) == [token.id for token in tokens[-len(store._saved) :]]
        assert len(store._saved) == 2
        for token in tokens:  # remembered or read back, every resolve returns the stored state
            context = await purgatory.resolve(token.id, "ok")
            assert context.frozen_state == b"s" * 1000
        assert store._saved == {}
        assert store._saved_bytes == 0
        # Tokens resolved by another store object are never forgotten here by a transition:
        # the count bounds them.
        monkeypatch.setattr(_sqlite, "_REMEMBER_BYTES", 1 << 30)
        monkeypatch.setattr(_sqlite, "_REMEMBER_COUNT", 3)
        for _ in range(6):
            token = await purgatory.save(make_token())
            await Purgatory(elsewhere).resolve(token.id, "ok")
        assert len(store._saved) == 3
        assert store._saved_bytes == sum(size for _, size in store._saved.values())
    finally:
        await store.close()
        await elsewhere.close()


async def test_the_watcher_reads_only_other_stores_changes(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    mine, other = SqliteStore(path), SqliteStore(path)
    try:
        start = await mine.last_seq()
        token = make_token("mine")
        await Purgatory(mine).save(token)
        last, changes = await mine.changes_since(start)
        assert last > start
        assert changes == []
        assert await mine.changes_since(last) == (last, [])
        await Purgatory(other).save(make_token("theirs", id="theirs"))
        newest, changes = await mine.changes_since(last)
        assert newest > last
        assert [(c.kind, c.record.id) for c in changes] == [("saved", "theirs")]
    finally:
        await mine.close()
        await other.close()


# ----------------------------------------------------------------------------- the event loop stays free


async def test_the_event_loop_runs_while_the_store_works(tmp_path: Path) -> None:
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    per_save: list[int] = []
    try:
        async with open_purgatory(sqlite_url(tmp_path / "p.db")) as p:
            for _ in range(50):
                before = ticks
                token = await p.save(make_token())
                per_save.append(ticks - before)
                await p.resolve(token.id, "ok")
    finally:
        running = False
        await ticking
    # A store doing its I/O on the loop's thread would let the ticker run only between
    # operations; here it runs while every single commit is being written.
    assert min(per_save) >= 1, per_save
    assert sum(per_save) > 100, per_save


# ----------------------------------------------------------------------------- other processes


async def test_changes_committed_by_another_purgatory_appear_in_the_feed(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.db")
    async with open_purgatory(url) as watcher:
        feed = watcher.changes()
        mine = await watcher.save(make_token("mine"))
        async with open_purgatory(url) as other:
            theirs = await other.save(make_token("theirs"))
            saved = await next_changes(feed, 2)
            assert [(c.kind, c.token.id) for c in saved] == [("saved", mine.id), ("saved", theirs.id)]
            assert saved[1].token.prompt == "theirs"

            await other.resolve(theirs.id, {"by": "other"})
            resolved = await wait_for_change(feed, "resolved", theirs.id)
            assert resolved.token.status is SemaphoreStatus.RESOLVED
            assert resolved.token.resolution == {"by": "other"}

            await other.cancel(mine.id, "withdrawn elsewhere")
            cancelled = await wait_for_change(feed, "cancelled", mine.id)
            assert cancelled.token.resolution == "withdrawn elsewhere"

            # The watcher's own change is not reported a second time when it notices theirs.
            await asyncio.sleep(0.5)  # more than two checks of the watcher
            assert feed.pending == 0
        feed.close()


async def test_changes_from_another_purgatory_carry_the_token_as_of_that_change(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.db")
    async with open_purgatory(url) as watcher:
        feed = watcher.changes()
        other = open_purgatory(url)
        try:
            tokens = []
            for i in range(10):  # quick pairs: most fall between two checks of the watcher
                token = await other.save(make_token(f"t{i}"))
                await other.resolve(token.id, i)
                tokens.append(token)
        finally:
            await other.aclose()
        changes = await next_changes(feed, 20)
        feed.close()
    assert sorted((c.kind, c.token.prompt) for c in changes) == sorted(
        [("saved", t.prompt) for t in tokens] + [("resolved", t.prompt) for t in tokens]
    )
    assert [c.token.status for c in changes if c.kind == "saved"] == [SemaphoreStatus.PENDING] * 10


async def test_a_deadline_saved_by_another_purgatory_is_applied_by_the_open_one(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.db")
    async with open_purgatory(url) as watcher:
        feed = watcher.changes()
        other = open_purgatory(url)
        try:
            token = await other.save(make_token(deadline=datetime.now(UTC) + timedelta(milliseconds=150)))
            await wait_for_change(feed, "voided", token.id, within=3)
            assert (await other.get(token.id)).status is SemaphoreStatus.VOIDED
        finally:
            await other.aclose()
        feed.close()


class FailureLog(logging.Handler):
    """Collects the purgatory's warnings; ``count(n)`` waits until ``n`` have arrived."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # logged from the purgatory's tasks, on the loop's thread
        self.arrived.set()

    async def count(self, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.records) < n:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
def failure_log() -> Iterator[FailureLog]:
    handler = FailureLog()
    logger = logging.getLogger("agentflux.purgatory")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_the_deadline_timer_outlives_a_write_lock_held_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure_log: FailureLog
) -> None:
    monkeypatch.setattr(_sqlite, "_LOCK_TIMEOUT", 0.2)  # the helper's busy timeout
    path = tmp_path / "p.db"
    async with open_purgatory(sqlite_url(path)) as p:
        feed = p.changes()
        token = await p.save(make_token(deadline=datetime.now(UTC) + timedelta(milliseconds=100)))
        other = sqlite3.connect(path, isolation_level=None)  # another process, writing for a while
        try:
            other.execute("BEGIN IMMEDIATE")
            # Two rounds of the timer fail on the lock (``database is locked`` after 0.2 s) ...
            await failure_log.count(2)
            assert (await p.get(token.id)).status is SemaphoreStatus.PENDING
            other.execute("COMMIT")
        finally:
            other.close()
        # ... and a later one, once the lock is free, applies the deadline.
        await wait_for_change(feed, "voided", token.id, within=10)
        feed.close()
        assert (await p.get(token.id)).status is SemaphoreStatus.VOIDED
    first = failure_log.records[0]
    assert "deadline timer" in first.getMessage()
    assert first.exc_info is not None
    assert isinstance(first.exc_info[1], SemaphoreStoreError)
    assert "database is locked" in str(first.exc_info[1])


async def test_the_change_watcher_outlives_a_failed_read_and_loses_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure_log: FailureLog
) -> None:
    url = sqlite_url(tmp_path / "p.db")
    async with open_purgatory(url) as watcher:
        store = watcher.store
        assert isinstance(store, SqliteStore)
        read = store.changes_since
        failures = 2

        async def flaky(seq: int) -> tuple[int, list[StoreChange]]:
            nonlocal failures
            if failures:
                failures -= 1
                raise SemaphoreStoreError("sqlite store error: database is locked")
            return await read(seq)

        monkeypatch.setattr(store, "changes_since", flaky)
        feed = watcher.changes()
        other = open_purgatory(url)
        try:
            token = await other.save(make_token("seen despite the failures"))
            # Read again after the failed rounds, without waiting for another commit.
            change = await wait_for_change(feed, "saved", token.id, within=5)
        finally:
            await other.aclose()
        feed.close()
    assert change.token.prompt == "seen despite the failures"
    assert len(failure_log.records) == 2
    assert all("change watcher" in record.getMessage() for record in failure_log.records)


# ----------------------------------------------------------------------------- crash safety

CHILD = r"""
import asyncio, sys
from agentflux import SemaphoreReason, SemaphoreToken, open_purgatory

async def work(p, worker):
    i = 0
    while True:
        token = SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt=f"{worker}/{i}",
                               original_event={"w": worker, "i": i}, frozen_state=b"s" * (i % 7))
        await p.save(token)
        print("saved", token.id, flush=True)
        await p.resolve(token.id, {"w": worker, "i": i})
        print("resolved", token.id, flush=True)
        i += 1

async def main():
    p = open_purgatory(sys.argv[1])
    await p.open()
    print("ready", flush=True)
    await asyncio.gather(*(work(p, w) for w in range(int(sys.argv[2]))))

asyncio.run(main())
"""

TRIALS = 20
PARALLEL = TRIALS  # all at once: the children spend most of their start-up importing
CHILD_WORKERS = 3


@dataclass
class Trial:
    index: int
    saved: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    rows: int = 0
    violations: list[str] = field(default_factory=list)


async def crash_one(index: int, tmp_path: Path, rng: random.Random) -> Trial:
    trial = Trial(index)
    path = tmp_path / f"crash{index}.db"
    delay = rng.uniform(0.2, 0.8)
    with (tmp_path / f"crash{index}.err").open("wb") as errors:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            sqlite_url(path),
            str(CHILD_WORKERS),
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
        assert child.stdout is not None
        try:
            async with asyncio.timeout(20):
                assert await child.stdout.readline() == b"ready\n"
            await asyncio.sleep(delay)  # the child commits as fast as it can meanwhile
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have died on its own: reported below
                child.send_signal(signal.SIGKILL)
            output = await child.stdout.read()
            await child.wait()
    assert child.returncode == -signal.SIGKILL, (tmp_path / f"crash{index}.err").read_text()
    for line in output.decode().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # cut off by the kill: not an acknowledgement
        what, token_id = line.split()
        (trial.saved if what == "saved" else trial.resolved).append(token_id)

    rows = all_rows(path)
    trial.rows = len(rows)
    if not trial.saved:
        trial.violations.append(f"trial {index}: no save acknowledged in {delay:.2f} s")
    async with open_purgatory(sqlite_url(path)) as p:
        for token_id in trial.saved:
            try:
                token = await p.get(token_id)
            except SemaphoreNotFound:
                trial.violations.append(f"acknowledged save {token_id} is lost")
                continue
            event = token.original_event
            if not isinstance(event, dict) or token.prompt != f"{event['w']}/{event['i']}":
                trial.violations.append(f"{token_id} came back damaged: {token!r}")
        for token_id in trial.resolved:
            try:
                token = await p.get(token_id)
            except SemaphoreNotFound:
                trial.violations.append(f"acknowledged resolve of {token_id} is lost with its token")
                continue
            if token.status is not SemaphoreStatus.RESOLVED:
                trial.violations.append(f"acknowledged resolve of {token_id} is lost: {token.status}")
        for token_id in rows:
            token = await p.get(token_id)
            if token.status is SemaphoreStatus.RESOLVED:
                if token.resolution != token.original_event or token.resolved_at is None:
                    trial.violations.append(f"{token_id} resolved with {token.resolution!r}")
            elif token.status is SemaphoreStatus.PENDING:
                if token.resolution is not None or token.resolved_at is not None:
                    trial.violations.append(f"pending {token_id} carries a resolution")
                # The new process can finish what the dead one left open.
                await p.resolve(token_id, token.original_event)
            else:
                trial.violations.append(f"{token_id} is {token.status}, which nobody asked for")
    # Committed but unacknowledged work is fine; at most one save per child worker can be.
    if not len(trial.saved) <= len(rows) <= len(trial.saved) + CHILD_WORKERS:
        trial.violations.append(f"{len(rows)} rows for {len(trial.saved)} acknowledged saves")
    if pragma(path, "integrity_check") != "ok":
        trial.violations.append("integrity_check failed")
    return trial


async def test_acknowledged_work_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    trials: list[Trial] = []
    started = time.monotonic()
    for first in range(0, TRIALS, PARALLEL):
        batch = range(first, min(first + PARALLEL, TRIALS))
        outcomes = await asyncio.gather(
            *(crash_one(i, tmp_path, random.Random(rng.random())) for i in batch), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            trials.append(outcome)
    violations = [v for trial in trials for v in trial.violations]
    summary = (
        f"{len(trials)} trials in {time.monotonic() - started:.1f} s: "
        f"{sum(len(t.saved) for t in trials)} acknowledged saves, "
        f"{sum(len(t.resolved) for t in trials)} acknowledged resolves, "
        f"{sum(t.rows for t in trials)} rows, {len(violations)} violations"
    )
    print(summary)
    assert len(trials) == TRIALS
    assert not violations, f"{summary}\n" + "\n".join(violations[:20])


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("mode", ["auto", "thread"])
async def test_closing_with_saves_in_flight_leaves_no_thread_or_fd_behind(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The threads linger a moment after their last act, as a busy machine can make them.
    for cls, name in ((_sqlite._Helper, "run"), (_fsync.ThreadSync, "_run")):
        real = getattr(cls, name)

        def lingering(self: object, real: Any = real) -> None:
            real(self)
            time.sleep(0.05)

        monkeypatch.setattr(cls, name, lingering)
    threads, fds = set(threading.enumerate()), _open_fds()
    p = open_purgatory(f"{sqlite_url(tmp_path / 'p.db')}?sync={mode}")
    await p.save(make_token())
    saves = [asyncio.ensure_future(p.save(make_token())) for _ in range(64)]
    await p.aclose()
    outcomes = await asyncio.gather(*saves, return_exceptions=True)
    assert all(o is None or isinstance(o, SemaphoreStoreError) for o in outcomes), outcomes
    assert set(threading.enumerate()) - threads == set()
    assert _open_fds() - fds == set()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
async def test_a_failed_fsync_says_the_store_must_be_reopened_and_reopening_works(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{sqlite_url(tmp_path / 'p.db')}?sync=thread"
    failing = False
    real = _fsync.fdatasync

    def fdatasync(fd: int) -> None:
        if failing:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(_fsync, "fdatasync", fdatasync)
    p = open_purgatory(url)
    kept = await p.save(make_token("kept"))
    failing = True
    name = errno.errorcode[code]
    with pytest.raises(SemaphoreStoreError, match=f"could not be synced: {name} .*open the store again") as info:
        await p.save(make_token("lost"))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == code
    with pytest.raises(SemaphoreStoreError, match=f"failed earlier.*{name}.*open the store again"):
        await p.list_pending()
    await asyncio.wait_for(p.aclose(), 10)
    failing = False  # the disk has recovered
    async with open_purgatory(url) as again:
        assert (await again.get(kept.id)).status is SemaphoreStatus.PENDING
        token = await again.save(make_token("after"))
        await again.resolve(token.id, "ok")
        assert (await again.get(token.id)).status is SemaphoreStatus.RESOLVED


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EINVAL, errno.ENOSYS])
async def test_a_failed_io_submit_falls_back_to_the_thread_and_fails_no_committed_save(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    threads = set(threading.enumerate())
    async with open_purgatory(sqlite_url(path)) as p:
        store = p.store
        assert isinstance(store, SqliteStore)
        if not isinstance(store._sync, _fsync.AioSync):
            pytest.skip("kernel AIO is not available on this machine")
        submits: list[int] = []

        def io_submit(self: _fsync.AioSync) -> int:
            submits.append(code)
            return code

        monkeypatch.setattr(_fsync.AioSync, "_io_submit", io_submit)
        tokens = [await p.save(make_token()) for _ in range(3)]
        tokens += await asyncio.gather(*(p.save(make_token()) for _ in range(64)))
        await p.resolve(tokens[0].id, "ok")
        assert (await p.get(tokens[0].id)).status is SemaphoreStatus.RESOLVED
        # EAGAIN is retried (then synced on the thread this once); a refusal switches for good.
        assert len(submits) > 2 if code == errno.EAGAIN else submits == [code]
    assert all_rows(path) == {t.id: ("resolved" if t is tokens[0] else "pending") for t in tokens}
    assert set(threading.enumerate()) - threads == set()


async def test_a_version_5_file_gains_the_tasks_table_and_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in _sqlite._MIGRATIONS[:5]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    async with open_purgatory(sqlite_url(path)) as p:
        kept = await p.save(make_token("before the tasks table"))
        await p.store.save_task("t1", '{"n": 1}')
    assert pragma(path, "user_version") == SCHEMA_VERSION == 6
    async with open_purgatory(sqlite_url(path)) as p:
        assert await p.store.load_tasks() == [("t1", '{"n": 1}')]
        assert (await p.get(kept.id)).prompt == "before the tasks table"
