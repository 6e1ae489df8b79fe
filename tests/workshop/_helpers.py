"""Shared helpers for the workshop tests: event collection and a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentflux.workshop import WorkshopEvent, WorkshopEventType, WorkshopFlux, WorkshopMetrics

E = WorkshopEventType

# Which metric counts which event type: the two must always agree.
COUNTED = {
    "phases_completed": E.PHASE_COMPLETED,
    "handoffs": E.HANDOFF,
    "artifacts_produced": E.ARTIFACT_PRODUCED,
    "dialogue_lines": E.DIALOGUE,
    "approvals_requested": E.APPROVAL_REQUESTED,
    "approvals_resolved": E.APPROVAL_RESOLVED,
}


async def collect(stream: AsyncIterator[WorkshopEvent], within: float = 5.0) -> list[WorkshopEvent]:
    """Read a workshop event stream to its end, bounded in time."""
    async with asyncio.timeout(within):
        return [event async for event in stream]


async def run_task(wf: WorkshopFlux, task: Any, within: float = 5.0) -> list[WorkshopEvent]:
    """Start ``task`` on ``wf`` and return every event ``run()`` yields."""
    await wf.start(task)
    return await collect(wf.run(), within)


def types_of(events: Iterable[WorkshopEvent]) -> list[WorkshopEventType]:
    return [event.type for event in events]


def assert_metrics_agree(metrics: WorkshopMetrics, events: list[WorkshopEvent]) -> None:
    """Every counter of the task's metrics equals the count of the events it stands for."""
    counts = Counter(event.type for event in events)
    assert metrics.total_events == len(events)
    for name, kind in COUNTED.items():
        assert getattr(metrics, name) == counts[kind], (name, getattr(metrics, name), counts[kind])
    dialogue = [event for event in events if event.type is E.DIALOGUE]
    assert metrics.dialogue_tokens == sum(int(event.metadata.get("tokens", 0)) for event in dialogue)
    # LLM calls and fallbacks happen for dialogue lines and for artifacts written by the model
    spoken_or_written = [event for event in events if event.type in (E.DIALOGUE, E.ARTIFACT_PRODUCED)]
    assert metrics.total_tokens == sum(int(event.metadata.get("tokens", 0)) for event in spoken_or_written)
    assert metrics.llm_fallbacks == sum(1 for event in spoken_or_written if event.metadata.get("fallback"))
    assert metrics.llm_calls == sum(1 for event in spoken_or_written if event.metadata.get("llm_call"))


def fallbacks(events: list[WorkshopEvent]) -> list[WorkshopEvent]:
    """The dialogue lines and artifacts that fell back to a template, with the reason in metadata."""
    return [e for e in events if e.type in (E.DIALOGUE, E.ARTIFACT_PRODUCED) and e.metadata.get("fallback")]


# ------------------------------------------------------------------ local OpenAI-compatible server


def reply_for(body: dict[str, Any]) -> tuple[str, int, int]:
    """The fake model's deterministic answer to a request: (text, prompt_tokens, completion_tokens)."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    prompt_tokens = 7 + sum(len(m["content"]) for m in body["messages"]) % 13
    completion_tokens = 2 + int(digest[:4], 16) % 9
    if body.get("max_tokens", 0) > 100:
        return f"# Document {digest[:8]}\n\nWritten by the model for this phase.", prompt_tokens, completion_tokens
    return f"Model line {digest[:8]}: let's keep going.", prompt_tokens, completion_tokens


@dataclass
class Exchange:
    """One request the fake server received and what it answered."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Stream:
    """A body the fake server sends chunk by chunk (chunked transfer encoding), as slowly or
    for as long as ``chunks`` yields; it stops when the client hangs up."""

    chunks: Iterable[bytes]
    sent: int = 0


Responder = Callable[[int, dict[str, Any]], tuple[int, Any]]


@dataclass
class FakeLLM:
    """What the fake server does: ``responder(index, body) -> (status, json or raw bytes)``.

    By default every request is answered with ``reply_for(body)`` and the usage it names.
    """

    responder: Responder | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes | Stream]:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        with self.lock:
            index = len(self.exchanges)
            exchange = Exchange(path, headers, body, 200)
            self.exchanges.append(exchange)
        if path != "/v1/chat/completions" or not isinstance(body, dict):
            exchange.status = 404
            return 404, b'{"error": "not found"}'
        if self.responder is not None:
            status, payload = self.responder(index, body)
        else:
            text, prompt, completion = reply_for(body)
            status = 200
            payload = {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            }
        exchange.status = status
        try:  # remember a well-formed answer; malformed ones have no text
            text = payload["choices"][0]["message"]["content"]
            usage = payload.get("usage", {})
            prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        except (TypeError, KeyError, IndexError, ValueError, AttributeError, OverflowError):
            pass
        else:
            if status == 200 and isinstance(text, str):
                exchange.text, exchange.prompt_tokens, exchange.completion_tokens = (
                    text,
                    prompt_tokens,
                    completion_tokens,
                )
        data = payload if isinstance(payload, bytes | Stream) else json.dumps(payload).encode()
        return status, data

    @property
    def ok(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.status == 200 and e.text is not None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per answer: headers and body in the same packet
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, data = self.server.fake.answer(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if isinstance(data, Stream):
            self._stream(data)
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client hung up (it refused a body too large)
            self.close_connection = True

    def _stream(self, stream: Stream) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in stream.chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                stream.sent += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up
            self.close_connection = True

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # the client hung up (it refused a body too large or too slow)
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client hung up before the last bytes were flushed
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM


@contextmanager
def serving(fake: FakeLLM | None = None) -> Iterator[FakeLLM]:
    """Run ``fake`` on 127.0.0.1 (a free port) in a thread; ``fake.url`` is its base URL with /v1."""
    fake = fake or FakeLLM()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    # serve_forever checks for shutdown() between requests every poll_interval seconds
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-llm", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
