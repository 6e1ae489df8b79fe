"""``agentflux serve``: the dashboard and HTTP API over a purgatory: workshop tasks, approvals, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from .._core._text import terminal_safe as _clean
from ..semaphores._purgatory import open_purgatory
from ._common import DEFAULT_STORE, fail

if TYPE_CHECKING:
    from ..workshop import LLMClient

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on.")
@click.option(
    "--store",
    envvar="AGENTFLUX_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Purgatory URL (also $AGENTFLUX_STORE): sqlite:///path.db or memory://.",
)
@click.option("--label", default="dashboard", show_default=True, help="Recorded as who answered (resolved_by).")
@click.option(
    "--llm-base-url",
    envvar="AGENTFLUX_LLM_BASE_URL",
    default=None,
    help="OpenAI-compatible endpoint (with /v1) for tasks that ask for LLM dialogue (also $AGENTFLUX_LLM_BASE_URL).",
)
@click.option("--model", envvar="AGENTFLUX_LLM_MODEL", default=None, help="Default model (also $AGENTFLUX_LLM_MODEL).")
@click.option("--api-key", envvar="AGENTFLUX_LLM_API_KEY", default=None, help="API key (also $AGENTFLUX_LLM_API_KEY).")
def serve(
    host: str, port: int, store: str, label: str, llm_base_url: str | None, model: str | None, api_key: str | None
) -> None:
    """Serve the dashboard and the HTTP API: run workshop tasks, answer approvals, read metrics.

    Tasks are kept in the store as they progress: started again on the same store, serve
    lists every past task and carries on those that had not ended. With --llm-base-url and
    --model, a task submitted with "llm": {} has its builders speak through that endpoint
    (the key stays on the server; the task may pick "model", "token_budget", "max_tokens").

    Requests that change state need Authorization: Bearer <token>; the token is
    $AGENTFLUX_TOKEN, or one generated at first start and kept in .agentflux/token.
    """
    try:
        import uvicorn

        from ..web import create_app, load_token
    except ImportError as exc:
        fail(f"agentflux serve needs the web extra ({exc.name} is missing): pip install 'agentflux[web]'")
        return  # pragma: no cover - fail() exits
    try:
        token, generated = load_token(".agentflux")
    except (ValueError, OSError) as exc:
        fail(str(exc))
        return  # pragma: no cover - fail() exits
    try:
        purgatory = open_purgatory(store)
    except ValueError as exc:
        fail(str(exc))
        return  # pragma: no cover - fail() exits
    llm = None
    if llm_base_url or model:
        if not (llm_base_url and model):
            fail("LLM dialogue needs both --llm-base-url and --model (or AGENTFLUX_LLM_BASE_URL and _MODEL)")
        from ..workshop import OpenAICompatibleClient

        def llm(options: Mapping[str, Any]) -> LLMClient:
            return OpenAICompatibleClient(llm_base_url, options.get("model") or model, api_key)

        if urlsplit(llm_base_url).scheme not in ("http", "https"):
            fail(f"--llm-base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {llm_base_url!r}")
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"token: {token}" + ("  (generated, kept in .agentflux/token)" if generated else ""))
    click.echo(f"serving http://{_clean(shown_host)}:{port}/ over {_clean(store)}")
    if llm is not None:
        click.echo(f'LLM dialogue for tasks that ask ("llm": {{}}): {_clean(model)} at {_clean(llm_base_url)}')
    if host in ("127.0.0.1", "localhost", "::1"):
        click.echo("listening on this machine only (pass --host 0.0.0.0 to listen on every interface)")
    else:
        click.echo(f"listening on {_clean(host)}: anyone who can reach it can read; answering needs the token")

    async def main() -> None:
        async with purgatory:
            app = create_app(purgatory, token=token, label=label, llm=llm)
            config: Any = uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
            )
            server = uvicorn.Server(config)
            await server.serve()
            if not server.started:
                raise OSError(f"could not listen on {host}:{port}")

    try:
        asyncio.run(main())
    except SystemExit:  # uvicorn's way of saying it could not bind
        fail(f"could not listen on {host}:{port} (in use, or not an address of this machine)")
    except OSError as exc:
        fail(f"agentflux serve stopped: {exc}")
