"""An in-process store for tests and throwaway runs: nothing survives the process."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection

from ..._core._errors import SemaphoreError
from ._base import OPEN_STATUSES, LoopBinding, StoreChange, TokenRecord

__all__ = ["MemoryStore", "from_url"]


class MemoryStore:
    """Records in a dict; every operation is atomic because it never awaits midway.

    Like every store it belongs to one event loop at a time (the first it is used on),
    so that code moving to a durable store behaves the same; closing it lets it go.
    """

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._records: dict[str, TokenRecord] = {}
        self._seq = 0  # every change is this object's own: no log to keep
        self._leases: dict[str, float] = {}  # claims held until a POSIX time, not finished yet
        self._tasks: dict[str, str] = {}  # workshop task snapshots, in the order first saved
        self._loop = LoopBinding()

    async def open(self) -> None:
        """Nothing to open but the binding to this event loop."""
        self._loop.check(self.url)

    async def close(self) -> None:
        """Nothing to release: the records stay, and the store may be used on another loop."""
        self._loop = LoopBinding()

    async def insert(self, record: TokenRecord, on_commit: Callable[[None], None] | None = None) -> None:
        self._loop.check(self.url)
        if record.id in self._records:
            raise SemaphoreError(f"a token with id {record.id!r} already exists")
        self._records[record.id] = record
        self._seq += 1
        if on_commit is not None:
            on_commit(None)

    async def get(self, token_id: str) -> TokenRecord | None:
        self._loop.check(self.url)
        return self._records.get(token_id)

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
        self._loop.check(self.url)
        record = self._records.get(token_id)
        if record is None or record.status not in allowed:
            if on_commit is not None:
                on_commit(None)
            return None
        updated = dataclasses.replace(
            record,
            status=status,
            resolution=resolution,
            resolved_at=resolved_at,
            resumed=claim or record.resumed,
            resolved_by=resolved_by,
        )
        self._records[token_id] = updated
        if claim and claim_until is not None:
            self._leases[token_id] = claim_until
        self._seq += 1
        if on_commit is not None:
            on_commit(updated)
        return updated

    async def claim_resume(self, token_id: str, *, now: float | None = None, until: float | None = None) -> bool:
        self._loop.check(self.url)
        record = self._records.get(token_id)
        if record is None or record.status != "resolved":
            return False
        if record.resumed and not self._lapsed(token_id, now):
            return False
        self._records[token_id] = dataclasses.replace(record, resumed=True)
        if until is None:
            self._leases.pop(token_id, None)
        else:
            self._leases[token_id] = until
        return True

    def _lapsed(self, token_id: str, now: float | None) -> bool:
        lease = self._leases.get(token_id)
        return now is not None and lease is not None and lease < now

    async def renew_claims(self, token_ids: Collection[str], until: float) -> None:
        self._loop.check(self.url)
        for token_id in token_ids:
            if token_id in self._leases:
                self._leases[token_id] = until

    async def finish_resume(self, token_id: str) -> None:
        self._loop.check(self.url)
        self._leases.pop(token_id, None)

    async def release_claim(self, token_id: str) -> None:
        self._loop.check(self.url)
        record = self._records.get(token_id)
        if record is not None and record.status == "resolved":
            self._records[token_id] = dataclasses.replace(record, resumed=False)
            self._leases.pop(token_id, None)

    async def next_claim_expiry(self, flux_id: str) -> float | None:
        """Every claim here is this object's own: none is another's to wait for."""
        self._loop.check(self.url)
        return None

    async def list_open(self) -> list[TokenRecord]:
        self._loop.check(self.url)
        return sorted((r for r in self._records.values() if r.status in OPEN_STATUSES), key=lambda r: r.created_at)

    async def due(self, now_ts: float) -> list[TokenRecord]:
        self._loop.check(self.url)
        return [
            r
            for r in self._records.values()
            if r.status == "pending" and r.deadline_ts is not None and r.deadline_ts <= now_ts
        ]

    async def next_deadline(self) -> float | None:
        self._loop.check(self.url)
        deadlines = [
            r.deadline_ts for r in self._records.values() if r.status == "pending" and r.deadline_ts is not None
        ]
        return min(deadlines, default=None)

    async def resolved_unclaimed(self, flux_id: str, now: float | None = None) -> list[TokenRecord]:
        self._loop.check(self.url)
        return [
            r
            for r in self._records.values()
            if r.flux_id == flux_id and r.status == "resolved" and (not r.resumed or self._lapsed(r.id, now))
        ]

    async def changes_since(self, seq: int) -> tuple[int, list[StoreChange]]:
        self._loop.check(self.url)
        return self._seq, []  # nobody else can write here

    async def last_seq(self) -> int:
        self._loop.check(self.url)
        return self._seq

    async def wait_external_change(self) -> None:
        """No other process can reach this store: wait until cancelled by the owner."""
        self._loop.check(self.url)
        await asyncio.get_running_loop().create_future()

    async def save_task(self, task_id: str, data: str) -> None:
        self._loop.check(self.url)
        self._tasks[task_id] = data

    async def load_task(self, task_id: str) -> str | None:
        self._loop.check(self.url)
        return self._tasks.get(task_id)

    async def load_tasks(self) -> list[tuple[str, str]]:
        self._loop.check(self.url)
        return list(self._tasks.items())


def from_url(url: str) -> MemoryStore:
    """The store for a ``memory://`` URL (anything after the scheme is only a name)."""
    return MemoryStore(url)
