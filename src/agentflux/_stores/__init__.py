"""Purgatory stores: one small interface, an in-memory and an SQLite implementation."""

from ._base import PurgatoryStore, TokenRecord, store_from_url

__all__ = ["PurgatoryStore", "TokenRecord", "store_from_url"]
