"""Semaphores: how an agent hands an event to a human without stopping the stream."""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from .._core._errors import SemaphoreTokenError
from ._codec import JsonCodec, StateCodec

__all__ = [
    "SEVERITIES",
    "ReentryContext",
    "SemaphoreCapable",
    "SemaphoreMixin",
    "SemaphoreReason",
    "SemaphoreStatus",
    "SemaphoreToken",
    "Severity",
    "utc_now",
]

B_co = TypeVar("B_co", covariant=True)
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")


# The id of the token whose ``resume`` is running (set by the flux around the call), so that
# ``restore_state`` checks the frozen state was signed for that token.
resuming_token_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentflux_resuming_token_id", default=None
)


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def new_token_id() -> str:
    """A fresh token id: 32 hex digits in the UUID version 7 layout (RFC 9562).

    The first 48 bits are the Unix time in milliseconds and 74 are random, so ids sort
    roughly by creation: a store's id index then grows at its end instead of at random
    pages, which keeps the pages a commit writes few and in cache.
    """
    random_bits = int.from_bytes(os.urandom(10)) >> 6  # 74 bits
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version
        | (random_bits >> 62) << 64  # 12 random bits
        | 0b10 << 62  # variant
        | random_bits & ((1 << 62) - 1)
    )
    return f"{value:032x}"


class SemaphoreReason(enum.StrEnum):
    """Why an agent needs a human."""

    APPROVAL_NEEDED = "approval_needed"
    CONTEXT_REQUIRED = "context_required"
    SENSITIVE_ACTION = "sensitive_action"
    AMBIGUOUS_CHOICE = "ambiguous_choice"
    RESOURCE_DECISION = "resource_decision"
    ERROR_RECOVERY = "error_recovery"


class SemaphoreStatus(enum.StrEnum):
    """Where a token is in its life. Only PENDING and ESCALATED can still be resolved."""

    PENDING = "pending"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    VOIDED = "voided"
    ESCALATED = "escalated"

    @property
    def is_open(self) -> bool:
        """Whether a human can still resolve or cancel the token."""
        return self in (SemaphoreStatus.PENDING, SemaphoreStatus.ESCALATED)


def _check_aware(name: str, moment: datetime | None) -> None:
    if moment is not None and (not isinstance(moment, datetime) or moment.utcoffset() is None):
        raise SemaphoreTokenError(f"SemaphoreToken.{name} must be a timezone-aware datetime, got {moment!r}")


def _check_text(name: str, text: object) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate cannot be stored or shown)."""
    if isinstance(text, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SemaphoreTokenError(
                f"SemaphoreToken.{name} contains a lone surrogate {exc.object[exc.start : exc.end]!r} "
                f"at index {exc.start}: it is not valid text"
            ) from None


@dataclass(frozen=True, kw_only=True, slots=True)
class SemaphoreToken:
    """An event parked for a human, with the agent's frozen state.

    Tokens are immutable: the purgatory returns a new token for every status change.

    Raises:
        SemaphoreTokenError: a naive deadline, an unknown reason, status or severity, a bad
            field type, or text with a lone surrogate (also a ``ValueError``).
    """

    reason: SemaphoreReason
    prompt: str
    frozen_state: bytes = b""
    options: tuple[str, ...] = ()
    severity: Severity = "info"
    original_event: Any = None
    deadline: datetime | None = None
    escalation: str | None = None
    flux_id: str | None = None
    id: str = field(default_factory=new_token_id)
    created_at: datetime = field(default_factory=utc_now)
    status: SemaphoreStatus = SemaphoreStatus.PENDING
    resolution: Any = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None  # who answered, from where: "alice@laptop (cli)"

    def __post_init__(self) -> None:
        if not isinstance(self.reason, SemaphoreReason):
            try:
                object.__setattr__(self, "reason", SemaphoreReason(self.reason))
            except ValueError:
                allowed = ", ".join(r.value for r in SemaphoreReason)
                raise SemaphoreTokenError(
                    f"SemaphoreToken.reason must be one of {allowed}, got {self.reason!r}"
                ) from None
        if not isinstance(self.status, SemaphoreStatus):
            try:
                object.__setattr__(self, "status", SemaphoreStatus(self.status))
            except ValueError:
                allowed = ", ".join(s.value for s in SemaphoreStatus)
                raise SemaphoreTokenError(
                    f"SemaphoreToken.status must be one of {allowed}, got {self.status!r}"
                ) from None
        if not isinstance(self.prompt, str):
            raise SemaphoreTokenError(f"SemaphoreToken.prompt must be a str, got {self.prompt!r}")
        if not isinstance(self.frozen_state, bytes):
            raise SemaphoreTokenError("SemaphoreToken.frozen_state must be bytes (freeze state with a codec)")
        if self.severity not in SEVERITIES:
            raise SemaphoreTokenError(f"SemaphoreToken.severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not isinstance(self.options, tuple):
            object.__setattr__(self, "options", tuple(self.options))
        if not all(isinstance(option, str) for option in self.options):
            raise SemaphoreTokenError(f"SemaphoreToken.options must be strings, got {self.options!r}")
        if not isinstance(self.id, str) or not self.id:
            raise SemaphoreTokenError(f"SemaphoreToken.id must be a non-empty str, got {self.id!r}")
        _check_text("prompt", self.prompt)
        _check_text("id", self.id)
        _check_text("escalation", self.escalation)
        _check_text("flux_id", self.flux_id)
        if self.resolved_by is not None and not isinstance(self.resolved_by, str):
            raise SemaphoreTokenError(f"SemaphoreToken.resolved_by must be a str or None, got {self.resolved_by!r}")
        _check_text("resolved_by", self.resolved_by)
        for option in self.options:
            _check_text("options", option)
        _check_aware("deadline", self.deadline)
        _check_aware("created_at", self.created_at)
        _check_aware("resolved_at", self.resolved_at)


@dataclass(frozen=True, slots=True)
class ReentryContext:
    """What an agent needs to resume: the frozen state and the human's answer."""

    token_id: str
    frozen_state: bytes
    human_input: Any
    original_event: Any


