"""Server-Sent Events: one writer broadcasts numbered events to any number of viewers.

::

    publish() ──> history (the last ``history`` events, for late and returning viewers)
              └─> each viewer's queue (at most ``backlog`` events) ──> its SSE stream

Publishing never waits for a viewer. A viewer whose queue is full is dropped (its stream
ends); when it reconnects with ``Last-Event-ID`` it gets what it missed from the history,
or first a ``gap`` event saying how many events it lost if the history no longer holds
them. A viewer waits on a future (no polling); an idle stream carries a heartbeat comment
every ``heartbeat`` seconds so that proxies keep it open.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["EventLog"]


class _Viewer:
    __slots__ = ("dropped", "queue", "waiter")

    def __init__(self) -> None:
        self.queue: deque[tuple[int, str, str]] = deque()
        self.waiter: asyncio.Future[bool] | None = None
        self.dropped = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)


def _beat(waiter: asyncio.Future[bool]) -> None:
    """The heartbeat's timer: nothing was published for a while."""
    if not waiter.done():
        waiter.set_result(True)


class EventLog:
    """Numbered events with a bounded history, fanned out to bounded viewers.

    Raises:
        ValueError: a bound below 1 or a heartbeat that is not positive.
    """

    def __init__(self, *, history: int = 1000, backlog: int = 1000, heartbeat: float = 15.0) -> None:
        if history < 1 or backlog < 1 or not heartbeat > 0:
            raise ValueError(
                f"history and backlog must be >= 1 and heartbeat > 0, got {history}, {backlog}, {heartbeat}"
            )
        self.history: deque[tuple[int, str, str]] = deque(maxlen=history)
        self.backlog = backlog
        self.heartbeat = heartbeat
        self.last_id = 0
        self.viewers: set[_Viewer] = set()
        self.dropped_viewers = 0

    def publish(self, kind: str, message: str, task: str | None = None, **fields: Any) -> int:
        """Add an event (``type`` = ``kind``) and hand it to every viewer; returns its id."""
        self.last_id += 1
        data = json.dumps({"type": kind, "task": task, "message": message, **fields}, default=repr)
        entry = (self.last_id, kind, data)
        self.history.append(entry)
        for viewer in list(self.viewers):
            if len(viewer.queue) >= self.backlog:  # it stopped reading: let it go, not the runner
                viewer.dropped = True
                self.viewers.discard(viewer)
                self.dropped_viewers += 1
            else:
                viewer.queue.append(entry)
            viewer.wake()
        return self.last_id

    def _missed(self, after: int) -> list[tuple[int, str, str]]:
        """What a viewer that saw events up to ``after`` missed: a gap event first if the
        history no longer holds all of it."""
        entries = [entry for entry in self.history if entry[0] > after]
        oldest = entries[0][0] if entries else self.last_id + 1
        lost = oldest - after - 1
        if lost > 0:
            gap = json.dumps(
                {
                    "type": "gap",
                    "task": None,
                    "message": f"{lost} event(s) after {after} are no longer kept: reload what you show",
                    "missed": lost,
                }
            )
            entries.insert(0, (oldest - 1, "gap", gap))
        return entries

    async def stream(self, last_event_id: str | None) -> AsyncIterator[str]:
        """The SSE text of one viewer: what it missed since ``last_event_id`` (everything
        kept, for a new viewer), then every new event, with heartbeats while idle."""
        after = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else None
        viewer = _Viewer()
        if after is not None and after > self.last_id:
            after = None  # an id from before a restart of the server: start over
        viewer.queue.extend(self.history if after is None else self._missed(after))
        self.viewers.add(viewer)
        loop = asyncio.get_running_loop()
        try:
            yield f"retry: 1000\n: {len(viewer.queue)} event(s) to catch up\n\n"
            while True:
                while viewer.queue:
                    event_id, kind, data = viewer.queue.popleft()
                    yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
                if viewer.dropped:
                    return  # too slow: reconnecting with Last-Event-ID shows the gap
                waiter = viewer.waiter = loop.create_future()
                timer = loop.call_later(self.heartbeat, _beat, waiter)
                try:
                    idle = await waiter  # woken by publish(), or by the heartbeat's timer
                finally:
                    timer.cancel()
                    viewer.waiter = None
                if idle:
                    yield ": heartbeat\n\n"
        finally:
            self.viewers.discard(viewer)
