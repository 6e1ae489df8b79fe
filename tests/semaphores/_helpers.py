"""Shared helpers for the semaphore and purgatory tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflux import PurgatoryChange, SemaphoreReason, SemaphoreToken
from agentflux.sources import Subscription
from servers import postgres_schema_url

# How each store kind is reached from a test's tmp_path: every test parametrized with
# ``STORE_KINDS`` runs against each (postgres in a fresh schema of the real server; it skips
# when none is reachable, and fails then under AGENTFLUX_REQUIRE_SERVERS=1, as in CI).
STORE_URLS: dict[str, Callable[[Path], str]] = {
    "memory": lambda tmp_path: "memory://",
    "sqlite": lambda tmp_path: f"sqlite:///{tmp_path}/p.db",
    # The same store with the WAL synced on a thread (where kernel AIO is not available).
    "sqlite-thread": lambda tmp_path: f"sqlite:///{tmp_path}/p.db?sync=thread",
    "postgres": lambda tmp_path: postgres_schema_url(),
}
STORE_KINDS = sorted(STORE_URLS)
# Stores that several Purgatory objects (processes, machines) can open at the same time.
SHARED_STORE_KINDS = ["sqlite", "sqlite-thread", "postgres"]


def make_token(prompt: str = "approve?", **fields: Any) -> SemaphoreToken:
    """A pending token with sensible defaults for the fields a test does not care about."""
    fields.setdefault("reason", SemaphoreReason.APPROVAL_NEEDED)
    return SemaphoreToken(prompt=prompt, **fields)


async def next_changes(
    feed: Subscription[PurgatoryChange], count: int, within: float = 3.0
) -> list[PurgatoryChange]:
    """Read exactly ``count`` changes from a purgatory's feed, failing after ``within`` seconds."""
    received: list[PurgatoryChange] = []
    async with asyncio.timeout(within):
        while len(received) < count:
            received.append(await anext(feed))
    return received


async def wait_for_change(
    feed: Subscription[PurgatoryChange], kind: str, token_id: str, within: float = 3.0
) -> PurgatoryChange:
    """The first change of ``kind`` for ``token_id`` on the feed (others are skipped)."""
    async with asyncio.timeout(within):
        async for change in feed:
            if change.kind == kind and change.token.id == token_id:
                return change
    raise AssertionError(f"the change feed ended before a {kind!r} change of {token_id}")
