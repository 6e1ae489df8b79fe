"""Stores are found by URL scheme through a table of lazy import paths (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from agentflux import open_purgatory
from agentflux.semaphores.stores import SCHEMES, store_from_url
from agentflux.semaphores.stores._memory import MemoryStore
from agentflux.semaphores.stores._sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (123, "must be a str"),
        ("sqlite:///", "needs a file path"),
        ("sqlite://host/p.db", "three slashes"),
        ("redis://localhost", "unknown purgatory URL"),
        ("memory", "unknown purgatory URL"),
        ("", "unknown purgatory URL"),
    ],
)
def test_a_url_no_store_takes_is_refused_with_what_to_use(url: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_from_url(url)
    with pytest.raises(ValueError, match=message):
        open_purgatory(url)


def test_each_scheme_builds_its_store(tmp_path: Any) -> None:
    assert sorted(SCHEMES) == ["memory", "postgres", "postgresql", "sqlite"]
    assert isinstance(store_from_url("memory://a-name"), MemoryStore)
    store = store_from_url(f"sqlite:///{tmp_path / 'p.db'}?sync=thread")
    assert isinstance(store, SqliteStore)
    assert store.url == f"sqlite:///{tmp_path / 'p.db'}?sync=thread"


def test_a_store_module_is_imported_only_when_a_url_names_it() -> None:
    probe = (
        "import sys; from agentflux.semaphores.stores import store_from_url; "
        "before = 'agentflux.semaphores.stores._sqlite' in sys.modules; "
        "store_from_url('sqlite:///never-opened.db'); "
        "print(before, 'agentflux.semaphores.stores._sqlite' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgres_url_builds_the_postgres_store_and_hides_its_password(scheme: str) -> None:
    from agentflux.semaphores.stores import store_from_url
    from agentflux.semaphores.stores._postgres import PostgresStore

    store = store_from_url(f"{scheme}://alice:s3cret@db.example:5433/agents?sslmode=require")
    assert isinstance(store, PostgresStore)
    assert store.url == f"{scheme}://alice:***@db.example:5433/agents?sslmode=require"
    assert "s3cret" not in store.url
