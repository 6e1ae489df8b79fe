"""``agentflux worker``: an agent as a flux over a Redis Streams consumer group, at scale."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import click

from .._core._errors import AgentfluxError
from .._core._text import terminal_safe as _clean
from ._common import DEFAULT_STORE, fail

__all__ = ["worker"]


@click.command()
@click.option(
    "--agent", "agent_spec", required=True, help="The agent, as module:attr (the working directory is on the path)."
)
@click.option("--source", required=True, help="Redis URL of the input stream, e.g. redis://127.0.0.1:6379/0.")
@click.option("--stream", required=True, help="Input stream name.")
@click.option("--group", required=True, help="Consumer group (created at the stream's start if missing).")
@click.option("--consumer", default=None, help="This worker's consumer name (default: host-pid).")
@click.option("--sink", required=True, help="Output stream name (on the same Redis).")
@click.option("--store", envvar="AGENTFLUX_STORE", default=DEFAULT_STORE, show_default=True,
              help="Purgatory URL every worker shares, e.g. postgresql://host/db (also $AGENTFLUX_STORE).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=8, show_default=True, help="Calls in flight.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=32, show_default=True, help="Entries per read.")
@click.option("--claim-idle", type=click.FloatRange(min=0.001), default=30.0, show_default=True,
              help="Seconds an entry stays pending with a consumer before a live one claims it.")  # fmt: skip
@click.option("--max-deliveries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Deliveries before an entry goes to the dead-letter stream <stream>:dead.")  # fmt: skip
@click.option("--claim-lease", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds a resumption's claim lasts unless renewed (a killed worker's lapses).")  # fmt: skip
@click.option("--agent-id", default=None, help="Flux id shared by all workers of this agent (default: the --agent).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve this worker's Prometheus metrics on this port.")  # fmt: skip
def worker(agent_spec: str, **options: Any) -> None:
    """Run an agent over a Redis Streams consumer group; SIGTERM drains (stops reading, finishes
    and acknowledges what was read) and exits 0."""
    try:
        from ..semaphores._purgatory import open_purgatory
        from ..sources._redis import from_redis_stream, to_redis_stream
        from ..worker import StreamWorker, load_agent, serve_until_signalled
    except ImportError as exc:  # pragma: no cover - exercised without the extras only
        fail(f"agentflux worker needs the redis extra: {exc}")
        return
    sys.path.insert(0, os.getcwd())
    try:
        agent_ = load_agent(agent_spec)
        consumer = options["consumer"] or f"{socket.gethostname()}-{os.getpid()}"
        source = from_redis_stream(
            options["source"], options["stream"], options["group"], consumer,
            batch=options["batch"], claim_idle=options["claim_idle"], max_deliveries=options["max_deliveries"],
        )  # fmt: skip
        sink = to_redis_stream(options["source"], options["sink"])
        purgatory = open_purgatory(options["store"], claim_lease=options["claim_lease"])
    except (ValueError, ImportError, AgentfluxError) as exc:
        fail(str(exc))
        return

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        metrics_server: Any = None
        try:
            async with purgatory:
                work = StreamWorker(
                    agent_, source, sink, purgatory, agent_id=options["agent_id"] or agent_spec,
                    concurrency=options["concurrency"], buffer_size=max(options["batch"] * 2, 64),
                )  # fmt: skip
                if options["metrics_port"] is not None:
                    metrics_server = _serve_metrics(work, options["metrics_port"])
                click.echo(
                    f"worker {_clean(consumer)}: {_clean(options['stream'])} ({_clean(options['group'])}) -> "
                    f"{_clean(options['sink'])}, tokens in {_clean(purgatory.url)}",
                    err=True,
                )
                stats = await serve_until_signalled(work, stop)
                click.echo(
                    f"worker {_clean(consumer)} stopped: {stats.written} written, {stats.parked} parked, "
                    f"{stats.resumed} resumed, {stats.failed} failed",
                    err=True,
                )
        finally:
            await source.aclose()
            await sink.aclose()
            if metrics_server is not None:
                metrics_server.shutdown()
        return 0

    try:
        sys.exit(asyncio.run(main()))
    except (AgentfluxError, OSError) as exc:
        fail(str(exc))


def _serve_metrics(work: Any, port: int) -> Any:
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from ..exporters.prometheus import FluxCollector
    except ImportError as exc:
        raise AgentfluxError(f"--metrics-port needs the prometheus extra: {exc}") from None
    registry = CollectorRegistry()
    FluxCollector(work.flux, registry=registry)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
