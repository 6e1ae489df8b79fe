"""What every command group shares: the --store option, one-line errors, the exit code."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from .._core._errors import AgentfluxError
from .._core._text import has_surrogates
from .._core._text import terminal_safe as _clean
from ..semaphores._purgatory import Purgatory, open_purgatory

__all__ = ["DEFAULT_STORE", "answerer", "fail", "has_surrogates", "on_store", "store_option", "warn"]

T = TypeVar("T")

DEFAULT_STORE = "sqlite:///.agentflux/purgatory.db"


def fail(message: str, *, code: int = 1) -> None:
    """Print one line on stderr (untrusted text made safe) and exit with ``code``."""
    click.echo(f"agentflux: error: {_clean(message)}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    """Print one warning line on stderr (untrusted text made safe)."""
    click.echo(f"agentflux: warning: {_clean(message)}", err=True)


def on_store(store: str, action: Callable[[Purgatory], Awaitable[T]]) -> T:
    """Open the store, run ``action``, close; library errors become one line and exit 1."""
    if has_surrogates(store):
        fail(f"the store URL {store} is not valid UTF-8 text")
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///") :]).exists():
        fail(f"no purgatory store at {store[len('sqlite:///') :]} (run a flux with it first, or pass --store)")

    async def go() -> T:
        purgatory = open_purgatory(store)
        try:
            return await action(purgatory)
        finally:
            await purgatory.aclose()

    try:
        return asyncio.run(go())
    except (AgentfluxError, ValueError, OSError) as exc:
        fail(str(exc))
        raise AssertionError("unreachable") from exc  # pragma: no cover
    except RecursionError as exc:
        fail(f"a value is nested too deeply to handle ({exc})")
        raise AssertionError("unreachable") from exc  # pragma: no cover


store_option = click.option(
    "--store",
    envvar="AGENTFLUX_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Purgatory URL (also $AGENTFLUX_STORE): sqlite:///path.db or memory://.",
)


def answerer() -> str:
    """Who answers from this terminal, for the token's ``resolved_by``: ``user@host (cli)``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment nor the password database
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown user"
    return f"{user}@{socket.gethostname() or 'unknown host'} (cli)"[:256]
