"""``agentflux purgatory``: list, show, resolve and cancel parked semaphores from a terminal."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import click

from .._core._errors import SemaphoreDecodeError
from .._core._text import terminal_safe as _clean
from ..semaphores._json import token_json
from ..semaphores._token import SemaphoreToken
from ._common import answerer, fail, on_store, store_option, warn

__all__ = ["purgatory"]


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _parse_input(text: str, as_text: bool) -> Any:
    """HUMAN_INPUT as JSON if it is JSON (NaN and Infinity are not), else as text."""
    if as_text:
        return text
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text
    except RecursionError:
        fail("HUMAN_INPUT is JSON nested too deeply to handle (pass --text to answer with it as text)")
        raise AssertionError("unreachable") from None  # pragma: no cover


@click.group()
def purgatory() -> None:
    """Inspect and answer semaphores parked by running fluxes."""


@purgatory.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def list_tokens(store: str, as_json: bool) -> None:
    """List tokens waiting for a human (pending and escalated), oldest first."""
    rows = on_store(store, lambda p: p.list_pending_rows())
    bad = [row for row in rows if isinstance(row, SemaphoreDecodeError)]
    if as_json:
        for row in rows:
            if isinstance(row, SemaphoreDecodeError):
                click.echo(json.dumps({"id": row.token_id, "status": row.status, "error": row.problem}))
            else:
                click.echo(json.dumps(token_json(row)))
    elif not rows:
        click.echo("no pending semaphores")
    else:
        for row in rows:
            if isinstance(row, SemaphoreDecodeError):
                click.echo(f"{_clean(row.token_id)}  {_clean(row.status):<9} UNREADABLE")
                click.echo(f"    cannot be decoded here: {_clean(row.problem)}")
            else:
                _echo_token(row)
    if bad:
        # The readable rows are listed; a script must still notice that some are missing.
        ids = ", ".join(row.token_id for row in bad)
        fail(f"{len(bad)} pending token(s) cannot be decoded here: {ids} (the others are listed)")


def _echo_token(token: SemaphoreToken) -> None:
    """Two lines of the listing: the token's header, then its prompt and options."""
    deadline = f"  deadline {token.deadline.isoformat(timespec='seconds')}" if token.deadline else ""
    options = f"  options: {', '.join(_clean(o) for o in token.options)}" if token.options else ""
    click.echo(
        f"{_clean(token.id)}  {token.status.value:<9} {token.severity:<8} {token.reason.value:<17} "
        f"flux={_clean(token.flux_id or '-')}{deadline}"
    )
    click.echo(f"    {_clean(token.prompt)}{options}")


@purgatory.command()
@store_option
@click.argument("token_id")
def show(store: str, token_id: str) -> None:
    """Show every field of one token."""
    token = on_store(store, lambda p: p.get(token_id))
    for key, value in token_json(token).items():
        click.echo(f"{key:>18}: {_clean(json.dumps(value) if not isinstance(value, str) else value)}")


@purgatory.command()
@store_option
@click.argument("token_id")
@click.argument("human_input")
@click.option("--text", "as_text", is_flag=True, help="Take HUMAN_INPUT as a string even if it parses as JSON.")
def resolve(store: str, token_id: str, human_input: str, as_text: bool) -> None:
    """Answer a token; the flux that parked it resumes with HUMAN_INPUT (JSON or text)."""
    answer = _parse_input(human_input, as_text)

    undecodable = on_store(store, lambda p: _committed(p.resolve(token_id, answer, by=answerer())))
    click.echo(f"resolved {_clean(token_id)} with {_clean(json.dumps(answer))}")
    _warn_undecodable(undecodable)


@purgatory.command()
@store_option
@click.argument("token_id")
@click.option("--reason", default=None, help="Why the token is withdrawn (kept as its resolution).")
def cancel(store: str, token_id: str, reason: str | None) -> None:
    """Withdraw a token; its event will not be resumed."""

    undecodable = on_store(store, lambda p: _committed(p.cancel(token_id, reason, by=answerer())))
    click.echo(f"cancelled {_clean(token_id)}")
    _warn_undecodable(undecodable)


async def _committed(change: Awaitable[Any]) -> SemaphoreDecodeError | None:
    """Await a resolve or cancel; a row that cannot be decoded here after the change was
    committed is returned (the change is what matters), any other error raised."""
    try:
        await change
    except SemaphoreDecodeError as exc:
        if not exc.committed:
            raise
        return exc
    return None


def _warn_undecodable(undecodable: SemaphoreDecodeError | None) -> None:
    if undecodable is not None:
        warn(f"the token's row could not be decoded here: {undecodable.problem}")
