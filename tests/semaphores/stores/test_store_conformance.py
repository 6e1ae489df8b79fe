"""The purgatory conformance suite: the same behaviour over every store (SPEC 4, 10 Semaphores).

Every test takes the ``purgatory`` fixture (or ``store_url``), which is parametrized over
``STORE_KINDS``; a new store (postgres) joins by adding its URL factory to ``_helpers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agentflux import (
    Purgatory,
    PurgatoryChange,
    ReentryContext,
    SemaphoreCodecError,
    SemaphoreError,
    SemaphoreNotFound,
    SemaphoreNotPending,
    SemaphoreReason,
    SemaphoreStatus,
    SemaphoreStoreError,
    SemaphoreToken,
    open_purgatory,
)

from .._helpers import SHARED_STORE_KINDS, STORE_KINDS, STORE_URLS, make_token, next_changes, wait_for_change

NOW = datetime.now(UTC)
FAR = NOW + timedelta(days=30)  # deadlines no timer reaches during a test


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORE_URLS[request.param](tmp_path)


@pytest.fixture
async def purgatory(store_url: str) -> AsyncIterator[Purgatory]:
    async with open_purgatory(store_url) as p:
        yield p


# ----------------------------------------------------------------------------- save / get / list


async def test_save_then_get_returns_an_equal_token(purgatory: Purgatory) -> None:
    token = make_token(
        "deploy to prod?",
        reason=SemaphoreReason.SENSITIVE_ACTION,
        options=("yes", "no"),
        severity="critical",
        frozen_state=b"\x00frozen\xff",
        original_event={"event": [1, (2, 3)], "at": NOW, "raw": b"\x01"},
        deadline=FAR.astimezone(timezone(timedelta(hours=-3))),
        escalation="oncall@example.com",
        flux_id="flux-deployer",
    )
    saved = await purgatory.save(token)
    assert saved == token
    got = await purgatory.get(token.id)
    assert got == token
    assert got.status is SemaphoreStatus.PENDING
    assert got.original_event == {"event": [1, (2, 3)], "at": NOW, "raw": b"\x01"}
    assert got.deadline == token.deadline
    assert got.deadline is not None
    assert got.deadline.utcoffset() is not None
    assert got.created_at == token.created_at


async def test_list_pending_is_oldest_first_and_only_open_tokens(purgatory: Purgatory) -> None:
    base = datetime(2024, 5, 1, 12, tzinfo=UTC)
    created = [base + timedelta(seconds=s) for s in (5, 1, 3, 0.5, 4)]
    tokens = [make_token(f"t{i}", created_at=moment) for i, moment in enumerate(created)]
    # One of them in another timezone: ordering is by instant, not by the local wall time.
    tokens.append(make_token("t5", created_at=(base + timedelta(seconds=2)).astimezone(timezone(timedelta(hours=9)))))
    for token in tokens:
        await purgatory.save(token)
    pending = await purgatory.list_pending()
    assert [t.prompt for t in pending] == ["t3", "t1", "t5", "t2", "t4", "t0"]

    await purgatory.resolve(tokens[1].id, "yes")
    await purgatory.cancel(tokens[2].id)
    assert [t.prompt for t in await purgatory.list_pending()] == ["t3", "t5", "t4", "t0"]


async def test_list_pending_of_an_empty_store(purgatory: Purgatory) -> None:
    assert await purgatory.list_pending() == []


async def test_get_missing_raises_semaphore_not_found_which_is_a_lookup_error(purgatory: Purgatory) -> None:
    with pytest.raises(SemaphoreNotFound, match="nope") as caught:
        await purgatory.get("nope")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, SemaphoreError)
    with pytest.raises(SemaphoreNotFound):
        await purgatory.resolve("nope", 1)
    with pytest.raises(SemaphoreNotFound):
        await purgatory.cancel("nope")


async def test_duplicate_save_raises_and_keeps_the_first(purgatory: Purgatory) -> None:
    token = make_token("first")
    await purgatory.save(token)
    with pytest.raises(SemaphoreError):
        await purgatory.save(make_token("second", id=token.id))
    assert (await purgatory.get(token.id)).prompt == "first"
    assert len(await purgatory.list_pending()) == 1


async def test_saving_a_token_that_is_not_pending_is_refused(purgatory: Purgatory) -> None:
    token = make_token(status=SemaphoreStatus.RESOLVED)
    with pytest.raises(SemaphoreNotPending):
        await purgatory.save(token)
    with pytest.raises(SemaphoreNotFound):
        await purgatory.get(token.id)


async def test_saving_an_unencodable_original_event_stores_nothing(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    token = make_token(original_event={"conn": object()})
    with pytest.raises(SemaphoreCodecError, match=r"\$\.conn"):
        await purgatory.save(token)
    with pytest.raises(SemaphoreNotFound):
        await purgatory.get(token.id)
    assert await purgatory.list_pending() == []
    assert feed.pending == 0
    feed.close()


# ----------------------------------------------------------------------------- resolve / cancel


async def test_resolve_returns_a_reentry_context_and_records_the_answer(purgatory: Purgatory) -> None:
    token = make_token(frozen_state=b"state", original_event={"n": 7})
    await purgatory.save(token)
    before = datetime.now(UTC)
    context = await purgatory.resolve(token.id, {"approved": True, "note": "lgtm"})
    assert context == ReentryContext(token.id, b"state", {"approved": True, "note": "lgtm"}, {"n": 7})
    stored = await purgatory.get(token.id)
    assert stored.status is SemaphoreStatus.RESOLVED
    assert stored.resolution == {"approved": True, "note": "lgtm"}
    assert stored.resolved_at is not None
    assert stored.resolved_at.utcoffset() is not None
    assert before - timedelta(seconds=1) <= stored.resolved_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert await purgatory.list_pending() == []


@pytest.mark.parametrize("second", ["resolve", "cancel"])
@pytest.mark.parametrize("first", ["resolve", "cancel"])
async def test_a_second_resolve_or_cancel_raises_and_changes_nothing(
    purgatory: Purgatory, first: str, second: str
) -> None:
    token = make_token()
    await purgatory.save(token)
    if first == "resolve":
        await purgatory.resolve(token.id, "first answer")
    else:
        await purgatory.cancel(token.id, "first reason")
    after_first = await purgatory.get(token.id)
    feed = purgatory.changes()
    again = (
        purgatory.resolve(token.id, "second answer") if second == "resolve" else purgatory.cancel(token.id, "second")
    )
    with pytest.raises(SemaphoreNotPending, match=token.id):
        await again
    assert await purgatory.get(token.id) == after_first
    assert after_first.resolution == ("first answer" if first == "resolve" else "first reason")
    assert after_first.status is (SemaphoreStatus.RESOLVED if first == "resolve" else SemaphoreStatus.CANCELLED)
    assert feed.pending == 0  # a refused transition is not a change
    feed.close()


async def test_cancel_withdraws_a_token_keeping_the_reason(purgatory: Purgatory) -> None:
    token = make_token()
    await purgatory.save(token)
    cancelled = await purgatory.cancel(token.id, "not needed any more")
    assert cancelled.status is SemaphoreStatus.CANCELLED
    assert cancelled.resolution == "not needed any more"
    assert cancelled.resolved_at is not None
    assert await purgatory.get(token.id) == cancelled
    assert await purgatory.list_pending() == []


async def test_an_unencodable_answer_is_refused_and_the_token_stays_pending(purgatory: Purgatory) -> None:
    token = make_token()
    await purgatory.save(token)
    with pytest.raises(SemaphoreCodecError):
        await purgatory.resolve(token.id, {"socket": object()})
    assert (await purgatory.get(token.id)).status is SemaphoreStatus.PENDING
    await purgatory.resolve(token.id, "fine")
    assert (await purgatory.get(token.id)).resolution == "fine"


# ----------------------------------------------------------------------------- deadlines


async def test_void_expired_voids_or_escalates_tokens_past_their_deadline(purgatory: Purgatory) -> None:
    quiet = make_token("quiet", deadline=FAR, created_at=NOW)
    loud = make_token("loud", deadline=FAR + timedelta(minutes=1), escalation="lead", created_at=NOW + timedelta(1))
    later = make_token("later", deadline=FAR + timedelta(days=1), escalation="lead", created_at=NOW + timedelta(2))
    timeless = make_token("timeless", created_at=NOW + timedelta(3))
    for token in (quiet, loud, later, timeless):
        await purgatory.save(token)

    assert await purgatory.void_expired(now=FAR - timedelta(seconds=1)) == []
    changed = await purgatory.void_expired(now=(FAR + timedelta(hours=1)).astimezone(timezone(timedelta(hours=4))))
    assert {t.id: t.status for t in changed} == {quiet.id: SemaphoreStatus.VOIDED, loud.id: SemaphoreStatus.ESCALATED}

    assert (await purgatory.get(quiet.id)).status is SemaphoreStatus.VOIDED
    assert (await purgatory.get(loud.id)).status is SemaphoreStatus.ESCALATED
    assert (await purgatory.get(later.id)).status is SemaphoreStatus.PENDING
    # Escalated tokens are still pending work; voided ones are gone from the list.
    assert [t.prompt for t in await purgatory.list_pending()] == ["loud", "later", "timeless"]
    # Applying the same deadlines again changes nothing.
    assert await purgatory.void_expired(now=FAR + timedelta(hours=2)) == []

    with pytest.raises(SemaphoreNotPending):
        await purgatory.resolve(quiet.id, "too late")
    with pytest.raises(SemaphoreNotPending):
        await purgatory.cancel(quiet.id)
    assert (await purgatory.get(quiet.id)).status is SemaphoreStatus.VOIDED

    context = await purgatory.resolve(loud.id, "handled by lead")
    assert context.human_input == "handled by lead"
    assert (await purgatory.get(loud.id)).status is SemaphoreStatus.RESOLVED


async def test_an_escalated_token_can_be_cancelled(purgatory: Purgatory) -> None:
    token = make_token(deadline=FAR, escalation="lead")
    await purgatory.save(token)
    await purgatory.void_expired(now=FAR)  # at the deadline exactly
    assert (await purgatory.get(token.id)).status is SemaphoreStatus.ESCALATED
    assert (await purgatory.cancel(token.id)).status is SemaphoreStatus.CANCELLED


async def test_void_expired_skips_tokens_already_resolved(purgatory: Purgatory) -> None:
    token = make_token(deadline=FAR)
    await purgatory.save(token)
    await purgatory.resolve(token.id, "in time")
    assert await purgatory.void_expired(now=FAR + timedelta(days=1)) == []
    assert (await purgatory.get(token.id)).status is SemaphoreStatus.RESOLVED


async def test_void_expired_refuses_a_naive_now(purgatory: Purgatory) -> None:
    token = make_token(deadline=FAR)
    await purgatory.save(token)
    with pytest.raises(ValueError, match="timezone"):
        await purgatory.void_expired(now=datetime(2100, 1, 1))
    assert (await purgatory.get(token.id)).status is SemaphoreStatus.PENDING


async def test_the_deadline_timer_voids_and_escalates_on_its_own(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    deadline = datetime.now(UTC) + timedelta(milliseconds=80)
    quiet = await purgatory.save(make_token("quiet", deadline=deadline))
    loud = await purgatory.save(make_token("loud", deadline=deadline + timedelta(milliseconds=20), escalation="lead"))
    untouched = await purgatory.save(make_token("untouched", deadline=FAR))

    voided = await wait_for_change(feed, "voided", quiet.id, within=3)
    assert datetime.now(UTC) >= deadline  # not early
    assert voided.token.status is SemaphoreStatus.VOIDED
    escalated = await wait_for_change(feed, "escalated", loud.id, within=3)
    assert escalated.token.status is SemaphoreStatus.ESCALATED
    assert escalated.token.escalation == "lead"
    feed.close()

    assert (await purgatory.get(quiet.id)).status is SemaphoreStatus.VOIDED
    assert (await purgatory.get(loud.id)).status is SemaphoreStatus.ESCALATED
    assert (await purgatory.get(untouched.id)).status is SemaphoreStatus.PENDING
    await purgatory.resolve(loud.id, "escalated tokens stay resolvable")


async def test_an_earlier_deadline_saved_later_wakes_the_timer(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    slow = await purgatory.save(make_token("slow", deadline=datetime.now(UTC) + timedelta(seconds=30)))
    await asyncio.sleep(0.02)  # let the timer start waiting on the 30 s deadline
    fast = await purgatory.save(make_token("fast", deadline=datetime.now(UTC) + timedelta(milliseconds=60)))
    await wait_for_change(feed, "voided", fast.id, within=3)
    feed.close()
    assert (await purgatory.get(slow.id)).status is SemaphoreStatus.PENDING


async def test_a_deadline_already_past_when_saved_is_applied_promptly(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    token = await purgatory.save(make_token(deadline=datetime.now(UTC) - timedelta(seconds=1)))
    await wait_for_change(feed, "voided", token.id, within=3)
    feed.close()


async def test_tokens_resolved_before_their_deadline_are_left_alone_by_the_timer(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    deadline = datetime.now(UTC) + timedelta(milliseconds=60)
    early = await purgatory.save(make_token("early", deadline=deadline))
    marker = await purgatory.save(make_token("marker", deadline=deadline + timedelta(milliseconds=40)))
    await purgatory.resolve(early.id, "in time")
    await wait_for_change(feed, "voided", marker.id, within=3)
    feed.close()
    assert (await purgatory.get(early.id)).status is SemaphoreStatus.RESOLVED


# ----------------------------------------------------------------------------- change feed


async def test_changes_yields_every_kind_in_order(purgatory: Purgatory) -> None:
    feed = purgatory.changes()
    a = make_token("a")
    b = make_token("b")
    c = make_token("c", deadline=FAR)
    d = make_token("d", deadline=FAR, escalation="lead")
    for token in (a, b, c, d):
        await purgatory.save(token)
    await purgatory.resolve(a.id, "yes")
    await purgatory.cancel(b.id, "no")
    await purgatory.void_expired(now=FAR + timedelta(seconds=1))
    changes = await next_changes(feed, 8)
    feed.close()

    assert all(isinstance(change, PurgatoryChange) for change in changes)
    assert [(ch.kind, ch.token.prompt) for ch in changes[:6]] == [
        ("saved", "a"), ("saved", "b"), ("saved", "c"), ("saved", "d"), ("resolved", "a"), ("cancelled", "b"),
    ]
    assert sorted((ch.kind, ch.token.prompt) for ch in changes[6:]) == [("escalated", "d"), ("voided", "c")]
    statuses = {ch.kind: ch.token.status for ch in changes}
    assert statuses == {
        "saved": SemaphoreStatus.PENDING,
        "resolved": SemaphoreStatus.RESOLVED,
        "cancelled": SemaphoreStatus.CANCELLED,
        "voided": SemaphoreStatus.VOIDED,
        "escalated": SemaphoreStatus.ESCALATED,
    }
    assert changes[4].token.resolution == "yes"
    assert changes[5].token.resolution == "no"


async def test_every_feed_sees_changes_from_its_subscription_on(purgatory: Purgatory) -> None:
    early = purgatory.changes()
    first = await purgatory.save(make_token("first"))
    late = purgatory.changes()
    second = await purgatory.save(make_token("second"))
    assert [c.token.id for c in await next_changes(early, 2)] == [first.id, second.id]
    assert [c.token.id for c in await next_changes(late, 1)] == [second.id]
    early.close()
    late.close()


async def test_closing_the_purgatory_ends_the_change_feeds(store_url: str) -> None:
    p = open_purgatory(store_url)
    await p.__aenter__()
    feed = p.changes()
    await p.save(make_token())
    await p.aclose()
    async with asyncio.timeout(2):
        kinds = [change.kind async for change in feed]
    assert kinds == ["saved"]
    await p.aclose()  # idempotent


async def test_methods_open_the_store_lazily_outside_async_with(store_url: str) -> None:
    p = open_purgatory(store_url)
    try:
        token = await p.save(make_token())
        assert (await p.get(token.id)).id == token.id
        await p.resolve(token.id, 1)
    finally:
        await p.aclose()


# ----------------------------------------------------------------------------- exactly once


async def test_claim_resume_succeeds_exactly_once_per_resolution(purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token(flux_id="f"))
    assert not await purgatory.claim_resume(token.id)  # still pending
    assert not await purgatory.claim_resume("missing")
    await purgatory.resolve(token.id, "go")
    assert [t.id for t in await purgatory.resolved_unclaimed("f")] == [token.id]
    assert await purgatory.resolved_unclaimed("other") == []
    claims = await asyncio.gather(*(purgatory.claim_resume(token.id) for _ in range(10)))
    assert claims.count(True) == 1
    assert await purgatory.resolved_unclaimed("f") == []
    await purgatory.release_claim(token.id)
    assert await purgatory.claim_resume(token.id)
    assert not await purgatory.claim_resume(token.id)


async def test_resolve_with_claim_leaves_nothing_to_claim(purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token(flux_id="f"))
    await purgatory.resolve(token.id, "go", claim=True)
    assert await purgatory.resolved_unclaimed("f") == []
    assert not await purgatory.claim_resume(token.id)


async def test_cancelled_tokens_cannot_be_claimed(purgatory: Purgatory) -> None:
    token = await purgatory.save(make_token(flux_id="f"))
    await purgatory.cancel(token.id)
    assert not await purgatory.claim_resume(token.id)
    assert await purgatory.resolved_unclaimed("f") == []


async def test_a_claim_is_a_lease_taken_again_only_once_it_lapsed(purgatory: Purgatory) -> None:
    store = purgatory.store
    token = await purgatory.save(make_token(flux_id="f"))
    await purgatory.resolve(token.id, "go")
    assert await store.claim_resume(token.id, now=100.0, until=110.0)
    assert not await store.claim_resume(token.id, now=109.0, until=119.0)  # still held
    assert await store.resolved_unclaimed("f", 109.0) == []
    assert [r.id for r in await store.resolved_unclaimed("f", 111.0)] == [token.id]  # lapsed
    assert await store.resolved_unclaimed("f") == []  # without a time, only unclaimed ones
    await store.renew_claims([token.id], 130.0)
    assert not await store.claim_resume(token.id, now=120.0, until=140.0)  # the renewal holds
    assert await store.claim_resume(token.id, now=131.0, until=141.0)  # lapsed: taken again
    await store.finish_resume(token.id)  # completed: held for good
    assert not await store.claim_resume(token.id, now=1e12, until=2e12)
    assert await store.resolved_unclaimed("f", 1e12) == []
    await store.renew_claims([token.id], 3e12)  # a finished claim is not leased again
    assert await store.resolved_unclaimed("f", 1e12) == []


async def test_a_claim_without_a_lease_never_lapses_and_a_released_one_is_free(purgatory: Purgatory) -> None:
    store = purgatory.store
    token = await purgatory.save(make_token(flux_id="f"))
    await purgatory.resolve(token.id, "go")
    assert await store.claim_resume(token.id)
    assert not await store.claim_resume(token.id, now=1e12, until=2e12)
    await store.release_claim(token.id)
    assert [r.id for r in await store.resolved_unclaimed("f")] == [token.id]
    assert await store.claim_resume(token.id, now=1.0, until=2.0)


async def test_a_resolve_with_claim_is_leased_and_renewed_while_the_purgatory_holds_it(store_url: str) -> None:
    async with open_purgatory(store_url, claim_lease=0.15) as purgatory:
        token = await purgatory.save(make_token(flux_id="f"))
        await purgatory.resolve(token.id, "go", claim=True)
        assert purgatory.holds(token.id)
        await asyncio.sleep(0.5)  # three leases: only renewals keep it
        assert not await purgatory.store.claim_resume(token.id, now=time.time(), until=time.time() + 1)
        assert await purgatory.resolved_unclaimed("f", lapsed=True) == []
        await purgatory.finish_resume(token.id)
        assert not purgatory.holds(token.id)
        assert await purgatory.resolved_unclaimed("f", lapsed=True) == []


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_another_store_objects_claim_is_waited_for_and_left_alone(kind: str, tmp_path: Path) -> None:
    url = STORE_URLS[kind](tmp_path)
    async with open_purgatory(url) as first, open_purgatory(url) as second:
        token = await first.save(make_token(flux_id="f"))
        await first.resolve(token.id, "go")
        assert await first.store.claim_resume(token.id, now=100.0, until=110.0)
        assert await first.next_claim_expiry("f") is None  # its own claim: nothing to wait for
        assert await second.next_claim_expiry("f") == 110.0
        assert await second.next_claim_expiry("other") is None
        await second.store.release_claim(token.id)  # not its claim: left alone
        await second.store.finish_resume(token.id)
        await second.store.renew_claims([token.id], 500.0)
        assert await second.next_claim_expiry("f") == 110.0
        assert await second.store.claim_resume(token.id, now=111.0, until=121.0)  # lapsed: taken over
        assert await first.next_claim_expiry("f") == 121.0
        await first.store.renew_claims([token.id], 900.0)  # the old holder cannot renew it back
        await first.store.finish_resume(token.id)
        assert await first.next_claim_expiry("f") == 121.0
        await second.store.finish_resume(token.id)
        assert await first.next_claim_expiry("f") is None


async def test_renewing_many_claims_at_once(purgatory: Purgatory) -> None:
    store = purgatory.store
    tokens = [await purgatory.save(make_token(f"t{i}", flux_id="f")) for i in range(1200)]
    for token in tokens:
        await purgatory.resolve(token.id, "go")
        assert await store.claim_resume(token.id, now=1.0, until=10.0)
    await store.renew_claims([t.id for t in tokens], 50.0)
    assert await store.resolved_unclaimed("f", 20.0) == []
    assert len(await store.resolved_unclaimed("f", 51.0)) == 1200
    await store.renew_claims([], 60.0)  # nothing to renew


async def race(resolvers: list[Purgatory], token_id: str) -> list[Any]:
    """Every purgatory resolves (or cancels) the same token at once; outcomes in order."""
    calls = [
        p.resolve(token_id, f"answer-{i}") if i % 2 == 0 else p.cancel(token_id, f"reason-{i}")
        for i, p in enumerate(resolvers)
    ]
    return await asyncio.gather(*calls, return_exceptions=True)


def check_one_winner(outcomes: list[Any], token: SemaphoreToken) -> int:
    winners = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, BaseException)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(loser, SemaphoreNotPending) for loser in losers), losers
    assert token.status in (SemaphoreStatus.RESOLVED, SemaphoreStatus.CANCELLED)
    expected = f"answer-{winners[0]}" if winners[0] % 2 == 0 else f"reason-{winners[0]}"
    assert token.resolution == expected
    return winners[0]


async def test_two_concurrent_resolvers_exactly_one_wins_100_times(purgatory: Purgatory) -> None:
    tokens = await asyncio.gather(*(purgatory.save(make_token(f"race {i}")) for i in range(100)))
    wins = [0, 0, 0]
    for token in tokens:
        outcomes = await race([purgatory, purgatory, purgatory], token.id)
        wins[check_one_winner(outcomes, await purgatory.get(token.id))] += 1
    assert sum(wins) == 100


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_two_purgatory_objects_on_one_store_exactly_one_wins_100_times(kind: str, tmp_path: Path) -> None:
    url = STORE_URLS[kind](tmp_path)
    async with open_purgatory(url) as first, open_purgatory(url) as second:
        tokens = await asyncio.gather(*(first.save(make_token(f"race {i}")) for i in range(100)))
        for index, token in enumerate(tokens):
            # Alternate who goes first so that neither object always wins the queue.
            pair = [first, second] if index % 2 else [second, first]
            outcomes = await race(pair, token.id)
            check_one_winner(outcomes, await first.get(token.id))
            assert await second.get(token.id) == await first.get(token.id)


# ----------------------------------------------------------------------------- cancelled callers

@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_save_whose_caller_is_cancelled_is_all_or_nothing(kind: str, tmp_path: Path) -> None:
    async with open_purgatory(STORE_URLS[kind](tmp_path)) as p:
        feed = p.changes()
        await p.save(make_token("slow", deadline=datetime.now(UTC) + timedelta(seconds=30)))
        await asyncio.sleep(0.02)  # the timer now waits for the 30 s deadline
        fast = make_token("fast", deadline=datetime.now(UTC) + timedelta(milliseconds=100))
        saving = asyncio.create_task(p.save(fast))
        await asyncio.sleep(0)  # the save is under way
        saving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saving
        try:
            await p.get(fast.id)
        except SemaphoreNotFound:
            feed.close()
            return  # it did not happen at all: fine
        # It is parked, so it must be parked completely: reported, and its deadline enforced.
        seen = []
        async with asyncio.timeout(1.0):
            async for change in feed:
                seen.append((change.kind, change.token.prompt))
                if change.kind == "voided":
                    break
        feed.close()
        assert seen == [("saved", "slow"), ("saved", "fast"), ("voided", "fast")]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_resolve_whose_caller_is_cancelled_is_all_or_nothing(kind: str, tmp_path: Path) -> None:
    async with open_purgatory(STORE_URLS[kind](tmp_path)) as p:
        token = await p.save(make_token(flux_id="f"))
        feed = p.changes()
        resolving = asyncio.create_task(p.resolve(token.id, "yes"))
        await asyncio.sleep(0)  # the resolve is under way
        resolving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resolving
        if (await p.get(token.id)).status is SemaphoreStatus.PENDING:
            feed.close()
            return  # it did not happen at all: fine
        # It happened, so watchers (a running flux waiting to resume it) must hear of it.
        change = await wait_for_change(feed, "resolved", token.id, within=1.0)
        feed.close()
        assert change.token.resolution == "yes"


# ----------------------------------------------------------------------------- one event loop


def test_a_purgatory_used_from_a_second_asyncio_run_refuses_and_writes_nothing(store_url: str) -> None:
    purgatory = open_purgatory(store_url)
    # The first loop stays open (it is not closed as asyncio.run would) so the store can
    # still be closed where it belongs.
    first = asyncio.new_event_loop()
    try:
        kept = first.run_until_complete(purgatory.save(make_token("first")))
        stray = make_token("second")

        async def second_run() -> None:
            with pytest.raises(SemaphoreStoreError, match="another event loop") as refused:
                await asyncio.wait_for(purgatory.save(stray), 5)  # bounded: it used to hang
            assert "thread 'MainThread'" in str(refused.value)
            with pytest.raises(SemaphoreStoreError, match="another event loop"):
                await asyncio.wait_for(purgatory.list_pending(), 5)

        asyncio.run(second_run())
        assert first.run_until_complete(purgatory.list_pending()) == [kept]  # the stray save was never written
    finally:
        first.run_until_complete(purgatory.aclose())
        first.close()


async def test_a_purgatory_used_from_another_thread_refuses_and_writes_nothing(purgatory: Purgatory) -> None:
    await purgatory.save(make_token("here"))
    stray = make_token("from a thread")

    def elsewhere() -> None:
        asyncio.run(asyncio.wait_for(purgatory.save(stray), 5))  # bounded: it used to hang

    with pytest.raises(SemaphoreStoreError, match="another event loop") as refused:
        await asyncio.to_thread(elsewhere)
    message = str(refused.value)
    assert "opened on (in thread 'MainThread', still open)" in message
    assert "asyncio_" in message  # the thread the call ran in (to_thread's worker)
    assert [t.prompt for t in await purgatory.list_pending()] == ["here"]
    await purgatory.save(make_token("still works here"))


# ----------------------------------------------------------------------------- task snapshots


async def test_task_snapshots_are_replaced_in_place_and_listed_in_the_order_first_saved(purgatory: Purgatory) -> None:
    store = purgatory.store
    assert await store.load_tasks() == []
    assert await store.load_task("a") is None
    await store.save_task("b", '{"v": 1}')
    await store.save_task("a", '{"v": 2}')
    await store.save_task("b", '{"v": 3, "text": "\\u00e9 caf\\u00e9"}')
    assert await store.load_tasks() == [("b", '{"v": 3, "text": "\\u00e9 caf\\u00e9"}'), ("a", '{"v": 2}')]
    assert await store.load_task("a") == '{"v": 2}'


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_a_saved_task_snapshot_survives_reopening_a_durable_store(kind: str, tmp_path: Path) -> None:
    store_url = STORE_URLS[kind](tmp_path)
    big = "x" * 300_000  # larger than one WAL reserve
    async with open_purgatory(store_url) as p:
        await p.store.save_task("big", big)
        await p.store.save_task("small", "{}")
    async with open_purgatory(store_url) as p:
        assert await p.store.load_tasks() == [("big", big), ("small", "{}")]


_RACER = """
import asyncio, json, sys
from agentflux import SemaphoreNotPending, open_purgatory

