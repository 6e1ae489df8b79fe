"""Fixtures for the scale-out tests: a reachable Redis (else skip, or fail in CI), fresh stream names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from servers import REDIS, unavailable


@pytest.fixture
def redis_url() -> str:
    try:
        import redis
    except ImportError as exc:
        unavailable("redis driver", exc)
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis at {REDIS}", exc)
    finally:
        client.close()
    return REDIS


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """Fresh stream and group names for one test, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    streams = {"stream": f"aftest:{tag}:in", "sink": f"aftest:{tag}:out", "group": "workers"}
    yield streams
    try:
        import redis

        client = redis.Redis.from_url(REDIS)
        client.delete(streams["stream"], streams["sink"], f"{streams['stream']}:dead")
        client.close()
    except Exception:  # cleanup only
        pass
