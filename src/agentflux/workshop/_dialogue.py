"""Builder dialogue: a pluggable LLM client, templates as the fallback, token accounting.

``DialogueEngine`` asks its client for a line in the builder's voice. With no client,
or when a call fails or would exceed the token budget, the builder speaks a template
line instead and the line says why (``DialogueLine.fallback``), so a run never crashes
for an LLM failure and the fallback is visible. Tokens are counted from the API's usage;
a count that is missing, negative or beyond what the call could have used is replaced by an
estimate from the text (or clamped), so no answer can defeat the token budget. An answer is
bounded by what ``max_tokens`` allows: a larger body is refused, longer text is truncated
visibly (it ends with ``… [truncated]``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from .._core._errors import AgentfluxError
from ._builders import Builder

__all__ = [
    "Completion",
    "DialogueEngine",
    "DialogueLine",
    "Fallback",
    "LLMClient",
    "LLMError",
    "MockLLMClient",
    "OpenAICompatibleClient",
    "RecordingLLMClient",
    "ReplayLLMClient",
]

Message = dict[str, str]


_RETRY_EVERY = 10  # with the endpoint skipped, every tenth call tries it again

# An answer body may take 64 KiB plus 64 bytes per allowed token, and never more than 8 MiB.
_BODY_BASE = 64 * 1024
_BODY_PER_TOKEN = 64
_BODY_MAX = 8 * 1024 * 1024
# The text of an answer may take 1024 characters plus 32 per allowed token (a token is ~4).
_TEXT_BASE = 1024
_TEXT_PER_TOKEN = 32
TRUNCATED = "… [truncated]"
_QUOTE_CHARS = 200  # the most of a server's error body an error quotes
_REASON_CHARS = 400  # the most a fallback reason says about a failure


class LLMError(AgentfluxError):
    """A language-model call failed (HTTP error, timeout, malformed answer, replay mismatch)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's answer and the tokens the API reported for it."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@runtime_checkable
class LLMClient(Protocol):
    """Anything that can complete a chat."""

    async def complete(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None = None) -> Completion:
        """Complete ``messages``.

        Raises:
            LLMError: the call failed.
        """
        ...


