"""The purgatory: where tokens wait for a human, durably, with exactly-once transitions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from .._core._errors import SemaphoreCodecError, SemaphoreDecodeError, SemaphoreNotFound, SemaphoreNotPending
from ..sources._bus import EventBus, Subscription
from ._codec import JsonCodec
from ._token import ReentryContext, SemaphoreStatus, SemaphoreToken, utc_now
from .stores import PurgatoryStore, TokenRecord, store_from_url
from .stores._base import OPEN_STATUSES

__all__ = ["ChangeKind", "Purgatory", "PurgatoryChange", "open_purgatory"]

ChangeKind = Literal["saved", "resolved", "cancelled", "voided", "escalated"]

_log = logging.getLogger("agentflux.purgatory")
RETRY_FIRST = 0.05  # seconds before retrying a failed round of background work
RETRY_MAX = 5.0  # the backoff doubles up to this


@dataclass(frozen=True, slots=True)
class PurgatoryChange:
    """One change to a token: ``kind`` is saved, resolved, cancelled, voided or escalated."""

    kind: ChangeKind
    token: SemaphoreToken


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class Purgatory:
    """Parked tokens over a store (``open_purgatory(url)`` picks one from a URL).

    ``async with`` opens the store and, while open, runs the deadline timer and watches
    the store for changes made by other processes (they appear in ``changes()`` too).
    Both keep running until the purgatory closes: a round that fails (a store error, such
    as another process holding the write lock past the busy timeout) is logged as a
    warning on the ``agentflux.purgatory`` logger and retried with backoff.
    Methods used outside ``async with`` open the store lazily.

    A claim to resume a resolution is a lease of ``claim_lease`` seconds, renewed every
    third of it while the resumption runs: if this process dies before the resumption
    completed, the claim lapses and a flux elsewhere (or after a restart) takes it again.
    """

    def __init__(self, store: PurgatoryStore, *, codec: JsonCodec | None = None, claim_lease: float = 30.0) -> None:
        number = isinstance(claim_lease, int | float) and not isinstance(claim_lease, bool)
        if not (number and math.isfinite(claim_lease) and claim_lease > 0):
            raise ValueError(f"claim_lease must be a finite number of seconds above 0, got {claim_lease!r}")
        self.store = store
        self.codec = codec or JsonCodec()
        self.claim_lease = float(claim_lease)
        self._held: set[str] = set()  # claims this object holds whose resumption has not completed
        self._renewer: asyncio.Task[None] | None = None
        self._bus: EventBus[PurgatoryChange] = EventBus()
        self._opened = False
        self._tasks: list[asyncio.Task[None]] = []
        self._timer_wake: asyncio.Future[None] | None = None
        self._next_deadline: float | None = None
        self._deadlines_changed = False
        self._last_seq = 0
        self._catching_up = False  # the watcher saw a change but has not read it yet

    @property
    def url(self) -> str:
        """The URL of the store."""
        return self.store.url

    # --------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Open the store (idempotent)."""
        if not self._opened:
            await self.store.open()
            self._opened = True

    async def __aenter__(self) -> Purgatory:
        await self.open()
        self._last_seq = await self.store.last_seq()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                self._keep_running("deadline timer", self._deadline_round), name=f"purgatory-deadlines:{self.url}"
            ),
            loop.create_task(
                self._keep_running("change watcher", self._watch_round), name=f"purgatory-watch:{self.url}"
            ),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the timer and the watcher, end every ``changes()`` feed, close the store.

        Claims still held are not renewed any more: their leases lapse.
        """
        tasks, self._tasks = self._tasks, []
        if self._renewer is not None:
            tasks.append(self._renewer)
            self._renewer = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._bus.close()
        await self.store.close()
        self._opened = False

    # ------------------------------------------------------------ conversion

    def _to_record(self, token: SemaphoreToken) -> TokenRecord:
        return TokenRecord(
            id=token.id,
            status=token.status.value,
            reason=token.reason.value,
            prompt=token.prompt,
            options=json.dumps(list(token.options)) if token.options else "[]",
            severity=token.severity,
            frozen_state=token.frozen_state,
            original_event=self.codec.encode(token.original_event),
            deadline=_iso(token.deadline),
            deadline_ts=None if token.deadline is None else token.deadline.timestamp(),
            escalation=token.escalation,
            flux_id=token.flux_id,
            created_at=token.created_at.astimezone(UTC).isoformat(),
            resolution=None if token.resolution is None else self.codec.encode(token.resolution),
            resolved_at=_iso(token.resolved_at),
            resolved_by=token.resolved_by,
        )

    def _to_token(self, record: TokenRecord) -> SemaphoreToken:
        return SemaphoreToken(
            id=record.id,
            status=SemaphoreStatus(record.status),
            reason=record.reason,  # type: ignore[arg-type]  # converted by SemaphoreToken
            prompt=record.prompt,
            options=tuple(json.loads(record.options)),
            severity=record.severity,  # type: ignore[arg-type]  # validated by SemaphoreToken
            frozen_state=record.frozen_state,
            original_event=self.codec.decode(record.original_event),
            deadline=_moment(record.deadline),
            escalation=record.escalation,
            flux_id=record.flux_id,
            created_at=datetime.fromisoformat(record.created_at),
            resolution=None if record.resolution is None else self.codec.decode(record.resolution),
            resolved_at=_moment(record.resolved_at),
            resolved_by=record.resolved_by,
        )

    def _decoded(self, record: TokenRecord, *, committed: bool = False) -> SemaphoreToken:
        """``_to_token``, with any failure a ``SemaphoreDecodeError`` naming the row."""
        try:
            return self._to_token(record)
        except SemaphoreDecodeError:
            raise
        except (SemaphoreCodecError, ValueError, TypeError, RecursionError) as exc:
            raise SemaphoreDecodeError(record.id, str(record.status), str(exc), committed=committed) from exc

    def _publish(self, kind: ChangeKind, token: SemaphoreToken | TokenRecord) -> None:
        if self._bus.subscribers:  # nobody listening: no token to build
            if isinstance(token, TokenRecord):
                token = self._to_token(token)
            self._bus.publish(PurgatoryChange(kind, token))

    # ------------------------------------------------------------- operations

    async def save(self, token: SemaphoreToken) -> SemaphoreToken:
        """Park a pending token; when this returns, the store has it (on disk for SQLite).

        Raises:
            SemaphoreCodecError: the original event cannot be encoded by the codec.
            SemaphoreError: a token with the same id exists.
            SemaphoreNotPending: the token is not pending.
        """
        if token.status is not SemaphoreStatus.PENDING:
            raise SemaphoreNotPending(f"only pending tokens can be saved; {token.id} is {token.status.value}")
        record = self._to_record(token)
        if not self._opened:  # no coroutine to create (and collect) on the hot path
            await self.open()

        def committed(_: None) -> None:
            # Runs once the save is durable, even if our caller was cancelled meanwhile.
            self._publish("saved", token)
            if token.deadline is not None:
                self._deadline_added(record.deadline_ts)

        await self.store.insert(record, committed)
        return token

    async def get(self, token_id: str) -> SemaphoreToken:
        """The token with that id, in its current status.

        Raises:
            SemaphoreNotFound: no such token.
            SemaphoreDecodeError: the row cannot be decoded here (the message says why).
        """
        await self.open()
        record = await self.store.get(token_id)
        if record is None:
            raise SemaphoreNotFound(f"no semaphore token with id {token_id!r}")
        return self._decoded(record)

    async def _transition(
        self,
        token_id: str,
        allowed: tuple[str, ...],
        status: SemaphoreStatus,
        resolution: Any,
        *,
        claim: bool = False,
        by: str | None = None,
    ) -> TokenRecord:
        by = _check_by(by)
        encoded = None if resolution is None else self.codec.encode(resolution)
        if not self._opened:
            await self.open()
        at = utc_now() if status is not SemaphoreStatus.ESCALATED else None

        def committed(record: TokenRecord | None) -> None:
            # Runs once the change is durable, even if our caller was cancelled meanwhile.
            if record is not None:
                self._publish(status.value, record)  # type: ignore[arg-type]

        until = time.time() + self.claim_lease if claim else None
        record = await self.store.transition(
            token_id,
            allowed,
            status.value,
            encoded,
            _iso(at),
            claim=claim,
            claim_until=until,
            resolved_by=by,
            on_commit=committed,
        )
        if record is not None and claim:
            self._lease(token_id)
        if record is None:
            current = await self.store.get(token_id)
            if current is None:
                raise SemaphoreNotFound(f"no semaphore token with id {token_id!r}")
            raise SemaphoreNotPending(f"cannot {_VERBS[status]} token {token_id}: it is already {current.status}")
        return record

    async def resolve(
        self, token_id: str, human_input: Any, *, claim: bool = False, by: str | None = None
    ) -> ReentryContext:
        """Record the human's answer; exactly one resolve or cancel of a token succeeds.

        ``claim=True`` marks the resolution as being resumed by the caller, so that no
        flux watching the store resumes it a second time. ``by`` records who answered and
        from where (``resolved_by``; at most 256 characters): the CLI gives ``user@host (cli)``.

        Raises:
            SemaphoreNotFound: no such token.
            SemaphoreNotPending: already resolved, cancelled or voided (nothing changes).
            SemaphoreCodecError: ``human_input`` cannot be encoded by the codec (nothing changes).
            ValueError: ``by`` is not a str of at most 256 characters (nothing changes).
            SemaphoreDecodeError: the resolution was committed, but the token's original
                event cannot be decoded here (``committed`` is true).
        """
        record = await self._transition(
            token_id, OPEN_STATUSES, SemaphoreStatus.RESOLVED, human_input, claim=claim, by=by
        )
        try:
            event = self.codec.decode(record.original_event)
        except (SemaphoreCodecError, ValueError, TypeError, RecursionError) as exc:
            raise SemaphoreDecodeError(record.id, record.status, str(exc), committed=True) from exc
        return ReentryContext(record.id, record.frozen_state, human_input, event)

    async def cancel(self, token_id: str, reason: Any = None, *, by: str | None = None) -> SemaphoreToken:
        """Withdraw a token; ``reason`` is kept as its resolution, ``by`` as ``resolved_by``.

        Raises:
            SemaphoreNotFound: no such token.
            SemaphoreNotPending: already resolved, cancelled or voided (nothing changes).
            SemaphoreDecodeError: the cancel was committed, but the row cannot be decoded
                here (``committed`` is true).
        """
        record = await self._transition(token_id, OPEN_STATUSES, SemaphoreStatus.CANCELLED, reason, by=by)
        return self._decoded(record, committed=True)

    async def list_pending(self) -> list[SemaphoreToken]:
        """Tokens still waiting for a human (pending and escalated), oldest first.

        Raises:
            SemaphoreDecodeError: a row cannot be decoded here (``list_pending_rows``
                gives every readable one).
        """
        await self.open()
        return [self._decoded(record) for record in await self.store.list_open()]

    async def list_pending_rows(self) -> list[SemaphoreToken | SemaphoreDecodeError]:
        """Like ``list_pending``, with each row that cannot be decoded here as its error."""
        await self.open()
        rows: list[SemaphoreToken | SemaphoreDecodeError] = []
        for record in await self.store.list_open():
            try:
                rows.append(self._decoded(record))
            except SemaphoreDecodeError as exc:
                rows.append(exc)
        return rows

    async def void_expired(self, now: datetime | None = None) -> list[SemaphoreToken]:
        """Apply deadlines up to ``now``: escalate tokens with ``escalation``, void the rest.

        Returns the tokens changed by this call (a token another caller changed first is
        skipped). Raises ``ValueError`` for a naive ``now``.
        """
        if now is None:
            now = utc_now()
        elif now.utcoffset() is None:
            raise ValueError(f"void_expired(now) must be timezone-aware, got {now!r}")
        await self.open()
        changed = []
        for record in await self.store.due(now.timestamp()):
            target = SemaphoreStatus.ESCALATED if record.escalation else SemaphoreStatus.VOIDED
            try:
                changed.append(self._to_token(await self._transition(record.id, ("pending",), target, None)))
            except SemaphoreNotPending:
                continue  # resolved or cancelled meanwhile
        return changed

    async def claim_resume(self, token_id: str) -> bool:
        """Claim a resolved token for resuming; True for exactly one caller.

        The claim is leased (see the class) until ``finish_resume`` or ``release_claim``;
        a claim whose holder stopped renewing it can be taken again.
        """
        await self.open()
        now = time.time()
        claimed = await self.store.claim_resume(token_id, now=now, until=now + self.claim_lease)
        if claimed:
            self._lease(token_id)
        return claimed

    async def finish_resume(self, token_id: str) -> None:
        """The claimed resumption completed: its claim holds for good."""
        await self.open()
        self._let_go(token_id)
        await self.store.finish_resume(token_id)

    async def release_claim(self, token_id: str) -> None:
        """Give back a claim whose resumption could not run (a later watcher takes it)."""
        await self.open()
        self._let_go(token_id)
        await self.store.release_claim(token_id)

    async def resolved_unclaimed(self, flux_id: str, *, lapsed: bool = False) -> list[SemaphoreToken]:
        """Resolved tokens of ``flux_id`` that nobody has resumed yet; ``lapsed=True`` adds
        those whose claim's holder stopped renewing it before completing."""
        await self.open()
        now = time.time() if lapsed else None
        return [self._to_token(record) for record in await self.store.resolved_unclaimed(flux_id, now)]

    async def next_claim_expiry(self, flux_id: str) -> float | None:
        """The POSIX time the earliest claim on ``flux_id``'s resolutions held elsewhere
        lapses unless renewed; None if there is none."""
        await self.open()
        return await self.store.next_claim_expiry(flux_id)

    def holds(self, token_id: str) -> bool:
        """Whether this object holds the claim on ``token_id`` and its resumption has not
        completed."""
        return token_id in self._held

    def _lease(self, token_id: str) -> None:
        """Keep a new claim's lease renewed until its resumption finishes or is given back."""
        self._held.add(token_id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_claims(), name=f"purgatory-leases:{self.url}"
            )

    def _let_go(self, token_id: str) -> None:
        """Stop renewing a claim; with none left, the renewer stops too."""
        self._held.discard(token_id)
        if not self._held and self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def _renew_claims(self) -> None:
        """Renew every held claim each third of the lease, while any is held.

        A failed renewal is logged and tried again at the next round, which still comes
        well before the lease lapses.
        """
        while self._held:
            await asyncio.sleep(self.claim_lease / 3)  # a lease's heartbeat, not a poll
            held = list(self._held)  # never empty: letting go of the last claim cancels this task
            try:
                await self.store.renew_claims(held, time.time() + self.claim_lease)
            except Exception as exc:
                _log.warning("renewing %d claim(s) in %s failed (%r); retrying next round", len(held), self.url, exc)

    def changes(self, maxsize: int = 1000) -> Subscription[PurgatoryChange]:
        """An async iterator of every change from now on (a slow reader loses the oldest).

        While the purgatory is open with ``async with``, changes committed by other
        processes are included.
        """
        return self._bus.subscribe(maxsize, "drop_oldest")

    # ---------------------------------------------------------- background work

    def _deadline_added(self, deadline_ts: float | None) -> None:
        if deadline_ts is None or not self._tasks:
            return
        # The timer may be between asking the store and starting to wait: the flag makes it
        # ask again rather than sleep through this deadline.
        self._deadlines_changed = True
        waiter = self._timer_wake
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _keep_running(self, what: str, round_: Callable[[], Awaitable[None]]) -> None:
        """Run rounds of background work until cancelled (by ``aclose``).

        A failed round is logged and retried after a backoff that doubles from
        ``RETRY_FIRST`` up to ``RETRY_MAX`` and starts over after a round that succeeds.
        """
        delay = RETRY_FIRST
        while True:
            try:
                await round_()
            except Exception as exc:
                _log.warning(
                    "purgatory %s: a round of the %s failed, retrying in %.2f s: %r",
                    self.url,
                    what,
                    delay,
                    exc,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)  # backoff before a retry, not a poll
                delay = min(delay * 2, RETRY_MAX)
            else:
                delay = RETRY_FIRST

    async def _deadline_round(self) -> None:
        """Sleep until the earliest deadline (or until a new one is saved), then apply it."""
        self._deadlines_changed = False
        self._next_deadline = await self.store.next_deadline()
        if self._deadlines_changed:
            return
        waiter = self._timer_wake = asyncio.get_running_loop().create_future()
        if self._next_deadline is None:
            await waiter
            return
        delay = self._next_deadline - utc_now().timestamp()
        if delay > 0:
            await asyncio.wait((waiter,), timeout=delay)
            if waiter.done():
                return  # a new deadline arrived: recompute
        await self.void_expired()

    async def _watch_round(self) -> None:
        """Publish the changes that other processes committed to the store since the last round."""
        if not self._catching_up:  # a failed read is retried without waiting for another change
            await self.store.wait_external_change()
            self._catching_up = True
        self._last_seq, changes = await self.store.changes_since(self._last_seq)
        self._catching_up = False
        for change in changes:
            try:
                token = self._to_token(_as_of(change.kind, change.record))
            except Exception as exc:  # one unreadable row must not hide the others
                _log.warning(
                    "purgatory %s: skipped the %s change of token %s: %r",
                    self.url,
                    change.kind,
                    change.record.id,
                    exc,
                    exc_info=exc,
                )
                continue
            if not self._bus.closed:
                self._bus.publish(PurgatoryChange(change.kind, token))  # type: ignore[arg-type]
            if change.kind == "saved" and token.deadline is not None:
                self._deadline_added(token.deadline.timestamp())


