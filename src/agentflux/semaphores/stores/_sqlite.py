"""The embedded durable store: SQLite in WAL mode; a change is acknowledged only once it is on disk.

How a write travels:

1. Operations submitted during one pass of the event loop run together on the loop's
   thread, in one transaction of the store's *fast* connection (an operation refuses
   before it changes anything, and an unexpected error re-runs the operations one by one,
   so one failing operation never undoes another). This is CPU and page-cache work: tens
   of microseconds per operation.
2. The commit is made durable by an fdatasync of the WAL file, off the loop: through kernel
   AIO where the platform has it (the completion arrives on an eventfd the loop watches),
   else on a thread. Callers hear of their results only after that sync; transactions
   committed while a sync is in flight share the next one (group commit). A read issued
   after a write is answered only once that write is durable, so nothing in this process
   acts on a change that a crash could still take back.
3. That fdatasync is exactly the WAL sync SQLite's ``synchronous=FULL`` performs at commit,
   so the fast connection runs with ``synchronous=OFF`` and never checkpoints
   (``wal_autocheckpoint=0``; before it closes it switches back to FULL). Checkpoints, which
   must sync the database file before the WAL may be reused, run on the helper thread's
   connection, which uses ``synchronous=FULL`` and also creates and migrates the schema.
   They start when the WAL should hold about ``_CHECKPOINT_BYTES`` (the bytes of the rows
   written since the last one, plus a cost per write that each checkpoint measures; one
   transaction takes at most that many bytes of rows), and the WAL file is
   zero-filled twice that far when the store opens: SQLite rewrites the WAL from its start
   after a checkpoint, so commits overwrite allocated blocks, and their fdatasync need
   not also commit the filesystem's journal for a grown file. A WAL that a record bigger
   than the reserve grew is cut back to it (``journal_size_limit``) when it starts over.
4. When the fast connection finds the database locked (another process is writing), the
   batch runs on the helper thread's connection instead, waiting for the lock there (up to
   10 s) and committing with full sync: the loop never waits for a lock or for the disk.

Other processes may see a change up to one fsync (about 0.1 ms) before it is acknowledged;
whatever they write after it makes it durable with their own sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import itertools
import math
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..._core._errors import SemaphoreError, SemaphoreStoreError
from ._base import OPEN_STATUSES, LoopBinding, StoreChange, TokenRecord
from ._fsync import AioSync, ThreadSync, fdatasync, open_sync

__all__ = ["SCHEMA_VERSION", "SqliteStore", "from_url"]

R = TypeVar("R")

_COLUMNS = (
    "id, status, reason, prompt, options, severity, frozen_state, original_event, deadline, deadline_ts, "
    "escalation, flux_id, created_at, resolution, resolved_at, resumed, resolved_by"
)
_SELECT = f"SELECT {_COLUMNS} FROM tokens"
_SELECT_ONE = f"{_SELECT} WHERE id = ?"
_KEEP_CHANGES = 10_000  # change rows kept for other processes' watchers
_MAX_BATCH = 256  # operations per transaction on the loop: bounds one pass of the loop
_CHECKPOINT_BYTES = 2 << 20  # WAL bytes written between checkpoints
_RESERVE_BYTES = 2 * _CHECKPOINT_BYTES  # WAL space zero-filled ahead: commits overwrite, never append
_FIRST_BYTES_PER_WRITE = 4 * (4096 + 24)  # the guess until a checkpoint measures it: four 4 KiB frames
_REMEMBER_BYTES = 8 << 20  # bytes of the records of open tokens remembered from their save
_REMEMBER_COUNT = 4096  # and at most this many (tokens resolved elsewhere stay until pushed out)
_RECORD_OVERHEAD = 400  # bytes a remembered record takes beyond its strings and bytes
_WATCH_INTERVAL = 0.2  # seconds between checks for commits by other processes
_LOCK_TIMEOUT = 10.0  # seconds the helper thread waits for another process's write lock
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_LOCK_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)  # SQLite's own steps
SYNC_MODES = ("auto", "thread")

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
    (
        # Version 2: triggers write the change log inside the statement that makes the change
        # (one statement per operation instead of two), and every row names the store object
        # that wrote it, so a watcher can skip its own changes without remembering them.
        "ALTER TABLE tokens ADD COLUMN origin TEXT",
        "ALTER TABLE changes ADD COLUMN origin TEXT",
        """CREATE TRIGGER log_saved AFTER INSERT ON tokens BEGIN
            INSERT INTO changes (token_id, kind, origin) VALUES (new.id, 'saved', new.origin);
        END""",
        """CREATE TRIGGER log_transition AFTER UPDATE OF status ON tokens WHEN new.status != old.status BEGIN
            INSERT INTO changes (token_id, kind, origin) VALUES (new.id, new.status, new.origin);
        END""",
    ),
    (
        # Version 3: a token without a flux is never resumed by one, so its resolution
        # need not be indexed (nor kept in the index forever, since nobody claims it).
        "DROP INDEX unclaimed_resolutions",
        "CREATE INDEX unclaimed_resolutions ON tokens (flux_id) "
        "WHERE status = 'resolved' AND resumed = 0 AND flux_id IS NOT NULL",
    ),
    (
        # Version 4: a claim to resume is a lease held by one store object (one process),
        # renewed while its resumption runs and cleared once it completed; a claim whose
        # holder died lapses and is taken again. NULL expiry: held for good (finished).
        "ALTER TABLE tokens ADD COLUMN claim_expires REAL",
        "ALTER TABLE tokens ADD COLUMN claim_origin TEXT",
        "CREATE INDEX leased_claims ON tokens (flux_id, claim_expires) "
        "WHERE status = 'resolved' AND claim_expires IS NOT NULL",
    ),
    (
        # Version 5: who answered, and from where (an audit of every resolution and cancel).
        "ALTER TABLE tokens ADD COLUMN resolved_by TEXT",
    ),
    (
        # Version 6: workshop tasks' progress, one JSON snapshot per task (replaced as the
        # task moves on), so a task survives the process that ran it.
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            data TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# OR IGNORE: a duplicate id changes nothing and is reported from the row count, so no
# statement of a shared transaction ever fails halfway.
_INSERT = f"INSERT OR IGNORE INTO tokens ({_COLUMNS}, origin) VALUES ({', '.join('?' * 18)})"


def _row(r: TokenRecord, origin: str) -> tuple[Any, ...]:
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
        r.resolved_by,
        origin,
    )


def _footprint(r: TokenRecord) -> int:
    """About the bytes a record holds (the short fixed-format strings are in the overhead)."""
    return (
        _RECORD_OVERHEAD
        + len(r.prompt)
        + len(r.options)
        + len(r.frozen_state)
        + len(r.original_event)
        + len(r.escalation or "")
        + len(r.flux_id or "")
        + len(r.resolution or b"")
    )


def _record(row: tuple[Any, ...]) -> TokenRecord:
    values = list(row)
    values[15] = bool(values[15])
    return TokenRecord(*values)


class _Job:
    __slots__ = ("fn", "future", "on_commit", "result", "size", "writes")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        writes: bool,
        on_commit: Callable[[Any], None] | None,
        size: int = 0,
    ) -> None:
        self.fn = fn
        self.future = future
        self.writes = writes
        self.on_commit = on_commit
        self.size = size  # about the bytes of the row it writes; -1: those of the record it returns
        self.result: Any = None

    def written(self) -> int:
        """About the row bytes this write put in the WAL."""
        if self.size >= 0:
            return self.size
        return _footprint(self.result) if isinstance(self.result, TokenRecord) else 0


def _deliver(jobs: list[_Job]) -> None:
    for job in jobs:
        failed = isinstance(job.result, BaseException)
        if not failed and job.on_commit is not None:
            try:
                job.on_commit(job.result)  # even if the caller was cancelled: the change is committed
            except Exception as exc:  # the caller hears of it; the other jobs still get their results
                job.result, failed = exc, True
        if job.future.done():
            continue
        if failed:
            job.future.set_exception(job.result)
        else:
            job.future.set_result(job.result)


def _fail(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        job.result = error
    _deliver(jobs)


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


class _Locked(Exception):
    """The fast connection found the database locked; the batch goes to the helper thread."""


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY


def _run_batch(conn: sqlite3.Connection, jobs: list[_Job], *, locked_raises: bool) -> bool:
    """Run ``jobs`` in one transaction (reads alone need none); True if it committed writes.

    A job refuses by raising ``SemaphoreError`` before it changes anything, so refusals
    need no savepoints. Any other error rolls the whole transaction back, and the jobs
    then run one transaction each, so that only the failing job reports the failure.
    With ``locked_raises``, a locked database raises ``_Locked`` with nothing changed.
    """
    writes = any(job.writes for job in jobs)
    try:
        if writes:
            conn.execute("BEGIN IMMEDIATE")
        for job in jobs:
            try:
                job.result = job.fn(conn)
            except SemaphoreError as exc:
                job.result = exc
        if writes:
            conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if locked_raises and _is_busy(exc):
            raise _Locked from exc
        if len(jobs) > 1:
            committed = False
            for job in jobs:
                job.result = None
                committed |= _run_batch(conn, [job], locked_raises=False)
            return committed
        jobs[0].result = _translate(exc)
        return False
    return writes


def _connect(path: str, *, timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode whose statements wait ``timeout`` seconds for a lock
    (opening it waits up to ``_LOCK_TIMEOUT``, whatever ``timeout`` is)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_LOCK_TIMEOUT)
    try:
        _enter_wal(conn)
        if timeout != _LOCK_TIMEOUT:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _enter_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting for the lock until the deadline any statement has.

    Switching a database (a new file, say) to WAL takes its exclusive lock without calling
    the busy handler: while any other connection reads the file (two stores opening a new
    file at once) the statement fails at once with SQLITE_BUSY, whatever the busy timeout.
    Nothing signals that the lock is free, so the switch is retried at the pace of SQLite's
    own busy handler. Only a switch that found the file locked ever comes here twice.
    """
    deadline = time.monotonic() + _LOCK_TIMEOUT
    for attempt in itertools.count():
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            pause = _LOCK_PAUSES[min(attempt, len(_LOCK_PAUSES) - 1)]
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
            _pause(pause)