class OpenAICompatibleClient:
    """A client for any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
    llama.cpp server, Ollama).

    ``base_url`` includes ``/v1``. Missing arguments come from the environment:
    ``AGENTFLUX_LLM_BASE_URL`` / ``OPENAI_BASE_URL``, ``AGENTFLUX_LLM_MODEL``,
    ``AGENTFLUX_LLM_API_KEY`` / ``OPENAI_API_KEY``. Timeouts, connection errors, 429 and
    5xx answers are retried ``max_retries`` times with exponential backoff, all within
    ``timeout`` seconds: it is the deadline for the whole call, not for each read.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        *,
        backoff: float = 0.5,
        transport: Any = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - exercised without the extra only
            raise ImportError("OpenAICompatibleClient needs httpx: pip install 'agentflux[llm]'") from exc
        base_url = base_url or os.environ.get("AGENTFLUX_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = model or os.environ.get("AGENTFLUX_LLM_MODEL")
        if not base_url:
            raise ValueError("OpenAICompatibleClient needs base_url (or AGENTFLUX_LLM_BASE_URL), e.g. http://host/v1")
        if not model:
            raise ValueError("OpenAICompatibleClient needs model (or AGENTFLUX_LLM_MODEL)")
        if max_retries < 0 or timeout <= 0:
            raise ValueError("OpenAICompatibleClient needs timeout > 0 and max_retries >= 0")
        try:
            httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"OpenAICompatibleClient: invalid base_url {base_url!r}: {exc}") from None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        key = api_key or os.environ.get("AGENTFLUX_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport)

    async def complete(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None = None) -> Completion:
        """POST the chat and return the first choice with the API's usage.

        ``timeout`` is a deadline for the whole call, retries and backoff included. The
        answer is read as a stream and refused once it is larger than ``max_tokens``
        allows (``answer_limit``); longer text than that is truncated visibly.

        Raises:
            LLMError: after the retries or at the deadline, or at once for a non-retryable
                or oversized answer.
        """
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout
        attempts = 0
        try:
            async with asyncio.timeout_at(deadline):
                delay = self.backoff
                last: Exception | None = None
                for attempt in range(self.max_retries + 1):
                    if attempt:
                        if loop.time() + delay >= deadline:
                            raise LLMError(
                                f"LLM call failed after {attempts} attempts, no time left in the "
                                f"{self.timeout:g} s deadline for another: {_describe(last)}"
                            ) from last
                        await asyncio.sleep(delay)  # backoff between retries
                        delay *= 2
                    attempts += 1
                    outcome = await self._attempt(body, max_tokens)
                    if isinstance(outcome, Completion):
                        return _bounded(outcome, messages, max_tokens)
                    last = outcome
        except TimeoutError:
            elapsed = loop.time() - started
            raise LLMError(
                f"LLM call to {self.base_url} timed out: no complete answer within the {self.timeout:g} s "
                f"deadline for the whole call (gave up after {elapsed:.1f} s, {attempts} attempt(s))"
            ) from None
        raise LLMError(f"LLM call failed after {self.max_retries + 1} attempts: {_describe(last)}") from last

    async def _attempt(self, body: dict[str, Any], max_tokens: int) -> Completion | Exception:
        """One request: the completion, or the retryable failure (others raise ``LLMError``)."""
        httpx = self._httpx
        limit = answer_limit(max_tokens)
        try:
            async with self._client.stream(
                "POST", f"{self.base_url}/chat/completions", json=body, headers={"Accept-Encoding": "identity"}
            ) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    return LLMError(f"{self.base_url} answered {status}")
                if status >= 400:
                    quote = await _read_bounded(response, 4 * _QUOTE_CHARS, truncate=True, errors=httpx.HTTPError)
                    text = (quote or b"").decode(errors="replace")[:_QUOTE_CHARS]
                    raise LLMError(f"{self.base_url} answered {status}: {text}")
                raw = await _read_bounded(response, limit, truncate=False, errors=httpx.HTTPError)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            retryable: Exception = exc
            return retryable
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # not worth retrying
            raise LLMError(f"LLM call to {self.base_url} failed: {_describe(exc)}") from exc
        if raw is None:
            raise LLMError(
                f"{self.base_url} answered more than {limit} bytes, larger than max_tokens={max_tokens} allows"
            )
        return _parse(raw)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()


def answer_limit(max_tokens: int) -> int:
    """The most bytes an answer body may take for ``max_tokens``: 64 KiB + 64 per token, at most 8 MiB."""
    return min(_BODY_MAX, _BODY_BASE + _BODY_PER_TOKEN * max(0, max_tokens))


async def _read_bounded(response: Any, limit: int, *, truncate: bool, errors: type[Exception]) -> bytes | None:
    """The body's first ``limit`` bytes if ``truncate``, else the body, or None when it is larger.

    A declared ``Content-Length`` over the limit is refused before reading; otherwise the
    body is read chunk by chunk and reading stops at the limit, so an endless body is never
    buffered whole. ``errors`` is the HTTP error the reading raises once the response is
    closed under it.
    """
    declared = response.headers.get("content-length")
    if not truncate and declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            if size > limit:
                continue  # what was buffered before the close
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                # Close the connection under the iterator rather than leave the loop: httpx's
                # nested generators then end with the stream, none is left for the GC to close.
                await response.aclose()
    except errors:
        if size <= limit:
            raise
    if size > limit:
        return b"".join(chunks)[:limit] if truncate else None
    return b"".join(chunks)


def _describe(exc: BaseException | None) -> str:
    """An error as text that is never empty (some httpx timeouts have no message)."""
    if exc is None:
        return "no attempt was made"
    if isinstance(exc, LLMError):
        return str(exc) or "LLMError"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _parse(raw: bytes) -> Completion:
    try:
        data = json.loads(raw)
        text = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
        prompt = _reported(usage.get("prompt_tokens"))
        completion = _reported(usage.get("completion_tokens"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LLMError(f"malformed chat completion: {exc!r}") from exc
    if not isinstance(text, str):
        raise LLMError("malformed chat completion: content is not text")
    return Completion(text.strip(), prompt, completion)


def _reported(value: Any) -> int:
    """A usage number as the API gave it; -1 (to be estimated) when missing or not finite.

    Raises:
        ValueError, TypeError: not a number at all.
    """
    if value is None or isinstance(value, bool):
        return -1
    try:
        return int(value)
    except OverflowError:  # inf
        return -1


def _estimate(text: str) -> int:
    """Tokens in ``text`` as a tokenizer would roughly count them (one per four characters)."""
    return math.ceil(len(text) / 4)


def _count(reported: int, estimate: int, ceiling: int) -> int:
    """A reported count if it is sane: negative becomes the estimate, beyond the ceiling is clamped."""
    if reported < 0:
        return estimate
    return min(reported, max(ceiling, estimate))


def _bounded(completion: Completion, messages: Sequence[Message], max_tokens: int) -> Completion:
    """``completion`` with its text within what ``max_tokens`` allows and its usage made sane.

    Longer text is cut and ends with ``TRUNCATED``. A prompt count is at most four per
    character of the prompt plus 64 per message (no tokenizer makes more); a completion
    count at most ``max_tokens`` (or the estimate of text beyond that).
    """
    text = completion.text
    room = _TEXT_BASE + _TEXT_PER_TOKEN * max(0, max_tokens)
    if len(text) > room:
        text = text[: room - len(TRUNCATED)] + TRUNCATED
    chars = sum(len(m.get("content", "")) for m in messages)
    prompt = _count(completion.prompt_tokens, math.ceil(chars / 4) + 4 * len(messages), 4 * chars + 64 * len(messages))
    done = _count(completion.completion_tokens, _estimate(text), max(0, max_tokens))
    if (text, prompt, done) == (completion.text, completion.prompt_tokens, completion.completion_tokens):
        return completion
    return Completion(text, prompt, done)


class MockLLMClient:
    """A client for tests: cycles through ``responses`` or calls ``responses(messages)``.

    Token counts are reported as words, like a tiny tokenizer would.
    """

    def __init__(self, responses: Sequence[str] | Callable[[Sequence[Message]], str] | None = None) -> None:
        self._responses = responses if responses is not None else ("Sounds good, let's keep going.",)
        self._index = 0
        self.calls: list[list[Message]] = []

    async def complete(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None = None) -> Completion:
        """Answer with the next canned response."""
        self.calls.append(list(messages))
        if callable(self._responses):
            text = self._responses(messages)
        else:
            text = self._responses[self._index % len(self._responses)]
            self._index += 1
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return Completion(text, prompt_tokens, len(text.split()))


def _request_key(messages: Sequence[Message], max_tokens: int) -> str:
    payload = json.dumps([list(messages), max_tokens], sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


class RecordingLLMClient:
    """Passes calls to ``inner`` and appends each request and answer to a JSON-lines file."""

    def __init__(self, inner: LLMClient, path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    async def aclose(self) -> None:
        """Close the inner client if it has connections."""
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()

    async def complete(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None = None) -> Completion:
        """Call the inner client and record the exchange (failures are recorded too)."""
        record: dict[str, Any] = {"key": _request_key(messages, max_tokens)}
        try:
            completion = await self.inner.complete(messages, max_tokens=max_tokens, seed=seed)
        except LLMError as exc:
            record["error"] = str(exc)
            self._append(record)
            raise
        record.update(
            text=completion.text, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
        )
        self._append(record)
        return completion

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class ReplayLLMClient:
    """Answers from a file written by ``RecordingLLMClient``, in order.

    A request that differs from the recorded one (the run diverged) raises ``LLMError``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            self._records = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read LLM recording {path}: {exc}") from exc
        self._index = 0

    async def complete(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None = None) -> Completion:
        """The next recorded answer (or recorded failure)."""
        if self._index >= len(self._records):
            raise LLMError("the LLM recording has no more answers")
        record = self._records[self._index]
        self._index += 1
        if record.get("key") != _request_key(messages, max_tokens):
            raise LLMError(f"replay diverged at call {self._index}: the request differs from the recording")
        if "error" in record:
            raise LLMError(record["error"])
        return Completion(record["text"], int(record["prompt_tokens"]), int(record["completion_tokens"]))