async def main(url, ids, me):
    async with open_purgatory(url) as purgatory:
        print("ready", flush=True)
        sys.stdin.readline()  # both start together
        won = []
        async def one(token_id):
            try:
                await purgatory.resolve(token_id, me, by=me)
                won.append(token_id)
            except SemaphoreNotPending:
                pass
        await asyncio.gather(*(one(t) for t in ids))
        print(json.dumps(won), flush=True)

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]))
"""


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_two_processes_resolving_the_same_tokens_exactly_one_wins_each(kind: str, tmp_path: Path) -> None:
    import json
    import sys

    url = STORE_URLS[kind](tmp_path)
    async with open_purgatory(url) as purgatory:
        ids = [(await purgatory.save(make_token(f"race {n}"))).id for n in range(60)]
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RACER,
            url,
            json.dumps(ids),
            name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("left", "right")
    ]
    try:
        async with asyncio.timeout(60):
            for racer in racers:
                assert racer.stdout is not None
                assert (await racer.stdout.readline()).strip() == b"ready"
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write(b"go\n")
                await racer.stdin.drain()
            outputs = [await racer.communicate() for racer in racers]
    finally:
        for racer in racers:
            if racer.returncode is None:
                racer.kill()
                await racer.wait()
    won = [set(json.loads(out.strip().splitlines()[-1])) for out, _ in outputs]
    assert won[0] | won[1] == set(ids)  # every token resolved
    assert not won[0] & won[1]  # by exactly one process
    async with open_purgatory(url) as purgatory:
        for token_id in ids:
            token = await purgatory.get(token_id)
            assert token.resolved_by == token.resolution
            assert token_id in won[0 if token.resolution == "left" else 1]
