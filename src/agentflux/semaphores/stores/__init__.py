"""Purgatory stores: one small interface (``_base``); in-memory, SQLite and PostgreSQL implementations.

A store is found by its URL's scheme in ``SCHEMES``, a table of lazy import paths: this
interface never imports its implementations, and a backend (with its driver) is imported
only when a URL names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ._base import PurgatoryStore, TokenRecord

__all__ = ["SCHEMES", "PurgatoryStore", "TokenRecord", "store_from_url"]

# URL scheme -> "module:function" that builds the store from the whole URL.
SCHEMES: dict[str, str] = {
    "memory": "agentflux.semaphores.stores._memory:from_url",
    "sqlite": "agentflux.semaphores.stores._sqlite:from_url",
    "postgresql": "agentflux.semaphores.stores._postgres:from_url",
    "postgres": "agentflux.semaphores.stores._postgres:from_url",
}


def store_from_url(url: str) -> PurgatoryStore:
    """The store a URL names: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs.db``,
    ``postgresql://user@host/db`` (the ``postgres`` extra).

    Raises:
        ValueError: an unknown scheme or a malformed URL.
    """
    if not isinstance(url, str):
        raise ValueError(f"a purgatory URL must be a str, got {url!r}")
    scheme, separator, _ = url.partition("://")
    target = SCHEMES.get(scheme) if separator else None
    if target is None:
        raise ValueError(f"unknown purgatory URL {url!r}: use memory://, sqlite:///path.db, postgresql://host/db")
    module, _, name = target.partition(":")
    build: Callable[[str], PurgatoryStore] = getattr(importlib.import_module(module), name)
    return build(url)
