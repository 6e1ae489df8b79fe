"""The shared durable store: PostgreSQL through psycopg 3 (the ``postgres`` extra).

How a write travels: operations submitted while a transaction is in flight wait and then
run together in the next one (group commit), each inside its own savepoint, so one that
refuses or fails never undoes another. Every transition is one compare-and-set statement
(``UPDATE ... WHERE status = ANY(...) RETURNING``). Callers hear of their results only once
the transaction committed, so an acknowledged change survives a crash of this process or
of the server.

Other processes hear of changes through LISTEN/NOTIFY: a trigger logs every status change
into ``agentflux_changes`` (a sequence) and notifies ``agentflux_changes`` with the writer's
origin, so a store object is not woken by its own changes. Writers take a
transaction-scoped advisory lock before they write, so change numbers are committed in
order and a reader that has seen change N has seen every change below it. Notifications
are lost while a connection is down: after every (re)connect of the listening connection
``wait_external_change`` returns at once, and the purgatory catches up from the last change
number it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..._core._errors import SemaphoreError, SemaphoreStoreError
from ._base import LoopBinding, StoreChange, TokenRecord

__all__ = ["SCHEMA_VERSION", "PostgresStore", "from_url"]

R = TypeVar("R")
Cursor = Any  # psycopg.AsyncCursor: the driver is imported lazily

_COLUMNS = (
    "id, status, reason, prompt, options, severity, frozen_state, original_event, deadline, deadline_ts, "
    "escalation, flux_id, created_at, resolution, resolved_at, resumed, resolved_by"
)
_SELECT = f"SELECT {_COLUMNS} FROM agentflux_tokens"
_CHANNEL = "agentflux_changes"
_WRITE_LOCK = 0x61_66_6C_78  # advisory lock key: writers commit their change numbers in order
_MIGRATE_LOCK = _WRITE_LOCK + 1
_KEEP_CHANGES = 10_000  # change rows kept for other processes' watchers
_PRUNE_EVERY = 500  # write transactions between prunes of the change log
_MAX_BATCH = 256  # operations per transaction

# Schema migrations, applied in order; agentflux_meta holds the version reached.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE agentflux_tokens (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            prompt TEXT NOT NULL,
            options TEXT NOT NULL,
            severity TEXT NOT NULL,
            frozen_state BYTEA NOT NULL,
            original_event BYTEA NOT NULL,
            deadline TEXT,
            deadline_ts DOUBLE PRECISION,
            escalation TEXT,
            flux_id TEXT,
            created_at TEXT NOT NULL,
            resolution BYTEA,
            resolved_at TEXT,
            resumed BOOLEAN NOT NULL DEFAULT FALSE,
            resolved_by TEXT,
            origin TEXT,
            claim_expires DOUBLE PRECISION,
            claim_origin TEXT
        )""",
        # Partial indexes: each covers only the rows a query looks for.
        "CREATE INDEX agentflux_open_tokens ON agentflux_tokens (created_at, id) "
        "WHERE status IN ('pending', 'escalated')",
        "CREATE INDEX agentflux_pending_deadlines ON agentflux_tokens (deadline_ts) "
        "WHERE status = 'pending' AND deadline_ts IS NOT NULL",
        "CREATE INDEX agentflux_unclaimed ON agentflux_tokens (flux_id) "
        "WHERE status = 'resolved' AND NOT resumed AND flux_id IS NOT NULL",
        "CREATE INDEX agentflux_leased ON agentflux_tokens (flux_id, claim_expires) "
        "WHERE status = 'resolved' AND claim_expires IS NOT NULL",
        """CREATE TABLE agentflux_changes (
            seq BIGSERIAL PRIMARY KEY,
            token_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            origin TEXT
        )""",
        f"""CREATE FUNCTION agentflux_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO agentflux_changes (token_id, kind, origin)
            VALUES (NEW.id, CASE WHEN TG_OP = 'INSERT' THEN 'saved' ELSE NEW.status END, NEW.origin);
            PERFORM pg_notify('{_CHANNEL}', coalesce(NEW.origin, ''));
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER agentflux_saved AFTER INSERT ON agentflux_tokens "
        "FOR EACH ROW EXECUTE FUNCTION agentflux_log_change()",
        "CREATE TRIGGER agentflux_transition AFTER UPDATE OF status ON agentflux_tokens "
        "FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status) EXECUTE FUNCTION agentflux_log_change()",
        """CREATE TABLE agentflux_tasks (
            id TEXT PRIMARY KEY,
            data TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            ord BIGSERIAL
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _record(row: tuple[Any, ...]) -> TokenRecord:
    values = list(row)
    for index in (6, 7, 13):  # BYTEA comes back as bytes (or memoryview with some adapters)
        if values[index] is not None:
            values[index] = bytes(values[index])
    values[15] = bool(values[15])
    return TokenRecord(*values)


async def _nothing(cur: Cursor) -> None:
    """A write whose result is only that it committed."""


def _redacted(url: str) -> str:
    """The URL without its password (it is shown in messages and in ``Purgatory.url``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Job:
    """A read (``fn`` runs its statements) or a write: one statement (``sql`` with ``params``)
    and ``receive(cursor)``, which makes the result from its reply. Writes are pipelined: a
    transaction's statements all go to the server before any reply is read."""

    __slots__ = ("fn", "future", "on_commit", "outcome", "params", "receive", "sql", "writes")

    def __init__(
        self,
        fn: Callable[[Cursor], Awaitable[Any]] | None,
        future: asyncio.Future[Any],
        writes: bool,
        on_commit: Callable[[Any], None] | None,
        sql: str = "",
        params: tuple[Any, ...] = (),
        receive: Callable[[Cursor], Awaitable[Any]] | None = None,
    ) -> None:
        self.fn, self.future, self.writes, self.on_commit = fn, future, writes, on_commit
        self.sql, self.params, self.receive = sql, params, receive
        self.outcome: tuple[Any, BaseException | None] = (None, None)


class PostgresStore:
    """Token records in PostgreSQL tables, shared by every process that opens the same database.

    Raises:
        ImportError: psycopg is not installed (``pip install 'agentflux[postgres]'``).
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ImportError("the postgresql:// store needs psycopg: pip install 'agentflux[postgres]'") from exc
        self._psycopg = psycopg
        self._conninfo = url.replace("postgres://", "postgresql://", 1)
        self.url = _redacted(url)
        self.origin = uuid.uuid4().hex  # this store object's mark on the rows and changes it writes
        self._loop = LoopBinding()
        self._conn: Any = None
        self._listener: Any = None
        self._opening: asyncio.Future[None] | None = None
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writes = 0
        self._closed = False

    # -------------------------------------------------------------- connections

    def _error(self, what: str, exc: BaseException) -> SemaphoreStoreError:
        return SemaphoreStoreError(f"postgres store {self.url}: {what} failed: {type(exc).__name__}: {exc}".strip())

    async def _connect(self, *, autocommit: bool) -> Any:
        try:
            return await self._psycopg.AsyncConnection.connect(self._conninfo, autocommit=autocommit)
        except self._psycopg.Error as exc:
            raise self._error("connecting", exc) from None

    async def open(self) -> None:
        """Connect and create (or migrate) the schema; idempotent."""
        self._loop.check(self.url)
        self._closed = False
        if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        conn = await self._connect(autocommit=True)
        try:
            await self._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _migrate(self, conn: Any) -> None:
        psycopg = self._psycopg
        try:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                await cur.execute("CREATE TABLE IF NOT EXISTS agentflux_meta (key TEXT PRIMARY KEY, value TEXT)")
                await cur.execute("SELECT value FROM agentflux_meta WHERE key = 'schema_version'")
                row = await cur.fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise SemaphoreStoreError(
                        f"postgres store {self.url} has schema version {version}, newer than this agentflux "
                        f"({SCHEMA_VERSION})"
                    )
                for number in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[number]:
                        await cur.execute(statement)
                await cur.execute(
                    "INSERT INTO agentflux_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        except psycopg.Error as exc:
            raise self._error("creating the schema", exc) from None

    async def close(self) -> None:
        """Finish what was submitted, then release both connections; idempotent."""
        self._closed = True
        if self._opening is not None and not self._opening.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._opening)
        flusher = self._flusher
        if flusher is not None:
            await asyncio.shield(flusher)  # submitted work commits (or fails) before the close
        for name in ("_listener", "_conn"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._opening = None
        self._loop = LoopBinding()

    # --------------------------------------------------------------- running work

    async def _ready(self) -> asyncio.AbstractEventLoop:
        """This store's loop (refusing any other), with the store open."""
        loop = self._loop.check(self.url)
        if self._conn is None or self._opening is None:
            await self.open()
        return loop

    def _enqueue(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        self._pending.append(job)
        if self._flusher is None:  # owned: close() awaits it, and it ends when nothing is left
            self._flusher = loop.create_task(self._flush(), name=f"agentflux-postgres:{self.url}")

    async def _read(self, fn: Callable[[Cursor], Awaitable[R]]) -> R:
        loop = await self._ready()
        future: asyncio.Future[R] = loop.create_future()
        self._enqueue(_Job(fn, future, False, None), loop)
        return await future

    async def _write(
        self,
        sql: str,
        params: tuple[Any, ...],
        receive: Callable[[Cursor], Awaitable[R]] | None = None,
        on_commit: Callable[[R], None] | None = None,
    ) -> R:
        loop = await self._ready()
        future: asyncio.Future[R] = loop.create_future()
        self._enqueue(_Job(None, future, True, on_commit, sql, params, receive or _nothing), loop)
        return await future

    async def _flush(self) -> None:
        """Run the submitted operations, a transaction at a time, until none are left."""
        batch: list[_Job] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                await self._run_batch(batch)
        except BaseException as exc:  # cancelled, or a bug: no caller may wait forever
            error = SemaphoreStoreError(f"postgres store {self.url}: stopped before the work was done ({exc!r})")
            for job in [*batch, *self._pending]:
                if not job.future.done():
                    job.future.set_exception(error)
            self._pending = []
            raise
        finally:
            self._flusher = None

    async def _run_batch(self, batch: list[_Job]) -> None:
        psycopg = self._psycopg
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect(autocommit=True)
            conn = self._conn
            async with conn.cursor() as cur:
                # In submission order: the writes between two reads share one transaction.
                for writes, run in itertools.groupby(batch, key=lambda job: job.writes):
                    jobs = list(run)
                    if writes:
                        await self._write_batch(conn, cur, jobs)
                        continue
                    # Reads need no transaction: each statement sees every commit before it,
                    # and the writes submitted before them have committed.
                    for job in jobs:
                        job.outcome = await self._attempt(job, cur)
        except (psycopg.Error, SemaphoreStoreError, OSError) as exc:
            error = exc if isinstance(exc, SemaphoreStoreError) else self._error("a transaction", exc)
            if self._conn is not None and self._conn.closed:
                self._conn = None  # reconnect for the next batch
            elif self._conn is not None and isinstance(exc, psycopg.OperationalError):
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job in batch:
            result, refused = job.outcome
            if refused is None and job.on_commit is not None:
                job.on_commit(result)  # the change is durable: runs even if the caller left
            if job.future.done():
                continue
            if refused is not None:
                job.future.set_exception(refused)
            else:
                job.future.set_result(result)

    async def _attempt(self, job: _Job, cur: Cursor) -> tuple[Any, BaseException | None]:
        assert job.fn is not None
        try:
            return await job.fn(cur), None
        except self._psycopg.OperationalError:
            raise  # the connection is gone: the whole batch is
        except Exception as exc:  # this operation refused or failed; the others go on
            return None, exc if isinstance(exc, SemaphoreError) else self._error("an operation", exc)

    async def _write_batch(self, conn: Any, cur: Cursor, batch: list[_Job]) -> None:
        """The batch in one transaction under the write lock. A statement that fails aborts
        a PostgreSQL transaction, so then the batch runs again one operation per transaction:
        one failing operation never undoes another. (A refusal such as a duplicate id is
        seen from a row count and fails nothing.)"""
        if len(batch) > 1 and await self._transaction(conn, cur, batch, isolated=False):
            return
        for job in batch:
            await self._transaction(conn, cur, [job], isolated=True)

    async def _transaction(self, conn: Any, cur: Cursor, jobs: list[_Job], *, isolated: bool) -> bool:
        """Run ``jobs`` in one transaction; False (rolled back) if one failed and others share it.

        BEGIN, the write lock, every statement and COMMIT go out in one pipeline: one round
        trip for the whole transaction. A failing statement aborts the rest, and COMMIT with
        them; the replies say which one failed.
        """
        psycopg = self._psycopg
        self._writes += 1
        prune = self._writes % _PRUNE_EVERY == 0
        cursors = [conn.cursor() for _ in jobs]
        try:
            async with conn.pipeline() as pipeline:
                await cur.execute("BEGIN")
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                for job, job_cursor in zip(jobs, cursors, strict=True):
                    await job_cursor.execute(job.sql, job.params)
                if prune:
                    await cur.execute(
                        "DELETE FROM agentflux_changes WHERE seq < (SELECT max(seq) FROM agentflux_changes) - %s",
                        (_KEEP_CHANGES,),
                    )
                await cur.execute("COMMIT")
                await pipeline.sync()
        except psycopg.OperationalError:
            raise  # the connection is gone: the whole batch is
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                await cur.execute("ROLLBACK")
            if not isolated:
                return False  # one of them failed: run them apart
            (job,) = jobs
            job.outcome = (None, self._error("an operation", exc))
            return True
        for job, job_cursor in zip(jobs, cursors, strict=True):
            assert job.receive is not None
            try:
                job.outcome = (await job.receive(job_cursor), None)
            except SemaphoreError as refusal:  # e.g. a duplicate id, seen from the row count
                job.outcome = (None, refusal)
        return True

    # ------------------------------------------------------------------ writes

    async def insert(self, record: TokenRecord, on_commit: Callable[[None], None] | None = None) -> None:
        row = (
            record.id, record.status, record.reason, record.prompt, record.options, record.severity,
            record.frozen_state, record.original_event, record.deadline, record.deadline_ts, record.escalation,
            record.flux_id, record.created_at, record.resolution, record.resolved_at, record.resumed,
            record.resolved_by, self.origin,
        )  # fmt: skip

        async def inserted(cur: Cursor) -> None:
            if cur.rowcount != 1:
                raise SemaphoreError(f"a token with id {record.id!r} already exists")

        await self._write(
            f"INSERT INTO agentflux_tokens ({_COLUMNS}, origin) VALUES ({', '.join(['%s'] * 18)}) "
            "ON CONFLICT (id) DO NOTHING",
            row,
            inserted,
            on_commit,
        )

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
        if claim:
            statement = (
                "UPDATE agentflux_tokens SET status = %s, resolution = %s, resolved_at = %s, resolved_by = %s, "
                "resumed = TRUE, origin = %s, claim_expires = %s, claim_origin = %s "
                f"WHERE id = %s AND status = ANY(%s) RETURNING {_COLUMNS}"
            )
            params: tuple[Any, ...] = (
                status, resolution, resolved_at, resolved_by, self.origin, claim_until, self.origin, token_id,
                list(allowed),
            )  # fmt: skip
        else:
            statement = (
                "UPDATE agentflux_tokens SET status = %s, resolution = %s, resolved_at = %s, resolved_by = %s, "
                f"origin = %s WHERE id = %s AND status = ANY(%s) RETURNING {_COLUMNS}"
            )
            params = (status, resolution, resolved_at, resolved_by, self.origin, token_id, list(allowed))

        async def changed(cur: Cursor) -> TokenRecord | None:
            row = await cur.fetchone()
            return None if row is None else _record(row)

        return await self._write(statement, params, changed, on_commit)

    async def claim_resume(self, token_id: str, *, now: float | None = None, until: float | None = None) -> bool:
        lapsed = -math.inf if now is None else now

        async def claimed(cur: Cursor) -> bool:
            return bool(cur.rowcount == 1)

        return await self._write(
            "UPDATE agentflux_tokens SET resumed = TRUE, claim_expires = %s, claim_origin = %s "
            "WHERE id = %s AND status = 'resolved' AND (NOT resumed OR claim_expires < %s)",
            (until, self.origin, token_id, lapsed),
            claimed,
        )

    async def renew_claims(self, token_ids: Collection[str], until: float) -> None:
        ids = list(token_ids)

        if ids:
            await self._write(
                "UPDATE agentflux_tokens SET claim_expires = %s WHERE id = ANY(%s) AND status = 'resolved' "
                "AND claim_origin = %s AND claim_expires IS NOT NULL",
                (until, ids, self.origin),
            )

    async def finish_resume(self, token_id: str) -> None:
        await self._write(
            "UPDATE agentflux_tokens SET claim_expires = NULL WHERE id = %s AND status = 'resolved' "
            "AND claim_origin = %s AND claim_expires IS NOT NULL",
            (token_id, self.origin),
        )

    async def release_claim(self, token_id: str) -> None:
        await self._write(
            "UPDATE agentflux_tokens SET resumed = FALSE, claim_expires = NULL, claim_origin = NULL "
            "WHERE id = %s AND status = 'resolved' AND (claim_origin IS NULL OR claim_origin = %s)",
            (token_id, self.origin),
        )

    # ------------------------------------------------------------------- reads

    async def _rows(self, where: str, params: tuple[Any, ...] = ()) -> list[TokenRecord]:
        async def select(cur: Cursor) -> list[TokenRecord]:
            await cur.execute(f"{_SELECT} {where}", params)
            return [_record(row) for row in await cur.fetchall()]

        return await self._read(select)

    async def _value(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        async def value(cur: Cursor) -> Any:
            await cur.execute(query, params)
            row = await cur.fetchone()
            return None if row is None else row[0]

        return await self._read(value)

    async def get(self, token_id: str) -> TokenRecord | None:
        rows = await self._rows("WHERE id = %s", (token_id,))
        return rows[0] if rows else None

    async def next_claim_expiry(self, flux_id: str) -> float | None:
        value = await self._value(
            "SELECT min(claim_expires) FROM agentflux_tokens WHERE flux_id = %s AND status = 'resolved' "
            "AND claim_expires IS NOT NULL AND claim_origin IS DISTINCT FROM %s",
            (flux_id, self.origin),
        )
        return None if value is None else float(value)

    async def list_open(self) -> list[TokenRecord]:
        return await self._rows("WHERE status IN ('pending', 'escalated') ORDER BY created_at, id")

    async def due(self, now_ts: float) -> list[TokenRecord]:
        return await self._rows(
            "WHERE status = 'pending' AND deadline_ts IS NOT NULL AND deadline_ts <= %s ORDER BY deadline_ts",
            (now_ts,),
        )

    async def next_deadline(self) -> float | None:
        value = await self._value(
            "SELECT min(deadline_ts) FROM agentflux_tokens WHERE status = 'pending' AND deadline_ts IS NOT NULL"
        )
        return None if value is None else float(value)

    async def resolved_unclaimed(self, flux_id: str, now: float | None = None) -> list[TokenRecord]:
        unclaimed = await self._rows(
            "WHERE flux_id = %s AND status = 'resolved' AND NOT resumed ORDER BY resolved_at", (flux_id,)
        )
        if now is None:
            return unclaimed
        lapsed = await self._rows(
            "WHERE flux_id = %s AND status = 'resolved' AND claim_expires IS NOT NULL AND claim_expires < %s "
            "ORDER BY resolved_at",
            (flux_id, now),
        )
        return unclaimed + lapsed

    async def changes_since(self, seq: int) -> tuple[int, list[StoreChange]]:
        columns = ", ".join("t." + c.strip() for c in _COLUMNS.split(","))

        async def changes(cur: Cursor) -> tuple[int, list[StoreChange]]:
            await cur.execute("SELECT max(seq) FROM agentflux_changes WHERE seq > %s", (seq,))
            row = await cur.fetchone()
            last = None if row is None else row[0]
            if last is None:
                return seq, []
            await cur.execute(
                f"SELECT c.seq, c.kind, {columns} FROM agentflux_changes c JOIN agentflux_tokens t "
                "ON t.id = c.token_id WHERE c.seq > %s AND c.seq <= %s AND c.origin IS DISTINCT FROM %s "
                "ORDER BY c.seq",
                (seq, last, self.origin),
            )
            rows = await cur.fetchall()
            return int(last), [StoreChange(int(r[0]), str(r[1]), _record(r[2:])) for r in rows]

        return await self._read(changes)

    async def last_seq(self) -> int:
        value = await self._value("SELECT coalesce(max(seq), 0) FROM agentflux_changes")
        return int(value or 0)

    async def wait_external_change(self) -> None:
        """Return when another process may have changed the store: on a notification, and at
        once after the listening connection was (re)made, since notifications sent while it
        was down are lost (the caller then catches up from its last change number).

        Raises:
            SemaphoreStoreError: the listening connection cannot be made.
        """
        self._loop.check(self.url)
        psycopg = self._psycopg
        if self._listener is None or self._listener.closed:
            self._listener = None
            listener = await self._connect(autocommit=True)
            try:
                await listener.execute(f"LISTEN {_CHANNEL}")
            except BaseException as exc:  # cancelled (the purgatory closing) or refused
                await asyncio.shield(listener.close())
                if isinstance(exc, psycopg.Error):
                    raise self._error("LISTEN", exc) from None
                raise
            self._listener = listener
            return  # anything may have changed while there was no listener
        listener = self._listener
        try:
            async for notice in listener.notifies():
                if notice.payload != self.origin:  # this object's own changes are known already
                    return
        except asyncio.CancelledError:
            # A notifies() cut short may leave the connection mid-read: never reuse it.
            self._listener = None
            with contextlib.suppress(Exception):
                await listener.close()
            raise
        except psycopg.Error:
            self._listener = None  # dropped (server restart, terminated backend): reconnect next time
            with contextlib.suppress(Exception):
                await listener.close()

    @property
    def listener_pid(self) -> int | None:
        """The server process of the listening connection (for operators and tests)."""
        return None if self._listener is None or self._listener.closed else int(self._listener.info.backend_pid)

    # ------------------------------------------------------------ workshop tasks

    async def save_task(self, task_id: str, data: str) -> None:
        updated = datetime.now(UTC).isoformat()

        await self._write(
            "INSERT INTO agentflux_tasks (id, data, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (task_id, data, updated),
        )

    async def load_task(self, task_id: str) -> str | None:
        value = await self._value("SELECT data FROM agentflux_tasks WHERE id = %s", (task_id,))
        return None if value is None else str(value)

    async def load_tasks(self) -> list[tuple[str, str]]:
        async def load(cur: Cursor) -> list[tuple[str, str]]:
            await cur.execute("SELECT id, data FROM agentflux_tasks ORDER BY ord")
            return [(str(i), str(d)) for i, d in await cur.fetchall()]

        return await self._read(load)


def from_url(url: str) -> PostgresStore:
    """The store for a ``postgresql://`` (or ``postgres://``) URL: any libpq connection URI,
    e.g. ``postgresql://user@host:5432/db`` or ``postgresql://127.0.0.1/test?options=-csearch_path%3Dmine``."""
    return PostgresStore(url)
