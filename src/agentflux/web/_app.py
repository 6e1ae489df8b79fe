"""The HTTP API: watch fluxes, list pending approvals, answer them exactly once.

Reads are open; every request that changes state needs ``Authorization: Bearer <token>``
(compared in constant time): without it, 401 and nothing changes. Bodies are JSON, at
most ``MAX_BODY`` bytes (413 past that, checked while reading, before any parsing).
Answers are recorded with ``resolved_by = "<label> from <client address> (web)"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .._core._errors import SemaphoreCodecError, SemaphoreDecodeError, SemaphoreNotFound, SemaphoreNotPending
from ..flux._flux import FluxAgent
from ..flux._metrics import FluxMetrics
from ..semaphores._json import token_json
from ..semaphores._purgatory import Purgatory
from ..workshop._dialogue import LLMClient
from ..workshop._model import WorkshopEvent, WorkshopPhase
from ..workshop._runner import TaskRecord, TaskRunner
from ._auth import token_matches
from ._events import EventLog

__all__ = ["MAX_BODY", "create_app"]

MAX_BODY = 64 * 1024  # bytes of a request body
# The page runs only its own script: no inline code, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
_MAX_DEPTH = 64  # nesting of a JSON body


class _Refused(Exception):
    """A request answered with an error status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read up to ``MAX_BODY`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _Refused(413, f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks), parse_constant=_no_constant)
    except RecursionError:
        raise _Refused(422, "the body is JSON nested too deeply") from None
    except ValueError as exc:
        raise _Refused(422, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _Refused(422, f"the body must be a JSON object, got {type(body).__name__}")
    if _depth(body) > _MAX_DEPTH:
        raise _Refused(422, f"the body is JSON nested deeper than {_MAX_DEPTH}")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _metrics_json(metrics: FluxMetrics) -> dict[str, Any]:
    """A metrics snapshot as JSON data (its state by name)."""
    return {**dataclasses.asdict(metrics), "state": metrics.state.name}


def create_app(
    purgatory: Purgatory,
    *,
    token: str,
    label: str = "dashboard",
    fluxes: Sequence[FluxAgent[Any, Any]] = (),
    events: EventLog | None = None,
    llm: Callable[[Mapping[str, Any]], LLMClient] | None = None,
) -> Starlette:
    """The API over ``purgatory``, showing the metrics of ``fluxes``.

    ``llm(options)`` makes the LLM client of a task submitted with ``"llm": {...}`` (the
    server's endpoint and key; the options pick the model and budget). Without it, such a
    task is refused with 422.

    While the app runs (its lifespan), every purgatory change and every signal of
    ``fluxes`` is published to ``events`` (a new ``EventLog`` if not given), which
    ``GET /api/events`` streams.

    Raises:
        ValueError: an empty ``token``.
    """
    if not token:
        raise ValueError("the API needs a non-empty token")

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not token_matches(request.headers.get("authorization"), token):
                return _error(401, "this needs Authorization: Bearer <token> (printed by agentflux serve)")
            try:
                return await handler(request)
            except _Refused as refused:
                return _error(refused.status, refused.message)

        return endpoint

    def answerer(request: Request) -> str:
        client = request.client.host if request.client is not None else "unknown address"
        return f"{label} from {client} (web)"[:256]

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_semaphores(request: Request) -> Response:
        rows = []
        for row in await purgatory.list_pending_rows():
            if isinstance(row, SemaphoreDecodeError):
                rows.append({"id": row.token_id, "status": row.status, "error": row.problem})
            else:
                rows.append(token_json(row))
        return JSONResponse(rows)

    async def change(request: Request, verb: str, field: str) -> Response:
        token_id = request.path_params["token_id"]
        body = await _json_body(request)
        unknown = set(body) - {field}
        if unknown:
            raise _Refused(422, f"unknown field(s) {sorted(unknown)}: the body is {{{field!r}: ...}}")
        if verb == "resolve" and field not in body:
            raise _Refused(422, 'the body must be {"input": ...}')
        warning = None
        try:
            if verb == "resolve":
                await purgatory.resolve(token_id, body[field], by=answerer(request))
            else:
                await purgatory.cancel(token_id, body.get(field), by=answerer(request))
        except SemaphoreNotFound:
            raise _Refused(404, f"no semaphore token with id {token_id!r}") from None
        except SemaphoreNotPending as exc:
            raise _Refused(409, str(exc)) from None
        except SemaphoreDecodeError as exc:
            if not exc.committed:
                raise _Refused(422, str(exc)) from None
            warning = f"committed, but the row cannot be decoded here: {exc.problem}"
        except SemaphoreCodecError as exc:
            raise _Refused(422, f"the {field} cannot be stored: {exc}") from None
        if warning is not None:
            done = "resolved" if verb == "resolve" else "cancelled"
            return JSONResponse({"id": token_id, "status": done, "warning": warning})
        return JSONResponse(token_json(await purgatory.get(token_id)))

    async def resolve(request: Request) -> Response:
        return await change(request, "resolve", "input")

    async def cancel(request: Request) -> Response:
        return await change(request, "cancel", "reason")

    async def metrics(request: Request) -> Response:
        snapshots = {flux.id: _metrics_json(flux.metrics()) for flux in fluxes}
        for record in runner.tasks.values():  # each running task's own flux
            inner = record.flux.get_status().get("flux") if record.flux is not None else None
            if inner is not None and record.status in ("running", "waiting"):
                snapshots[f"workshop-{record.id}"] = _metrics_json(inner)
        return JSONResponse(snapshots)

    async def prometheus(request: Request) -> Response:
        try:
            from prometheus_client import CollectorRegistry, generate_latest

            from ..exporters.prometheus import FluxCollector
        except ImportError:
            return _error(501, "GET /metrics needs the prometheus extra: pip install 'agentflux[prometheus]'")
        registry = CollectorRegistry()
        FluxCollector(*fluxes, registry=registry)
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    files = resources.files("agentflux.web") / "static"
    page = (files / "index.html").read_bytes()
    assets = {name: (files / name).read_bytes() for name in _STATIC}
    secure = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=secure)

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return _error(404, f"no static file {name!r}")
        return Response(assets[name], media_type=f"{_STATIC[name]}; charset=utf-8", headers=secure)

    log = events if events is not None else EventLog()

    def task_event(record: TaskRecord, event: WorkshopEvent) -> None:
        log.publish(
            event.type.value,
            event.message,
            task=record.id,
            builder=event.builder,
            phase=event.phase.value,
            artifact=None if event.artifact is None else event.artifact.title,
            status=record.status,
        )

    runner = TaskRunner(purgatory, on_event=task_event, llm=llm)

    async def submit_task(request: Request) -> Response:
        body = await _json_body(request)
        unknown = set(body) - {"description", "seed", "gates", "llm"}
        if unknown:
            raise _Refused(422, f"unknown field(s) {sorted(unknown)}")
        description, seed, gates = body.get("description"), body.get("seed"), body.get("gates", [])
        if not isinstance(description, str):
            raise _Refused(422, '"description" must be a string')
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _Refused(422, '"seed" must be an integer or null')
        if not isinstance(gates, list) or not all(isinstance(gate, str) for gate in gates):
            raise _Refused(422, '"gates" must be a list of phase names, e.g. ["integrating"]')
        try:
            record = await runner.submit(description, seed=seed, gates=gates, llm=body.get("llm"))
        except ValueError as exc:
            raise _Refused(422, str(exc)) from None
        return JSONResponse(record.summary(), status_code=201)

    async def list_tasks(request: Request) -> Response:
        return JSONResponse([record.summary() for record in runner.tasks.values()])

    async def show_task(request: Request) -> Response:
        record = runner.tasks.get(request.path_params["task_id"])
        if record is None:
            return _error(404, f"no task with id {request.path_params['task_id']!r}")
        return JSONResponse(record.detail())

    async def tasks(request: Request) -> Response:
        if request.method == "POST":
            return await guarded(submit_task)(request)
        return await list_tasks(request)

    async def stream_events(request: Request) -> Response:
        return StreamingResponse(
            log.stream(request.headers.get("last-event-id")),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def feed_changes() -> None:
        async for change in purgatory.changes(maxsize=10_000):
            token = change.token
            log.publish(
                f"semaphore_{change.kind}",
                f"semaphore {token.id} {change.kind}: {token.prompt}"[:500],
                token=token_json(token),
            )

    async def feed_signals(flux: FluxAgent[Any, Any]) -> None:
        while True:  # an observer ends with its run's stopped signal: watch the next run too
            async for signal in flux.observe(maxsize=10_000):
                data = {key: value for key, value in signal.data.items() if key != "event"}
                log.publish(signal.kind, f"{flux.id}: {signal.kind}", flux=flux.id, data=data)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(feed_changes(), name="web-events:purgatory")]
        tasks += [loop.create_task(feed_signals(flux), name=f"web-events:{flux.id}") for flux in fluxes]
        try:
            for record in await runner.start():  # tasks kept in the store by an earlier process
                log.publish(
                    "task_restored",
                    f"task {record.id} taken up again ({record.status}): {record.description}"[:500],
                    task=record.id,
                    status=record.status,
                )
            yield
        finally:
            await runner.aclose()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/favicon.ico", no_icon),
            Route("/healthz", healthz),
            Route("/api/semaphores", list_semaphores),
            Route("/api/semaphores/{token_id}/resolve", guarded(resolve), methods=["POST"]),
            Route("/api/semaphores/{token_id}/cancel", guarded(cancel), methods=["POST"]),
            Route("/api/metrics", metrics),
            Route("/metrics", prometheus),
            Route("/openapi.json", openapi),
            Route("/api/events", stream_events),
            Route("/api/tasks", tasks, methods=["GET", "POST"]),
            Route("/api/tasks/{task_id}", show_task),
        ],
        lifespan=lifespan,
    )
    app.state.runner = runner
    return app


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TOKEN = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string"},
        "prompt": {"type": "string"},
        "options": {"type": "array", "items": {"type": "string"}},
        "severity": {"type": "string"},
        "deadline": {"type": ["string", "null"]},
        "flux_id": {"type": ["string", "null"]},
        "resolved_by": {"type": ["string", "null"]},
    },
    "required": ["id", "status"],
}


def _answer(field: str, required: bool) -> dict[str, Any]:
    errors = {
        str(code): {"description": what, "content": {"application/json": {"schema": _ERROR}}}
        for code, what in (
            (401, "no token, or a wrong one: nothing changed"),
            (404, "no such token"),
            (409, "the token is not pending any more (answered or withdrawn first)"),
            (413, f"the body is larger than {MAX_BODY} bytes"),
            (422, "the body is not what is asked for"),
        )
    }
    return {
        "security": [{"bearer": []}],
        "parameters": [{"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {field: {}},
                        "required": [field] if required else [],
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "done", "content": {"application/json": {"schema": _TOKEN}}},
            **errors,
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "agentflux", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/": {"get": {"responses": {"200": {"description": "the dashboard page", "content": {"text/html": {}}}}}},
        "/healthz": {"get": {"responses": {"200": {"description": "the server is up"}}}},
        "/api/semaphores": {
            "get": {
                "responses": {
                    "200": {
                        "description": "pending and escalated tokens, oldest first",
                        "content": {"application/json": {"schema": {"type": "array", "items": _TOKEN}}},
                    }
                }
            }
        },
        "/api/semaphores/{token_id}/resolve": {"post": _answer("input", required=True)},
        "/api/semaphores/{token_id}/cancel": {"post": _answer("reason", required=False)},
        "/api/metrics": {"get": {"responses": {"200": {"description": "every flux's metrics, by flux id"}}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus exposition"}}}},
        "/api/tasks": {
            "get": {"responses": {"200": {"description": "every task in the store, oldest first"}}},
            "post": {
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "description": {"type": "string", "pattern": "\\S", "maxLength": 2000},
                                    "seed": {"type": ["integer", "null"]},
                                    "gates": {
                                        "type": "array",
                                        "items": {"type": "string", "enum": [phase.value for phase in WorkshopPhase]},
                                    },
                                    "llm": {
                                        "type": ["object", "null"],
                                        "properties": {
                                            "model": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
                                            "token_budget": {"type": ["integer", "null"], "minimum": 0},
                                            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 4096},
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                                "required": ["description"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "the task, planned and running"},
                    "401": {"description": "no token, or a wrong one"},
                    "413": {"description": f"the body is larger than {MAX_BODY} bytes"},
                    "422": {"description": "the body is not what is asked for"},
                },
            },
        },
        "/api/tasks/{task_id}": {
            "get": {
                "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the task with its artifacts, metrics and dialogue"},
                    "404": {"description": "no such task"},
                },
            }
        },
        "/api/events": {
            "get": {
                "responses": {"200": {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}}
            }
        },
    },
}
