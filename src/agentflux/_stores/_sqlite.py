"""The embedded durable store: SQLite in WAL mode with full sync, off the event loop.

All database work runs on one thread that owns the connection. Operations submitted
while a transaction is being written queue up and are then committed together (group
commit): every caller still gets its answer only after the commit that holds its change
is on disk, but concurrent callers share one fsync. Each operation runs inside its own
savepoint, so one failing operation never undoes another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import SemaphoreError, SemaphoreStoreError
from ._base import StoreChange, TokenRecord

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

R = TypeVar("R")

_COLUMNS = (
    "id, status, reason, prompt, options, severity, frozen_state, original_event, deadline, deadline_ts, "
    "escalation, flux_id, created_at, resolution, resolved_at, resumed"
)
_SELECT = f"SELECT {_COLUMNS} FROM tokens"
_KEEP_CHANGES = 10_000  # change rows kept for other processes' watchers
_MAX_BATCH = 512
_WATCH_INTERVAL = 0.2  # seconds between checks for commits by other processes

# Schema migrations, applied in order; PRAGMA user_version holds the version reached.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            prompt TEXT NOT NULL,
            options TEXT NOT NULL,
            severity TEXT NOT NULL,
            frozen_state BLOB NOT NULL,
            original_event BLOB NOT NULL,
            deadline TEXT,
            deadline_ts REAL,
            escalation TEXT,
            flux_id TEXT,
            created_at TEXT NOT NULL,
            resolution BLOB,
            resolved_at TEXT,
            resumed INTEGER NOT NULL DEFAULT 0
        )""",
        # Partial indexes: each covers only the rows a query looks for, so most writes
        # touch one small index instead of several.
        "CREATE INDEX open_tokens ON tokens (created_at) WHERE status IN ('pending', 'escalated')",
        "CREATE INDEX pending_deadlines ON tokens (deadline_ts) WHERE status = 'pending' AND deadline_ts IS NOT NULL",
        "CREATE INDEX unclaimed_resolutions ON tokens (flux_id) WHERE status = 'resolved' AND resumed = 0",
        # seq is the rowid: it only grows, since the newest rows are never deleted.
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY,
            token_id TEXT NOT NULL,
            kind TEXT NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_STOP = object()


_INSERT = f"INSERT INTO tokens ({_COLUMNS}) VALUES ({', '.join('?' * 16)})"


def _row(r: TokenRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.status,
        r.reason,
        r.prompt,
        r.options,
        r.severity,
        r.frozen_state,
        r.original_event,
        r.deadline,
        r.deadline_ts,
        r.escalation,
        r.flux_id,
        r.created_at,
        r.resolution,
        r.resolved_at,
        int(r.resumed),
    )


def _record(row: tuple[Any, ...]) -> TokenRecord:
    values = list(row)
    values[15] = bool(values[15])
    return TokenRecord(*values)


class _Job:
    __slots__ = ("fn", "future", "on_commit", "result", "writes")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        writes: bool,
        on_commit: Callable[[Any], None] | None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.writes = writes
        self.on_commit = on_commit
        self.result: Any = None


def _deliver(jobs: list[_Job]) -> None:
    for job in jobs:
        failed = isinstance(job.result, BaseException)
        if not failed and job.on_commit is not None:
            job.on_commit(job.result)  # even if the caller was cancelled: the change is committed
        if job.future.done():
            continue
        if failed:
            job.future.set_exception(job.result)
        else:
            job.future.set_result(job.result)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, SemaphoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return SemaphoreError(f"constraint violated: {exc}")
    if isinstance(exc, (sqlite3.Error, OSError)):
        error = SemaphoreStoreError(f"sqlite store error: {exc}")
        error.__cause__ = exc
        return error
    return exc


