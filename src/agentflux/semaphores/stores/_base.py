"""The interface every purgatory store implements, and the row it stores (a leaf: it imports
no store, and every store imports it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from ..._core._errors import SemaphoreStoreError

__all__ = ["OPEN_STATUSES", "LoopBinding", "PurgatoryStore", "StoreChange", "TokenRecord"]

OPEN_STATUSES = ("pending", "escalated")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as a store keeps it: only strings, numbers and bytes.

    The purgatory converts tokens to records and back with its codec, so every store
    accepts and returns exactly the same data.
    """

    id: str
    status: str
    reason: str
    prompt: str
    options: str  # JSON list of strings
    severity: str
    frozen_state: bytes
    original_event: bytes  # codec-encoded
    deadline: str | None  # ISO 8601 with offset
    deadline_ts: float | None  # the same instant as a POSIX timestamp, for queries
    escalation: str | None
    flux_id: str | None
    created_at: str
    resolution: bytes | None  # codec-encoded
    resolved_at: str | None
    resumed: bool = False  # a flux has claimed the resolution for resuming
    resolved_by: str | None = None  # who made the final change, and from where


@dataclass(frozen=True, slots=True)
class StoreChange:
    """One committed change, as another process sees it through the store."""

    seq: int
    kind: str
    record: TokenRecord


class LoopBinding:
    """The event loop a store belongs to: the one it was opened (or first used) on.

    A store's futures, callbacks and background work belong to that loop, so a call from
    any other loop (a second ``asyncio.run``, another thread's loop) could only hang or
    fail halfway; ``check`` refuses it before anything is written.
    """

    __slots__ = ("loop", "thread")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = ""  # the name of the thread that loop ran on

    def check(self, url: str) -> asyncio.AbstractEventLoop:
        """The running loop, bound to the store if it is the first one.

        Raises:
            SemaphoreStoreError: the store belongs to another event loop.
        """
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            if self.loop is not None:
                raise self.refusal(url, loop)
            self.loop, self.thread = loop, threading.current_thread().name
        return loop

    def refusal(self, url: str, loop: asyncio.AbstractEventLoop) -> SemaphoreStoreError:
        """The error for a call on ``loop``, which is not the store's."""
        owner = "now closed" if self.loop is None or self.loop.is_closed() else "still open"
        return SemaphoreStoreError(
            f"the store {url} belongs to the event loop it was opened on (in thread {self.thread!r}, {owner}) "
            f"and cannot be used from another event loop (this call ran in thread "
            f"{threading.current_thread().name!r}); nothing was done. Use a store or purgatory on one "
            f"event loop only: open a new one for each asyncio.run() or thread"
        )


class PurgatoryStore(Protocol):
    """Durable (or not) storage of token records with compare-and-set transitions.

    A store belongs to the event loop it was opened on: every method called on another
    loop raises ``SemaphoreStoreError`` and changes nothing.
    """

    url: str

    async def open(self) -> None:
        """Open (create and migrate) the store; idempotent."""
        ...

    async def close(self) -> None:
        """Release every resource; idempotent."""
        ...

    async def insert(self, record: TokenRecord, on_commit: Callable[[None], None] | None = None) -> None:
        """Add a new token.

        ``on_commit(None)`` runs on the event loop once the change is durable, even if the
        caller was cancelled meanwhile (a submitted write commits regardless).

        Raises:
            SemaphoreError: a token with that id exists.
        """
        ...

    async def get(self, token_id: str) -> TokenRecord | None:
        """The record with that id, or None."""
        ...

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
        """Set ``status`` if the current status is in ``allowed`` (atomically), recording
        ``resolved_by`` (who made the change) with it.

        Returns the new record, or None when the token is missing or not in an allowed
        status (nothing changed). ``claim`` also marks it resumed by this store object,
        leased until the POSIX time ``claim_until`` (None: for good). ``on_commit`` gets
        the same outcome once it is durable, as for ``insert``.
        """
        ...

    async def claim_resume(self, token_id: str, *, now: float | None = None, until: float | None = None) -> bool:
        """Mark a resolved token as being resumed by this store object; True for exactly
        one caller.

        A claim is a lease: it holds until the POSIX time ``until`` (None: for good), and
        one whose lease ended before ``now`` (its holder died) can be claimed again.
        """
        ...

    async def renew_claims(self, token_ids: Collection[str], until: float) -> None:
        """Extend this store object's leased claims on ``token_ids`` until ``until``."""
        ...

    async def finish_resume(self, token_id: str) -> None:
        """The claimed resumption completed: its claim holds for good (no lease lapses)."""
        ...

    async def release_claim(self, token_id: str) -> None:
        """Undo ``claim_resume`` for a resumption that could not run (a claim another
        store object holds is left alone)."""
        ...

    async def next_claim_expiry(self, flux_id: str) -> float | None:
        """When the earliest leased claim on a resolution of ``flux_id`` held by another
        store object ends, as a POSIX time; None if there is none."""
        ...

    async def list_open(self) -> list[TokenRecord]:
        """Pending and escalated tokens, oldest first."""
        ...

    async def due(self, now_ts: float) -> list[TokenRecord]:
        """Pending tokens whose deadline is at or before ``now_ts``."""
        ...

    async def next_deadline(self) -> float | None:
        """The earliest deadline of a pending token, as a POSIX timestamp."""
        ...

    async def resolved_unclaimed(self, flux_id: str, now: float | None = None) -> list[TokenRecord]:
        """Resolved tokens of ``flux_id`` that no flux has claimed for resuming, with those
        whose claim's lease ended before ``now``, if given."""
        ...

    async def changes_since(self, seq: int) -> tuple[int, list[StoreChange]]:
        """The latest change number, and the changes above ``seq`` that other store objects
        (other processes) committed, in order; this object's own changes are left out."""
        ...

    async def last_seq(self) -> int:
        """The sequence number of the latest committed change (0 if none)."""
        ...

    async def wait_external_change(self) -> None:
        """Return when another process may have changed the store (never, for memory)."""
        ...

    async def save_task(self, task_id: str, data: str) -> None:
        """Keep ``data`` (a workshop task's snapshot, JSON text) under ``task_id``, replacing
        what was kept before; durable once this returns."""
        ...

    async def load_task(self, task_id: str) -> str | None:
        """The snapshot kept under ``task_id``, or None."""
        ...

    async def load_tasks(self) -> list[tuple[str, str]]:
        """Every kept snapshot as ``(task_id, data)``, in the order each was first saved."""
        ...
