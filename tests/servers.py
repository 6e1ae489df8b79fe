"""Reaching the real PostgreSQL and Redis servers the scale-out tests run against.

Tests skip with the reason when a server cannot be reached; with AGENTFLUX_REQUIRE_SERVERS=1
(``.ci/run`` sets it: CI has both servers) they fail instead, so a skipped backend can never
pass CI unnoticed.
"""

from __future__ import annotations

import os
import uuid
from typing import NoReturn

import pytest

POSTGRES = os.environ.get("AGENTFLUX_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
REDIS = os.environ.get("AGENTFLUX_TEST_REDIS", "redis://127.0.0.1:6379/0")
SCHEMA_PREFIX = "aftest_"


def unavailable(server: str, why: object) -> NoReturn:
    reason = f"no {server} reachable ({why}); start it as DEVELOPERS.md says"
    if os.environ.get("AGENTFLUX_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason}, and AGENTFLUX_REQUIRE_SERVERS=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def postgres_schema_url() -> str:
    """The URL of a fresh, empty schema on the test server (dropped at the end of the session)."""
    try:
        import psycopg
    except ImportError as exc:
        unavailable("postgres driver", exc)
    schema = SCHEMA_PREFIX + uuid.uuid4().hex[:16]
    try:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL at " + POSTGRES, str(exc).strip().splitlines()[0])
    return f"{POSTGRES}?options=-csearch_path%3D{schema}"


def drop_test_schemas() -> None:
    """Drop the schemas the tests made (quietly: no server, nothing to drop)."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as conn:
            names = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (SCHEMA_PREFIX + "%",)
            ).fetchall()
            for (name,) in names:
                conn.execute(f"DROP SCHEMA {name} CASCADE")
    except Exception:  # cleanup only; the tests report reachability themselves
        pass