@dataclass(frozen=True, slots=True)
class DialogueLine:
    """What a builder said, and how: ``source`` is llm or template."""

    text: str
    source: Literal["llm", "template"]
    tokens: int = 0
    fallback: str | None = None
    """Why a template was used although a client is configured (error or budget)."""
    called: bool = False
    """Whether the LLM was actually called for this line."""


@dataclass(frozen=True, slots=True)
class Fallback:
    """Why there is no completion, and whether a call was made (and failed) at all."""

    reason: str
    called: bool


class DialogueEngine:
    """Gives builders their voice: the LLM when configured and within budget, templates otherwise.

    After ``max_consecutive_failures`` failed calls in a row the endpoint is skipped (every
    tenth line tries it again), so a run against a dead server does not wait out every retry.

    Raises:
        ValueError: a negative ``token_budget``.
    """

    def __init__(
        self,
        client: LLMClient | None = None,
        token_budget: int | None = None,
        *,
        max_tokens: int = 80,
        max_consecutive_failures: int = 3,
    ) -> None:
        if token_budget is not None and token_budget < 0:
            raise ValueError(f"DialogueEngine(token_budget) must be >= 0 or None, got {token_budget!r}")
        self.client = client
        self.token_budget = token_budget
        self.max_tokens = max_tokens
        self.tokens_used = 0
        self.calls = 0
        self.fallbacks = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        self._skipped = 0

    def _refusal(self, max_tokens: int) -> str | None:
        if self.token_budget is not None and self.tokens_used + max_tokens > self.token_budget:
            return f"token budget: {self.tokens_used} of {self.token_budget} used, a call may take {max_tokens}"
        return None

    async def ask(self, messages: Sequence[Message], *, max_tokens: int, seed: int | None) -> Completion | Fallback:
        """Call the client within the budget: the completion, or why there is none."""
        if self.client is None:
            return Fallback("no client", called=False)
        refusal = self._refusal(max_tokens)
        if refusal is not None:
            self.fallbacks += 1
            return Fallback(refusal, called=False)
        if self.consecutive_failures >= self.max_consecutive_failures:
            # The endpoint looks down: skip it, but try again every so often.
            self._skipped += 1
            if self._skipped % _RETRY_EVERY:
                self.fallbacks += 1
                return Fallback(f"LLM skipped after {self.consecutive_failures} failed calls in a row", called=False)
        self.calls += 1
        try:
            completion = await self.client.complete(messages, max_tokens=max_tokens, seed=seed)
        except Exception as exc:  # any client failure becomes a visible fallback, never a crash
            self.fallbacks += 1
            self.consecutive_failures += 1
            reason = _describe(exc)
            if len(reason) > _REASON_CHARS:
                reason = reason[: _REASON_CHARS - len(TRUNCATED)] + TRUNCATED
            return Fallback(f"LLM error: {reason}", called=True)
        self.consecutive_failures = 0
        self._skipped = 0
        completion = _bounded(completion, messages, max_tokens)  # whatever the client, sane text and usage
        self.tokens_used += completion.total_tokens
        return completion

    async def speak(
        self, builder: Builder, action: str, context: str, rng: random.Random, avoid: Sequence[str] = (), **values: Any
    ) -> DialogueLine:
        """One line from ``builder`` for ``action`` (start, continue, handoff, complete, ...)."""
        template = builder.line(action, rng, avoid, **values)
        if self.client is None:
            return DialogueLine(template, "template")
        messages = [
            {"role": "system", "content": builder.system_prompt()},
            {"role": "user", "content": f"{context}\nSay what you say now ({action}). A line like: {template}"},
        ]
        answer = await self.ask(messages, max_tokens=self.max_tokens, seed=rng.randrange(2**31))
        if isinstance(answer, Fallback):
            return DialogueLine(template, "template", fallback=answer.reason, called=answer.called)
        if not answer.text:
            self.fallbacks += 1
            return DialogueLine(template, "template", answer.total_tokens, "LLM returned no text", called=True)
        return DialogueLine(answer.text, "llm", answer.total_tokens, called=True)