class _Writer(threading.Thread):
    """Owns the connection; runs queued jobs in shared transactions."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"agentflux-sqlite:{path}", daemon=True)
        self.path = path
        self.loop = loop
        self.jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self.ready: asyncio.Future[None] = loop.create_future()

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SemaphoreStoreError(
                    f"{self.path} has schema version {version}, newer than this agentflux ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self.loop.call_soon_threadsafe(_fail_ready, self.ready, _translate(exc))
            return
        self.loop.call_soon_threadsafe(_set_ready, self.ready)
        try:
            while True:
                first = self.jobs.get()
                batch = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self.jobs.get_nowait())
                    except queue.Empty:
                        break
                jobs = [job for job in batch if isinstance(job, _Job)]
                if jobs:
                    self._run_batch(conn, jobs)
                    self._post(jobs)
                if len(jobs) != len(batch):  # the stop marker was in the batch
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        writes = any(job.writes for job in jobs)
        # With one job, the transaction itself is its savepoint.
        isolate = len(jobs) > 1
        try:
            if writes:
                conn.execute("BEGIN IMMEDIATE")
            for index, job in enumerate(jobs):
                savepoint = isolate and job.writes
                if savepoint:
                    conn.execute(f"SAVEPOINT op{index}")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    if savepoint:
                        conn.execute(f"ROLLBACK TO op{index}")
                    elif job.writes and conn.in_transaction:
                        conn.execute("ROLLBACK")
                        writes = False
                    job.result = _translate(exc)
                if savepoint:
                    conn.execute(f"RELEASE op{index}")
            if writes:
                conn.execute("COMMIT")
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of this batch is durable
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = _translate(exc)
            for job in jobs:
                if job.writes:
                    job.result = error

    def _post(self, jobs: list[_Job]) -> None:
        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_deliver, jobs)


def _set_ready(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail_ready(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class SqliteStore:
    """Token records in an SQLite file (WAL, synchronous=FULL, group commit)."""

    def __init__(self, path: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.path = os.fspath(path)
        self.url = url or f"sqlite:///{self.path}"
        self._writer: _Writer | None = None
        self._closed = False
        self._data_version: int | None = None

    async def open(self) -> None:
        if self._closed:
            raise SemaphoreStoreError(f"the store {self.url} is closed")
        if self._writer is None:
            self._writer = _Writer(self.path, asyncio.get_running_loop())
            self._writer.start()
        await asyncio.shield(self._writer.ready)

    async def close(self) -> None:
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.jobs.put(_STOP)
        # Joining would block the loop; wait for the thread on a worker thread instead.
        await asyncio.to_thread(writer.join)

    async def _submit(
        self,
        fn: Callable[[sqlite3.Connection], R],
        *,
        writes: bool,
        on_commit: Callable[[R], None] | None = None,
    ) -> R:
        if self._writer is None:
            await self.open()
        writer = self._writer
        if writer is None:
            raise SemaphoreStoreError(f"the store {self.url} is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        writer.jobs.put(_Job(fn, future, writes, on_commit))
        return await future

    # ------------------------------------------------------------------ writes

    @staticmethod
    def _log(conn: sqlite3.Connection, token_id: str, kind: str) -> int:
        seq = conn.execute("INSERT INTO changes (token_id, kind) VALUES (?, ?)", (token_id, kind)).lastrowid
        assert seq is not None
        if seq % 1000 == 0:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (seq - _KEEP_CHANGES,))
        return seq

    async def insert(self, record: TokenRecord, on_commit: Callable[[int], None] | None = None) -> int:
        def insert(conn: sqlite3.Connection) -> int:
            try:
                conn.execute(_INSERT, _row(record))
            except sqlite3.IntegrityError:
                raise SemaphoreError(f"a token with id {record.id!r} already exists") from None
            return self._log(conn, record.id, "saved")

        return await self._submit(insert, writes=True, on_commit=on_commit)

    async def transition(
        self,
        token_id: str,
        allowed: tuple[str, ...],
        status: str,
        resolution: bytes | None,
        resolved_at: str | None,
        *,
        claim: bool = False,
        on_commit: Callable[[tuple[TokenRecord, int] | None], None] | None = None,
    ) -> tuple[TokenRecord, int] | None:
        marks = ", ".join("?" * len(allowed))

        def transition(conn: sqlite3.Connection) -> tuple[TokenRecord, int] | None:
            row = conn.execute(
                f"UPDATE tokens SET status = ?, resolution = ?, resolved_at = ?, resumed = max(resumed, ?) "
                f"WHERE id = ? AND status IN ({marks}) RETURNING {_COLUMNS}",
                (status, resolution, resolved_at, int(claim), token_id, *allowed),
            ).fetchone()
            if row is None:
                return None
            return _record(row), self._log(conn, token_id, status)

        return await self._submit(transition, writes=True, on_commit=on_commit)

    async def claim_resume(self, token_id: str) -> bool:
        def claim(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE tokens SET resumed = 1 WHERE id = ? AND status = 'resolved' AND resumed = 0", (token_id,)
            )
            return cursor.rowcount == 1

        return await self._submit(claim, writes=True)

    async def release_claim(self, token_id: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE tokens SET resumed = 0 WHERE id = ? AND status = 'resolved'", (token_id,))

        await self._submit(release, writes=True)

    # ------------------------------------------------------------------- reads

    async def get(self, token_id: str) -> TokenRecord | None:
        def get(conn: sqlite3.Connection) -> TokenRecord | None:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (token_id,)).fetchone()
            return None if row is None else _record(row)

        return await self._submit(get, writes=False)

    async def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[TokenRecord]:
        def select(conn: sqlite3.Connection) -> list[TokenRecord]:
            return [_record(row) for row in conn.execute(f"{_SELECT} {where}", params)]

        return await self._submit(select, writes=False)

    async def list_open(self) -> list[TokenRecord]:
        return await self._select("WHERE status IN ('pending', 'escalated') ORDER BY created_at, id")

    async def due(self, now_ts: float) -> list[TokenRecord]:
        return await self._select(
            "WHERE status = 'pending' AND deadline_ts IS NOT NULL AND deadline_ts <= ? ORDER BY deadline_ts", (now_ts,)
        )

    async def next_deadline(self) -> float | None:
        def earliest(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(deadline_ts) FROM tokens WHERE status = 'pending' AND deadline_ts IS NOT NULL"
            ).fetchone()
            return None if row is None else row[0]

        return await self._submit(earliest, writes=False)

    async def resolved_unclaimed(self, flux_id: str) -> list[TokenRecord]:
        return await self._select(
            "WHERE flux_id = ? AND status = 'resolved' AND resumed = 0 ORDER BY resolved_at", (flux_id,)
        )

    async def changes_since(self, seq: int) -> list[StoreChange]:
        def changes(conn: sqlite3.Connection) -> list[StoreChange]:
            rows = conn.execute(
                f"SELECT c.seq, c.kind, {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))} "
                "FROM changes c JOIN tokens t ON t.id = c.token_id WHERE c.seq > ? ORDER BY c.seq",
                (seq,),
            ).fetchall()
            return [StoreChange(row[0], row[1], _record(row[2:])) for row in rows]

        return await self._submit(changes, writes=False)

    async def last_seq(self) -> int:
        def last(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

        return await self._submit(last, writes=False)

    async def wait_external_change(self) -> None:
        """Return once another connection has committed (checked every 0.2 s).

        SQLite has no change notification across processes; ``PRAGMA data_version`` is
        the cheap check it offers, and this is the one timer the library allows outside
        the processing path.
        """

        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        if self._data_version is None:
            self._data_version = await self._submit(version, writes=False)
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            current = await self._submit(version, writes=False)
            if current != self._data_version:
                self._data_version = current
                return