@runtime_checkable
class SemaphoreCapable(Protocol[B_co]):
    """An agent that can resume an event it handed to a human."""

    async def resume(self, frozen_state: bytes, human_input: Any, /) -> B_co:
        """Continue from ``frozen_state`` with the human's answer."""
        ...


@functools.lru_cache(maxsize=64)
def _takes_context(codec_type: type, method: str) -> bool:
    """Whether a codec's ``encode``/``decode`` accepts ``context=`` (codecs written before it
    was part of ``StateCodec`` are called without it, and bind nothing)."""
    try:
        parameters = inspect.signature(getattr(codec_type, method)).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return False
    return any(p.name == "context" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class SemaphoreMixin:
    """Helpers for agents that yield semaphores: freeze state safely, and thaw it.

    ``state_codec`` is a ``JsonCodec`` unless the class sets another (for example a
    ``SignedPickleCodec`` with a secret key). State is frozen for the token that carries
    it (the token id is the codec's ``context``): a signing codec then refuses it when it
    is found in another token.
    """

    state_codec: ClassVar[StateCodec] = JsonCodec()

    def yield_semaphore(
        self,
        reason: SemaphoreReason,
        prompt: str,
        state: Any = None,
        *,
        options: Sequence[str] = (),
        severity: Severity = "info",
        original_event: Any = None,
        deadline: datetime | None = None,
        escalation: str | None = None,
    ) -> SemaphoreToken:
        """Make a token carrying ``state`` frozen with ``state_codec``; return it from ``invoke``.

        Raises:
            SemaphoreCodecError: ``state`` cannot be encoded by the codec.
            SemaphoreTokenError: a naive deadline, an unknown severity, or text with a lone
                surrogate (also a ``ValueError``).
        """
        token_id = new_token_id()
        codec = self.state_codec
        # A codec written before ``context`` was part of StateCodec binds nothing.
        bound = _takes_context(type(codec), "encode")
        frozen = codec.encode(state, context=token_id) if bound else codec.encode(state)
        return SemaphoreToken(
            id=token_id,
            reason=reason,
            prompt=prompt,
            frozen_state=frozen,
            options=tuple(options),
            severity=severity,
            original_event=original_event,
            deadline=deadline,
            escalation=escalation,
        )

    def restore_state(self, frozen_state: bytes, *, token_id: str | None = None) -> Any:
        """Thaw state frozen by ``yield_semaphore`` for the token ``token_id``.

        Inside ``resume`` called by a flux, ``token_id`` defaults to the token being
        resumed; elsewhere pass the id of the token the state came from.

        Raises:
            SemaphoreCodecError: the bytes are not valid for ``state_codec``, or (with a
                signing codec) were frozen for another token.
        """
        if token_id is None:
            token_id = resuming_token_id.get()
        codec = self.state_codec
        if _takes_context(type(codec), "decode"):
            return codec.decode(frozen_state, context=token_id)
        return codec.decode(frozen_state)