_STATUS_OF_CHANGE = {"saved": "pending", "escalated": "escalated"}


def _as_of(kind: str, record: TokenRecord) -> TokenRecord:
    """A record as it was at a change: a store keeps only the current row, but a token is
    pending when saved and escalated when escalated, with no resolution yet."""
    status = _STATUS_OF_CHANGE.get(kind)
    if status is None:  # resolved, cancelled, voided: final, the current row is that state
        return record
    return dataclasses.replace(
        record, status=status, resolution=None, resolved_at=None, resumed=False, resolved_by=None
    )


MAX_BY = 256  # characters of ``resolved_by``


def _check_by(by: object) -> str | None:
    """``by`` as recorded: None, or valid text of at most ``MAX_BY`` characters."""
    if by is None:
        return None
    if not isinstance(by, str):
        raise ValueError(f"by (who answered) must be a str or None, got {by!r}")
    if len(by) > MAX_BY:
        raise ValueError(f"by (who answered) must be at most {MAX_BY} characters, got {len(by)}")
    try:
        by.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"by (who answered) is not valid text: {by!r}") from None
    return by


_VERBS = {
    SemaphoreStatus.RESOLVED: "resolve",
    SemaphoreStatus.CANCELLED: "cancel",
    SemaphoreStatus.VOIDED: "void",
    SemaphoreStatus.ESCALATED: "escalate",
}


def open_purgatory(url: str = "memory://", *, codec: JsonCodec | None = None, claim_lease: float = 30.0) -> Purgatory:
    """A purgatory over the store a URL names (the store opens on first use).

    ``claim_lease``: seconds a claim to resume lasts unless renewed (see ``Purgatory``).

    Raises:
        ValueError: an unknown or malformed URL, or a ``claim_lease`` that is not a
            finite number above 0.
    """
    return Purgatory(store_from_url(url), codec=codec, claim_lease=claim_lease)
