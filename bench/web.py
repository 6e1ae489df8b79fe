"""The web API under load: 100 SSE viewers of a 1,000-event run over real HTTP (uvicorn),
10 more not reading; and the resolve endpoint's latency with those viewers connected.

Server and viewers share one process and event loop (this 2-core machine), so each latency
includes the viewers' own parsing: an upper bound on what a viewer elsewhere would see.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import uvicorn

from agentflux import SemaphoreReason, SemaphoreToken, open_purgatory
from agentflux.web import EventLog, create_app

TOKEN = "bench-token"


@dataclass
class WebResults:
    viewers: int
    stalled: int
    events: int
    complete_in_order: int  # reading viewers that got every event in order
    latency_p50_ms: float
    latency_p99_ms: float
    max_queue: int  # the most events any viewer had queued
    dropped: int  # viewers dropped for not reading
    backlog: int
    history: int
    resolves: int
    resolve_p50_ms: float
    resolve_p99_ms: float


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _viewer(http: httpx.AsyncClient, ready: asyncio.Event, count: int, latencies: list[float]) -> bool:
    """Read ``count`` tick events; whether they came complete and in order."""
    seen = 0
    buffer = ""
    async with http.stream("GET", "/api/events") as response:
        ready.set()
        async for chunk in response.aiter_text():
            buffer += chunk
            *frames, buffer = buffer.split("\n\n")
            for frame in frames:
                fields = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
                if fields.get("event") != "tick":
                    continue
                data = json.loads(fields["data"])
                latencies.append(time.time() - data["at"])
                if data["n"] != seen:
                    return False
                seen += 1
                if seen == count:
                    return True
    return False


async def _stalled(port: int) -> asyncio.StreamWriter:
    """A viewer that connects and never reads a byte."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    return writer


async def _run(quick: bool) -> WebResults:
    viewers, stalled, events = (20, 3, 200) if quick else (100, 10, 1000)
    resolves = 50 if quick else 200
    log = EventLog(history=1000, backlog=1000)
    port = _free_port()
    async with open_purgatory("memory://") as purgatory:
        app = create_app(purgatory, token=TOKEN, events=log)
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=1))
        serving = asyncio.ensure_future(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn has no event to wait on
            await asyncio.sleep(0.01)
        limits = httpx.Limits(max_connections=viewers + 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
            readies = [asyncio.Event() for _ in range(viewers)]
            latencies: list[float] = []
            readers = [asyncio.ensure_future(_viewer(http, ready, events, latencies)) for ready in readies]
            writers = [await _stalled(port) for _ in range(stalled)]
            for ready in readies:
                await ready.wait()
            while len(log.viewers) < viewers + stalled:  # noqa: ASYNC110 - the server registers them
                await asyncio.sleep(0.01)
            max_queue = 0
            for n in range(events):
                log.publish("tick", f"tick {n}", n=n, at=time.time())
                max_queue = max(max_queue, max((len(v.queue) for v in log.viewers), default=0))
                await asyncio.sleep(0.001)  # a run that emits up to 1,000 events per second
            outcomes = await asyncio.wait_for(asyncio.gather(*readers), 120)
            # Keep the stalled viewers connected while far more than their sockets can hold is
            # published: once the kernel's buffers are full their queues fill, and they are dropped.
            padding = "x" * 1024
            for n in range(20 * log.backlog):
                log.publish("padding", "padding", pad=padding)
                max_queue = max(max_queue, max((len(v.queue) for v in log.viewers), default=0))
                if n % 100 == 99:
                    await asyncio.sleep(0.001)
                if not log.viewers:
                    break
            dropped = log.dropped_viewers

            # The resolve endpoint, while every viewer (the stalled ones too) stays connected.
            timings = []
            for i in range(resolves):
                token = await purgatory.save(SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt=f"ok {i}?"))
                started = time.perf_counter()
                response = await http.post(
                    f"/api/semaphores/{token.id}/resolve",
                    json={"input": "yes"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                timings.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            for writer in writers:
                writer.close()
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
    ordered = sorted(latencies)
    return WebResults(
        viewers=viewers,
        stalled=stalled,
        events=events,
        complete_in_order=sum(outcomes),
        latency_p50_ms=statistics.median(ordered) * 1000,
        latency_p99_ms=ordered[int(len(ordered) * 0.99) - 1] * 1000,
        max_queue=max_queue,
        dropped=dropped,
        backlog=log.backlog,
        history=len(log.history),
        resolves=resolves,
        resolve_p50_ms=statistics.median(timings) * 1000,
        resolve_p99_ms=sorted(timings)[int(len(timings) * 0.99) - 1] * 1000,
    )


def run(quick: bool = False) -> WebResults:
    """One run in a fresh event loop."""
    return asyncio.run(_run(quick))


def report(results: WebResults) -> list[str]:
    """Markdown lines with the figures and the targets."""
    r = results

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    bounded = r.max_queue <= r.backlog and r.history <= 1000 and r.dropped == r.stalled
    return [
        "| workload | figure | target | result |",
        "|---|---|---|---|",
        f"| {r.viewers} SSE viewers of a {r.events:,}-event run at up to 1,000 events/s "
        f"({r.stalled} more never read) | "
        f"{r.complete_in_order} of {r.viewers} got every event, in order | all | "
        f"{verdict(r.complete_in_order == r.viewers)} |",
        f"| runner-to-viewer latency, p50 / p99 | {r.latency_p50_ms:.1f} / {r.latency_p99_ms:.1f} ms | p99 < 50 ms | "
        f"{verdict(r.latency_p99_ms < 50)} |",
        f"| memory with {r.stalled} viewers not reading (then 20,000 more 1 KiB events) | at most {r.max_queue} "
        f"events queued per viewer (bound {r.backlog}), history {r.history}, {r.dropped} of {r.stalled} dropped | "
        f"bounded | {verdict(bounded)} |",
        f"| resolve endpoint with the viewers connected, p50 / p99 ({r.resolves} calls) | "
        f"{r.resolve_p50_ms:.1f} / {r.resolve_p99_ms:.1f} ms | p99 < 20 ms | {verdict(r.resolve_p99_ms < 20)} |",
    ]


if __name__ == "__main__":
    print("\n".join(report(run(quick="--quick" in sys.argv))))
