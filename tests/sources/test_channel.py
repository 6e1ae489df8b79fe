"""``open_channel``: a bounded channel with blocking sends, clones and clean endings (SPEC 3, 10)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux import Flux
from agentflux.sources import (
    BrokenResourceError,
    ClosedResourceError,
    EndOfStream,
    Receiver,
    Sender,
    WouldBlock,
    open_channel,
)

from ._helpers import drain, settle

# ----------------------------------------------------------------------------- buffering


async def test_send_fills_the_buffer_then_waits_until_a_receive_makes_room() -> None:
    sender, receiver = open_channel(2)
    await sender.send("a")
    await sender.send("b")
    blocked = asyncio.create_task(sender.send("c"))
    await settle()
    assert not blocked.done()
    assert sender.statistics().waiting_senders == 1
    assert sender.statistics().buffered == 2

    assert await receiver.receive() == "a"
    await asyncio.wait_for(blocked, 1)
    assert blocked.result() is None
    assert [receiver.receive_nowait(), receiver.receive_nowait()] == ["b", "c"]
    sender.close()
    receiver.close()


async def test_send_nowait_raises_would_block_when_full_and_keeps_the_buffer() -> None:
    sender, receiver = open_channel(1)
    sender.send_nowait(1)
    with pytest.raises(WouldBlock):
        sender.send_nowait(2)
    assert sender.statistics().buffered == 1
    assert receiver.receive_nowait() == 1
    with pytest.raises(WouldBlock):
        receiver.receive_nowait()
    sender.close()
    receiver.close()


async def test_zero_buffer_is_a_rendezvous() -> None:
    sender, receiver = open_channel()  # max_buffer defaults to 0
    assert sender.statistics().max_buffer == 0
    with pytest.raises(WouldBlock):
        sender.send_nowait("x")  # nobody is receiving

    # A send waits for a receiver ...
    send = asyncio.create_task(sender.send("first"))
    await settle()
    assert not send.done()
    assert await receiver.receive() == "first"
    await asyncio.wait_for(send, 1)

    # ... and a receive waits for a sender; send_nowait hands the item straight over.
    receive = asyncio.create_task(receiver.receive())
    await settle()
    assert not receive.done()
    sender.send_nowait("second")
    assert await asyncio.wait_for(receive, 1) == "second"
    assert sender.statistics().buffered == 0
    sender.close()
    receiver.close()


async def test_items_come_out_in_the_order_they_were_sent_even_through_blocked_senders() -> None:
    sender, receiver = open_channel(1)
    sends = []
    for item in range(5):
        sends.append(asyncio.create_task(sender.send(item)))
        await settle()  # queue the blocked senders in a known order
    received = [await receiver.receive() for _ in range(5)]
    await asyncio.gather(*sends)
    assert received == [0, 1, 2, 3, 4]
    sender.close()
    receiver.close()


# ------------------------------------------------------------------------------- endings


async def test_receive_drains_the_buffer_then_raises_end_of_stream_once_every_sender_closed() -> None:
    sender, receiver = open_channel(5)
    for item in "abc":
        sender.send_nowait(item)
    sender.close()
    assert [await receiver.receive() for _ in range(3)] == ["a", "b", "c"]
    with pytest.raises(EndOfStream):
        await receiver.receive()
    with pytest.raises(EndOfStream):
        receiver.receive_nowait()
    receiver.close()


async def test_iteration_just_ends_when_the_senders_close() -> None:
    sender, receiver = open_channel(5)
    for item in range(3):
        await sender.send(item)
    sender.close()
    assert [item async for item in receiver] == [0, 1, 2]
    receiver.close()


async def test_closing_the_last_sender_wakes_a_blocked_receiver_with_end_of_stream() -> None:
    sender, receiver = open_channel(0)
    receive = asyncio.create_task(receiver.receive())
    iterate = asyncio.create_task(drain(receiver.clone()))
    await settle()
    assert not receive.done()
    assert not iterate.done()
    sender.close()
    with pytest.raises(EndOfStream):
        await asyncio.wait_for(receive, 1)
    assert await asyncio.wait_for(iterate, 1) == []
    receiver.close()


async def test_closing_the_receiver_breaks_a_blocked_send_and_every_later_send() -> None:
    sender, receiver = open_channel(1)
    sender.send_nowait("buffered")
    blocked = asyncio.create_task(sender.send("blocked"))
    await settle()
    assert not blocked.done()

    receiver.close()
    with pytest.raises(BrokenResourceError):
        await asyncio.wait_for(blocked, 1)
    with pytest.raises(BrokenResourceError):
        await sender.send("later")
    with pytest.raises(BrokenResourceError):
        sender.send_nowait("later")
    assert sender.statistics().buffered == 0  # nobody can ever read it
    sender.close()


async def test_using_a_closed_handle_raises_closed_resource_error() -> None:
    sender, receiver = open_channel(3)
    other_sender = sender.clone()  # keeps the channel open
    sender.close()
    with pytest.raises(ClosedResourceError):
        sender.send_nowait(1)
    with pytest.raises(ClosedResourceError):
        await sender.send(1)
    with pytest.raises(ClosedResourceError):
        sender.clone()

    other_receiver = receiver.clone()
    receiver.close()
    with pytest.raises(ClosedResourceError):
        receiver.receive_nowait()
    with pytest.raises(ClosedResourceError):
        await receiver.receive()
    with pytest.raises(ClosedResourceError):
        receiver.clone()

    # The other handles still work.
    other_sender.send_nowait("still open")
    assert await other_receiver.receive() == "still open"
    other_sender.close()
    other_receiver.close()


async def test_closing_a_receiver_wakes_a_receive_blocked_on_it() -> None:
    sender, receiver = open_channel(0)
    receive = asyncio.create_task(receiver.receive())
    await settle()
    receiver.close()
    done, _ = await asyncio.wait({receive}, timeout=0.5)
    try:
        assert receive in done, "the receive is still blocked on a closed receiver"
        with pytest.raises(ClosedResourceError):
            receive.result()
    finally:
        receive.cancel()
        sender.close()
        await asyncio.gather(receive, return_exceptions=True)


# -------------------------------------------------------------------------------- clones


async def test_cloned_senders_fan_in_and_the_channel_ends_only_when_every_clone_closed() -> None:
    first, receiver = open_channel(10)
    second = first.clone()
    third = second.clone()
    assert receiver.statistics().open_senders == 3
    first.send_nowait("from first")
    second.send_nowait("from second")
    third.send_nowait("from third")
    first.close()
    second.close()
    assert [receiver.receive_nowait() for _ in range(3)] == ["from first", "from second", "from third"]

    pending = asyncio.create_task(receiver.receive())
    await settle()
    assert not pending.done()  # one clone is still open: not the end yet
    third.send_nowait("last")
    assert await asyncio.wait_for(pending, 1) == "last"
    third.close()
    with pytest.raises(EndOfStream):
        await receiver.receive()
    receiver.close()


async def test_cloned_receivers_share_the_items_and_sends_break_only_when_all_closed() -> None:
    sender, first = open_channel(10)
    second = first.clone()
    for item in range(4):
        sender.send_nowait(item)
    taken = [first.receive_nowait(), second.receive_nowait(), first.receive_nowait()]
    assert taken == [0, 1, 2]  # each item goes to exactly one receiver
    first.close()
    sender.send_nowait(4)  # one receiver is still open
    assert [second.receive_nowait(), second.receive_nowait()] == [3, 4]
    second.close()
    with pytest.raises(BrokenResourceError):
        sender.send_nowait(5)
    sender.close()


# ------------------------------------------------------------------ closing and contexts


async def test_close_and_aclose_are_idempotent() -> None:
    sender, receiver = open_channel(1)
    sender.close()
    sender.close()
    await sender.aclose()
    await receiver.aclose()
    receiver.close()
    stats = receiver.statistics()
    assert (stats.open_senders, stats.open_receivers) == (0, 0)


async def test_sync_context_managers_close_the_handles() -> None:
    sender, receiver = open_channel(1)
    with sender as entered:
        assert entered is sender
        sender.send_nowait(1)
    with pytest.raises(ClosedResourceError):
        sender.send_nowait(2)
    with receiver as entered_receiver:
        assert entered_receiver is receiver
        assert receiver.receive_nowait() == 1
        with pytest.raises(EndOfStream):
            receiver.receive_nowait()
    with pytest.raises(ClosedResourceError):
        receiver.receive_nowait()


async def test_async_context_managers_close_the_handles_even_on_error() -> None:
    sender, receiver = open_channel(1)

    async def produce() -> None:
        async with sender:
            await sender.send("only")
            raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await produce()
    async with receiver as entered:
        assert entered is receiver
        assert [item async for item in receiver] == ["only"]  # the sender was closed
    assert receiver.statistics().open_receivers == 0


async def test_open_channel_rejects_bad_sizes() -> None:
    for bad in (-1, 1.5, "3", True, None):
        with pytest.raises(ValueError, match="max_buffer"):
            open_channel(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ cancellation


async def test_a_cancelled_receive_does_not_lose_an_item_handed_to_it() -> None:
    sender, receiver = open_channel(0)
    receive = asyncio.create_task(receiver.receive())
    await settle()
    sender.send_nowait("precious")  # handed to the blocked receive ...
    receive.cancel()  # ... which is cancelled before it could return it
    with pytest.raises(asyncio.CancelledError):
        await receive
    assert receiver.receive_nowait() == "precious"
    sender.close()
    receiver.close()


async def test_a_cancelled_receive_leaves_no_waiter_behind() -> None:
    sender, receiver = open_channel(0)
    receive = asyncio.create_task(receiver.receive())
    await settle()
    receive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receive
    assert receiver.statistics().waiting_receivers == 0
    with pytest.raises(WouldBlock):
        sender.send_nowait("nobody is receiving now")
    sender.close()
    receiver.close()


async def test_a_cancelled_send_does_not_deliver_its_item_later() -> None:
    sender, receiver = open_channel(0)
    send = asyncio.create_task(sender.send("withdrawn"))
    await settle()
    send.cancel()
    with pytest.raises(asyncio.CancelledError):
        await send
    sender.close()
    with pytest.raises(EndOfStream):
        receiver.receive_nowait()
    receiver.close()


# --------------------------------------------------------------------- as a flux source


async def test_a_receiver_is_a_flux_source() -> None:
    sender, receiver = open_channel(2)

    async def produce() -> None:
        async with sender:
            for item in range(10):
                await sender.send(item)

    flux = Flux.lift(lambda x: x * 10)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce())
        outputs = await drain(flux.start(receiver))
    assert outputs == [item * 10 for item in range(10)]
    assert receiver.statistics().open_receivers == 0  # the flux closed its source


async def test_stopping_the_flux_closes_the_receiver_so_the_producer_sees_broken() -> None:
    sender, receiver = open_channel(0)
    first_output = asyncio.Event()

    async def produce() -> int:
        sent = 0
        with sender:
            try:
                while True:
                    await sender.send(sent)
                    sent += 1
            except BrokenResourceError:
                return sent

    flux = Flux.lift(lambda x: x)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        producer = tg.create_task(produce())
        async with flux.start(receiver) as out:
            async for _ in out:
                first_output.set()
                break
    assert first_output.is_set()
    assert producer.result() >= 1


# ------------------------------------------------------------------------------ property


@settings(max_examples=60, deadline=None)
@given(
    max_buffer=st.integers(0, 4),
    batches=st.lists(st.lists(st.integers(), max_size=15), min_size=1, max_size=4),
    pauses=st.lists(st.integers(0, 3), min_size=1, max_size=20),
    nowait_first=st.booleans(),
)
async def test_every_item_arrives_exactly_once_and_each_producer_in_order(
    max_buffer: int, batches: list[list[int]], pauses: list[int], nowait_first: bool
) -> None:
    first_sender, receiver = open_channel(max_buffer)
    senders: list[Sender[Any]] = [first_sender] + [first_sender.clone() for _ in batches[1:]]
    turns = iter(range(10**9))

    async def pause() -> None:
        for _ in range(pauses[next(turns) % len(pauses)]):
            await asyncio.sleep(0)

    async def produce(index: int, sender: Sender[Any], batch: list[int]) -> None:
        async with sender:
            for position, value in enumerate(batch):
                item = (index, position, value)
                if nowait_first:
                    try:
                        sender.send_nowait(item)
                    except WouldBlock:
                        await sender.send(item)
                else:
                    await sender.send(item)
                await pause()

    async def consume(receiver: Receiver[Any]) -> list[Any]:
        received = []
        async with receiver:
            async for item in receiver:
                received.append(item)
                await pause()
        return received

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        for index, (sender, batch) in enumerate(zip(senders, batches, strict=True)):
            tg.create_task(produce(index, sender, batch))
        consumer = tg.create_task(consume(receiver))
    received = consumer.result()

    expected = [(index, position, value) for index, batch in enumerate(batches)
                for position, value in enumerate(batch)]
    assert sorted(received) == sorted(expected)
    assert len(received) == len(expected)
    for index in range(len(batches)):
        assert [item for item in received if item[0] == index] == [
            item for item in expected if item[0] == index
        ]
