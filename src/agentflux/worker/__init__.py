"""Scale-out workers: an agent as a flux over a Redis Streams consumer group (extras ``redis``,
``postgres``); run by ``agentflux worker``."""

from ._worker import StreamWorker, WorkerStats, load_agent, serve_until_signalled

__all__ = ["StreamWorker", "WorkerStats", "load_agent", "serve_until_signalled"]