_pause = time.sleep  # between attempts to take a lock that SQLite does not wait for (tests observe it)


@contextlib.contextmanager
def _without_waiting(conn: sqlite3.Connection) -> Iterator[None]:
    """Within the block, a lock held by another process fails at once (SQLITE_BUSY)."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(_LOCK_TIMEOUT * 1000)}")


def _frame_bytes(conn: sqlite3.Connection) -> int:
    """The size of one WAL frame: a page and its 24-byte header."""
    return int(conn.execute("PRAGMA page_size").fetchone()[0]) + 24


def _reserved_size(conn: sqlite3.Connection) -> int:
    """The WAL file's size when ``_RESERVE_BYTES`` of whole frames are reserved (and its header)."""
    frame = _frame_bytes(conn)
    return 32 + _RESERVE_BYTES // frame * frame


def _reserve_wal(conn: sqlite3.Connection, wal: str) -> None:
    """Zero-fill the WAL file up to ``_RESERVE_BYTES`` (whole frames), once.

    An fdatasync after writes that grow a file must also commit the filesystem's journal
    (new size, new blocks), which on the disks measured costs as much again as the data;
    overwriting blocks the file already has does not. SQLite reuses its WAL from the start
    after each complete checkpoint, so once the space is there every commit overwrites.
    SQLite ignores bytes past the last valid frame (their salts and checksums do not
    match), and the write lock held meanwhile keeps every other writer out of the file.

    Only a speed-up, so it never fails: skipped while another process holds the write
    lock, and a disk too full for it (or any other OS error) just leaves it undone.
    """
    want = _reserved_size(conn)
    try:
        fd = os.open(wal, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        if os.fstat(fd).st_size >= want:
            return
        with _without_waiting(conn):
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return
                raise
        try:
            with contextlib.suppress(OSError):
                size = os.fstat(fd).st_size
                zeros = bytes(min(max(want - size, 0), 1 << 20))
                while size < want:
                    size += os.pwrite(fd, zeros[: want - size], size)
                fdatasync(fd)
        finally:
            conn.execute("ROLLBACK")
    finally:
        os.close(fd)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _sync_directory(path: str) -> None:
    """Make the WAL file's directory entry durable (its creation is a directory change)."""
    with contextlib.suppress(OSError):  # some platforms cannot open a directory
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Helper(threading.Thread):
    """Owns the full-sync connection: schema, checkpoints, and batches the loop could not lock for."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"agentflux-sqlite:{path}", daemon=True)
        self.path = path
        self.loop = loop
        self.work: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.ready: asyncio.Future[tuple[sqlite3.Connection, int]] = loop.create_future()
        self.files: list[tuple[str, tuple[int, int]]] = []  # (path, (device, inode)) of the open files
        self.stopped: asyncio.Future[None] = loop.create_future()

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection, int]:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        durable = _connect(self.path, timeout=_LOCK_TIMEOUT)
        fast: sqlite3.Connection | None = None
        wal = -1
        try:
            durable.execute("PRAGMA synchronous=FULL")
            self._migrate(durable)
            fast = _connect(self.path, timeout=0)
            fast.execute("PRAGMA synchronous=OFF")
            fast.execute("PRAGMA wal_autocheckpoint=0")
            # Only this file: SQLite's locks live on the database and -shm files, and
            # closing any descriptor of a file drops every lock this process holds on it.
            wal = os.open(self.path + "-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            _reserve_wal(durable, self.path + "-wal")
            self.files = [(self.path, _identity(os.stat(self.path))), (self.path + "-wal", _identity(os.fstat(wal)))]
            for conn in (durable, fast):
                # A WAL that a big transaction grew is cut back to its reserve when it starts over.
                conn.execute(f"PRAGMA journal_size_limit = {_reserved_size(conn)}")
        except BaseException:
            if wal >= 0:
                os.close(wal)
            if fast is not None:
                fast.close()
            durable.close()
            raise
        _sync_directory(self.path)
        return durable, fast, wal

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

    @staticmethod
    def _maintain(conn: sqlite3.Connection, wal: str) -> tuple[BaseException | None, int]:
        """Prune the change log, checkpoint, and restore the WAL's reserve if another
        process truncated it (the loop writes nothing meanwhile).

        Returns an error that makes the store unusable (or None) and the bytes the WAL
        held (0 if unknown). A database locked by another process skips this round
        rather than wait for it, since the loop's writes wait for the round.
        """
        try:
            with _without_waiting(conn):
                conn.execute("DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?", (_KEEP_CHANGES,))
                frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            _reserve_wal(conn, wal)
            return None, max(frames, 0) * _frame_bytes(conn)
        except sqlite3.Error as exc:
            return (None if _is_busy(exc) else _translate(exc)), 0

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop means nobody is waiting any more
            self.loop.call_soon_threadsafe(callback, *args)

    def run(self) -> None:
        try:
            durable, fast, wal = self._open()
        except BaseException as exc:
            self._post(_settle, self.ready, None, _translate(exc))
            self._post(_settle, self.stopped, None, None)
            return
        self._post(_settle, self.ready, (fast, wal), None)
        try:
            while True:
                kind, payload = self.work.get()
                if kind == "stop":
                    return
                if kind == "batch":
                    jobs, done = payload
                    try:
                        _run_batch(durable, jobs, locked_raises=False)
                    except Exception as exc:  # even ROLLBACK failed: every job hears of it
                        for job in jobs:
                            job.result = _translate(exc)
                    self._post(done, jobs)
                elif kind == "checkpoint":
                    try:
                        outcome = self._maintain(durable, self.path + "-wal")
                    except Exception as exc:  # whatever happens, the loop hears of it and resumes writing
                        outcome = (_translate(exc), 0)
                    self._post(payload, outcome)
        finally:
            durable.close()  # the last connection: SQLite checkpoints (with full sync) and removes the WAL
            self._post(_settle, self.stopped, None, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _parse_options(url_path: str) -> tuple[str, str]:
    path, _, query = url_path.partition("?")
    sync = "auto"
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key != "sync" or value not in SYNC_MODES:
            raise ValueError(f"unknown sqlite store option {pair!r} (the one option is sync=auto|thread)")
        sync = value
    return path, sync


class SqliteStore:
    """Token records in an SQLite file (WAL; every acknowledged change fsynced; group commit).

    ``path`` may end with ``?sync=thread`` to sync the WAL on a thread even where kernel
    AIO is available (``sync=auto``, the default, uses AIO on Linux).
    """

    def __init__(self, path: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.path, self.sync_mode = _parse_options(os.fspath(path))
        self.url = url or f"sqlite:///{self.path}"
        self.origin = uuid.uuid4().hex  # tags this object's changes in the shared log
        self._helper: _Helper | None = None
        self._fast: sqlite3.Connection | None = None
        self._wal = -1  # the WAL file, for syncing it
        self._files: list[tuple[str, tuple[int, int]]] = []  # the database and WAL files, as opened
        self._sync: AioSync | ThreadSync | None = None
        self._closed = False
        self._failed: BaseException | None = None
        self._data_version: int | None = None
        self._pending: list[_Job] = []
        self._flush_scheduled = False
        self._unsynced: list[_Job] = []  # committed (or reading committed data), waiting for the next sync
        self._syncing: list[_Job] | None = None  # covered by the sync in flight
        self._idle: asyncio.Future[None] | None = None  # set when no sync is in flight or wanted
        self._writes = 0  # write operations committed since the last checkpoint
        self._written = 0  # and about the bytes of the rows they wrote
        self._bytes_per_write = float(_FIRST_BYTES_PER_WRITE)  # WAL bytes per write, as last measured
        self._checkpointing = False
        self._opening: asyncio.Future[None] | None = None
        self._loop = LoopBinding()  # the loop opened on: the helper thread, sync and futures are its
        # Open tokens saved through this object, oldest first: their columns other than the
        # status and resolution never change, so a transition builds its result from here
        # instead of reading the row back (a tenth of a park+resolve cycle's SQL time).
        self._saved: dict[str, tuple[TokenRecord, int]] = {}  # with each record's footprint
        self._saved_bytes = 0

    # --------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._closed:
            raise SemaphoreStoreError(f"the store {self.url} is closed")
        self._loop.check(self.url)
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        helper = self._helper = _Helper(self.path, loop)
        helper.start()
        fast, wal = await helper.ready
        self._files = helper.files
        self._wal = wal
        self._sync = await open_sync(loop, wal, self._synced, mode=self.sync_mode)
        self._fast = fast  # from here on, work runs (so only once the sync is ready)

    async def close(self) -> None:
        self._check_closing_loop()
        self._closed = True
        if self._opening is not None and not self._opening.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._opening)
        while self._checkpointing or self._pending:
            if self._pending and not self._checkpointing:
                self._flush()
                continue
            await self._wait_idle()
        while self._syncing is not None or self._unsynced:
            await self._wait_idle()
        fast, self._fast = self._fast, None
        if fast is not None:
            # If this connection ends up the last one, its closing checkpoint must sync.
            with contextlib.suppress(sqlite3.Error):
                fast.execute("PRAGMA synchronous=FULL")
            fast.close()
        sync, self._sync = self._sync, None
        if sync is not None:
            await sync.aclose()
        if self._wal >= 0:
            os.close(self._wal)
            self._wal = -1
        self._saved.clear()
        self._saved_bytes = 0
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.work.put(("stop", None))
            await helper.stopped
            helper.join()  # it posted ``stopped`` as its last act: this returns at once

    def _check_closing_loop(self) -> None:
        """Refuse to close from another event loop while there is anything to release."""
        loop = asyncio.get_running_loop()
        bound = self._loop.loop
        if bound is not None and loop is not bound and not (self._closed and self._helper is None):
            raise self._loop.refusal(self.url, loop)

    async def _wait_idle(self) -> None:
        """Wait for the next sync or checkpoint to finish."""
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        await self._idle

    def _wake_idle(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    # --------------------------------------------------------------- running work

    async def _submit(
        self,
        fn: Callable[[sqlite3.Connection], R],
        *,
        writes: bool,
        on_commit: Callable[[R], None] | None = None,
        size: int = 0,
    ) -> R:
        if self._fast is None or self._sync is None:
            await self.open()
        loop = asyncio.get_running_loop()
        if loop is not self._loop.loop:  # before anything is submitted: its sync could never finish
            raise self._loop.refusal(self.url, loop)
        if self._failed is not None:
            raise self._failure()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Job(fn, future, writes, on_commit, size))
        if self._syncing is None and len(self._pending) == 1 and not self._flush_scheduled:
            self._flush()  # nothing to share a transaction with: run now rather than a pass later
        else:
            self._schedule_flush()  # others join during this pass of the loop
        return await future

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Run what was submitted during the last pass of the loop, in one transaction."""
        self._flush_scheduled = False
        if not self._pending or self._checkpointing:
            return  # a finished checkpoint flushes what waits
        jobs = self._next_batch()
        if self._pending:
            self._schedule_flush()
        fast, helper = self._fast, self._helper
        if self._failed is not None:
            _fail(jobs, self._failure())
            return
        if fast is None or helper is None:
            _fail(jobs, SemaphoreStoreError(f"the store {self.url} is closed"))
            return
        moved = self._moved_file()
        if moved is not None:
            self._failed = moved
            _fail(jobs, moved)
            self._empty_wal(helper)
            return
        try:
            wrote = _run_batch(fast, jobs, locked_raises=True)
        except _Locked:
            helper.work.put(("batch", (jobs, self._helper_done)))
            return
        if wrote:
            self._unsynced.extend(jobs)
            for job in jobs:
                if job.writes:
                    self._writes += 1
                    self._written += job.written()
            self._maybe_checkpoint(helper)
            if self._syncing is None:
                self._start_sync()
        else:
            self._after_reads(jobs)

    def _moved_file(self) -> SemaphoreStoreError | None:
        """An error if the database file or its WAL was deleted or replaced since opening.

        SQLite keeps writing to the files it opened: an unlinked one is lost at the next
        crash, and a WAL left beside a new database file would be replayed over it. Two
        stat calls per batch (about 2 us) keep anything from being written after that.
        """
        for name, identity in self._files:
            try:
                if _identity(os.stat(name)) == identity:
                    continue
                what = "replaced by another file"
            except (FileNotFoundError, NotADirectoryError):
                what = "deleted"
            except OSError:
                continue  # not a sign of a replaced file: SQLite reports what it cannot do
            return SemaphoreStoreError(
                f"sqlite store error: {name} was {what} while the store {self.url} had it open; "
                "nothing more is written, since it would not reach the file at that path"
            )
        return None

    def _empty_wal(self, helper: _Helper) -> None:
        """Copy the WAL into the database file the store opened, and empty it (on the helper).

        The WAL file may still be at its path, beside a database file that is not the one
        its frames belong to: whoever opens that file next would replay them over it. The
        frames belong to the file the store's connections still have open (renamed, say),
        so they go there, and the WAL left at the path holds nothing to replay.
        """

        def empty(conn: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        helper.work.put(("batch", ([_Job(empty, done, False, None)], _deliver)))

    def _next_batch(self) -> list[_Job]:
        """The oldest pending jobs: at most ``_MAX_BATCH``, and about ``_CHECKPOINT_BYTES``
        of rows (at least one job), so that one transaction never outgrows the WAL's reserve."""
        pending = self._pending
        end = min(len(pending), _MAX_BATCH)
        size = 0
        for index in range(end):
            size += pending[index].size
            if size > _CHECKPOINT_BYTES and index:
                end = index
                break
        jobs, self._pending = pending[:end], pending[end:]
        return jobs

    def _maybe_checkpoint(self, helper: _Helper) -> None:
        if self._writes * self._bytes_per_write + self._written >= _CHECKPOINT_BYTES:
            # Copy the WAL into the database file (synced) while the loop writes nothing:
            # then the next commit starts the WAL over instead of growing it.
            writes, written, self._writes, self._written = self._writes, self._written, 0, 0
            self._checkpointing = True
            helper.work.put(("checkpoint", functools.partial(self._checkpointed, writes, written)))

    def _after_reads(self, jobs: list[_Job]) -> None:
        """Deliver reads once every commit they could have seen is durable."""
        if self._unsynced:
            self._unsynced.extend(jobs)  # they may have seen the unsynced commits
        elif self._syncing is not None:
            self._syncing.extend(jobs)  # every commit they could have seen is in the sync in flight
        else:
            _deliver(jobs)

    def _helper_done(self, jobs: list[_Job]) -> None:
        if any(job.writes for job in jobs):
            _deliver(jobs)  # committed with full sync there, which also synced every earlier commit
        else:
            self._after_reads(jobs)

    def _failure(self) -> SemaphoreStoreError:
        error = SemaphoreStoreError(
            f"the store {self.url} failed earlier and takes no more work: {self._failed}; "
            "close it and open the store again (once the disk has recovered)"
        )
        error.__cause__ = self._failed
        return error

    def _start_sync(self) -> None:
        assert self._sync is not None
        self._syncing, self._unsynced = self._unsynced, []
        self._sync.start()

    def _synced(self, error: OSError | None) -> None:
        jobs, self._syncing = self._syncing or [], None
        if error is not None:
            # The kernel may have dropped the pages it could not write: nothing later can be trusted.
            name = errno.errorcode.get(error.errno or 0, "unknown errno")
            self._failed = OSError(error.errno, f"the WAL sync failed with {name} ({error.strerror or error})")
            failure = SemaphoreStoreError(
                f"sqlite store error: the WAL of {self.path} could not be synced: {name} ({error.strerror or error}); "
                "the store takes no more work, since the kernel may have dropped the unwritten pages: "
                "close it and open the store again once the disk has recovered"
            )
            failure.__cause__ = error
            waiting, self._unsynced, self._pending = jobs + self._unsynced + self._pending, [], []
            _fail(waiting, failure)
        else:
            _deliver(jobs)
            if self._unsynced:
                self._start_sync()
        if self._syncing is None:
            self._wake_idle()

    def _checkpointed(self, writes: int, written: int, outcome: tuple[BaseException | None, int]) -> None:
        """A checkpoint covering ``writes`` write operations (``written`` row bytes) finished."""
        error, wal_bytes = outcome
        self._checkpointing = False
        self._wake_idle()
        if error is not None:
            self._failed = error
        if wal_bytes and writes:
            # Rows, indexes and pages shared by a batch make this vary: measure it. (If the
            # WAL could not start over last time, it overstates, so checkpoints come sooner.)
            # The rows' own bytes are counted as written; this is what each write adds.
            self._bytes_per_write = max((wal_bytes - written) / writes, 64.0)
        if self._pending:
            self._schedule_flush()

    # ------------------------------------------------------------------ writes

    async def insert(self, record: TokenRecord, on_commit: Callable[[None], None] | None = None) -> None:
        row = _row(record, self.origin)

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute(_INSERT, row).rowcount != 1:
                raise SemaphoreError(f"a token with id {record.id!r} already exists")

        def committed(_: None) -> None:
            self._remember(record)
            if on_commit is not None:
                on_commit(None)

        await self._submit(insert, writes=True, on_commit=committed, size=_footprint(record))

    def _remember(self, record: TokenRecord) -> None:
        self._forget(record.id)
        if record.status not in OPEN_STATUSES:
            return
        if isinstance(record.deadline_ts, int):  # the REAL column gives it back as a float
            record = dataclasses.replace(record, deadline_ts=float(record.deadline_ts))
        size = _footprint(record)
        self._saved[record.id] = (record, size)
        self._saved_bytes += size
        while self._saved and (self._saved_bytes > _REMEMBER_BYTES or len(self._saved) > _REMEMBER_COUNT):
            self._forget(next(iter(self._saved)))

    def _forget(self, token_id: str) -> None:
        entry = self._saved.pop(token_id, None)
        if entry is not None:
            self._saved_bytes -= entry[1]

    async def transition(
        self,
        token_id: str,
        allowed: tuple[str, ...],
        status: str,
        resolution: bytes | None,
        resolved_at: str | None,
        *,
        claim: bool = False,
        claim_until: float | None = None,
        resolved_by: str | None = None,
        on_commit: Callable[[TokenRecord | None], None] | None = None,
    ) -> TokenRecord | None:
        marks = ", ".join("?" * len(allowed))
        if claim:
            statement = (
                "UPDATE tokens SET status = ?, resolution = ?, resolved_at = ?, resolved_by = ?, resumed = 1, "
                f"origin = ?, claim_expires = ?, claim_origin = ? WHERE id = ? AND status IN ({marks})"
            )
            params: tuple[Any, ...] = (
                status, resolution, resolved_at, resolved_by, self.origin, claim_until, self.origin, token_id,
                *allowed,
            )  # fmt: skip
        else:
            statement = (
                f"UPDATE tokens SET status = ?, resolution = ?, resolved_at = ?, resolved_by = ?, origin = ? "
                f"WHERE id = ? AND status IN ({marks})"
            )
            params = (status, resolution, resolved_at, resolved_by, self.origin, token_id, *allowed)
        saved_open = all(state in OPEN_STATUSES for state in allowed)

        def transition(conn: sqlite3.Connection) -> TokenRecord | None:
            changed = conn.execute(statement, params).rowcount
            if changed != 1:
                return None
            # Only read here: this may run on the helper thread. The loop forgets in committed().
            entry = self._saved.get(token_id) if saved_open else None
            if entry is None:
                # UPDATE then SELECT: SQLite buffers RETURNING rows in a temporary table, which costs more.
                return _record(conn.execute(_SELECT_ONE, (token_id,)).fetchone())
            # The row was open (allowed holds only open statuses) and was saved through this object.
            saved: TokenRecord = entry[0]
            return dataclasses.replace(
                saved,
                status=status,
                resolution=resolution,
                resolved_at=resolved_at,
                resumed=bool(saved.resumed or claim),
                resolved_by=resolved_by,
            )

        def committed(record: TokenRecord | None) -> None:
            if record is None:
                self._forget(token_id)
            elif token_id in self._saved:
                self._remember(record)  # forgets a final one; keeps an open one current (resumed)
            if on_commit is not None:
                on_commit(record)

        entry = self._saved.get(token_id) if saved_open else None
        size = -1 if entry is None else entry[1] + len(resolution or b"")  # the row is written anew
        return await self._submit(transition, writes=True, on_commit=committed, size=size)

    async def claim_resume(self, token_id: str, *, now: float | None = None, until: float | None = None) -> bool:
        lapsed = -math.inf if now is None else now

        def claim(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE tokens SET resumed = 1, claim_expires = ?, claim_origin = ? "
                "WHERE id = ? AND status = 'resolved' AND (resumed = 0 OR claim_expires < ?)",
                (until, self.origin, token_id, lapsed),
            )
            return cursor.rowcount == 1

        return await self._submit(claim, writes=True)

    async def renew_claims(self, token_ids: Collection[str], until: float) -> None:
        ids = list(token_ids)

        def renew(conn: sqlite3.Connection) -> None:
            for start in range(0, len(ids), 500):  # well under SQLite's limit of bound parameters
                chunk = ids[start : start + 500]
                conn.execute(
                    f"UPDATE tokens SET claim_expires = ? WHERE id IN ({', '.join('?' * len(chunk))}) "
                    "AND status = 'resolved' AND claim_origin = ? AND claim_expires IS NOT NULL",
                    (until, *chunk, self.origin),
                )

        if ids:
            await self._submit(renew, writes=True)

    async def finish_resume(self, token_id: str) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tokens SET claim_expires = NULL WHERE id = ? AND status = 'resolved' AND claim_origin = ? "
                "AND claim_expires IS NOT NULL",
                (token_id, self.origin),
            )

        await self._submit(finish, writes=True)

    async def release_claim(self, token_id: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tokens SET resumed = 0, claim_expires = NULL, claim_origin = NULL "
                "WHERE id = ? AND status = 'resolved' AND (claim_origin IS NULL OR claim_origin = ?)",
                (token_id, self.origin),
            )

        await self._submit(release, writes=True)

    async def next_claim_expiry(self, flux_id: str) -> float | None:
        def earliest(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(claim_expires) FROM tokens WHERE flux_id = ? AND status = 'resolved' "
                "AND claim_expires IS NOT NULL AND claim_origin IS NOT ?",
                (flux_id, self.origin),
            ).fetchone()
            return None if row is None else row[0]

        return await self._submit(earliest, writes=False)

    # ------------------------------------------------------------------- reads

    async def get(self, token_id: str) -> TokenRecord | None:
        def get(conn: sqlite3.Connection) -> TokenRecord | None:
            row = conn.execute(_SELECT_ONE, (token_id,)).fetchone()
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

    async def resolved_unclaimed(self, flux_id: str, now: float | None = None) -> list[TokenRecord]:
        def select(conn: sqlite3.Connection) -> list[TokenRecord]:
            # Two queries, each answered by its own partial index.
            rows = conn.execute(
                f"{_SELECT} WHERE flux_id = ? AND status = 'resolved' AND resumed = 0 ORDER BY resolved_at", (flux_id,)
            ).fetchall()
            if now is not None:
                rows += conn.execute(
                    f"{_SELECT} WHERE flux_id = ? AND status = 'resolved' AND claim_expires IS NOT NULL "
                    "AND claim_expires < ? ORDER BY resolved_at",
                    (flux_id, now),
                ).fetchall()
            return [_record(row) for row in rows]

        return await self._submit(select, writes=False)

    async def changes_since(self, seq: int) -> tuple[int, list[StoreChange]]:
        columns = ", ".join("t." + c.strip() for c in _COLUMNS.split(","))

        def changes(conn: sqlite3.Connection) -> tuple[int, list[StoreChange]]:
            # This store's own changes are skipped in SQL: their rows (and blobs) are never read.
            last = conn.execute("SELECT max(seq) FROM changes WHERE seq > ?", (seq,)).fetchone()[0]
            if last is None:
                return seq, []
            rows = conn.execute(
                f"SELECT c.seq, c.kind, {columns} FROM changes c JOIN tokens t ON t.id = c.token_id "
                "WHERE c.seq > ? AND c.seq <= ? AND c.origin IS NOT ? ORDER BY c.seq",
                (seq, last, self.origin),
            ).fetchall()
            return last, [StoreChange(row[0], row[1], _record(row[2:])) for row in rows]

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

    # ------------------------------------------------------------ workshop tasks

    async def save_task(self, task_id: str, data: str) -> None:
        updated = datetime.now(UTC).isoformat()

        def save(conn: sqlite3.Connection) -> None:
            # An upsert keeps the row (and its rowid, the order tasks are listed in).
            conn.execute(
                "INSERT INTO tasks (id, data, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (task_id, data, updated),
            )

        await self._submit(save, writes=True, size=_RECORD_OVERHEAD + len(task_id) + len(data))

    async def load_task(self, task_id: str) -> str | None:
        def load(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else str(row[0])

        return await self._submit(load, writes=False)

    async def load_tasks(self) -> list[tuple[str, str]]:
        def load(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return [(str(i), str(d)) for i, d in conn.execute("SELECT id, data FROM tasks ORDER BY rowid")]

        return await self._submit(load, writes=False)


def from_url(url: str) -> SqliteStore:
    """The store for ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (options after ``?``).

    Raises:
        ValueError: no file path, a host part, or an unknown option.
    """
    if not url.startswith("sqlite:///"):
        raise ValueError(f"unknown purgatory URL {url!r}: an sqlite URL is sqlite:///path.db (three slashes)")
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError(f"sqlite URL needs a file path, got {url!r} (e.g. sqlite:///.agentflux/purgatory.db)")
    return SqliteStore(path, url=url)
