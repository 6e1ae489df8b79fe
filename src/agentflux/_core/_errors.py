"""The library's exceptions, one hierarchy under one root.

::

    AgentfluxError
    ├── FluxError
    │   ├── FluxStateError          operation not allowed in the flux's current state
    │   ├── FluxEntropyError        the event budget ran out (the flux collapsed)
    │   ├── FluxBackpressureError   a bounded lane refused an item
    │   └── FluxPerturbationError   a perturbation ended before it was processed
    ├── SemaphoreError
    │   ├── SemaphoreNotFound       no token with that id (also a LookupError)
    │   ├── SemaphoreNotPending     resolve/cancel of a token that is not pending
    │   ├── SemaphoreCodecError     state or a value that cannot be (safely) encoded or decoded
    │   │   └── SemaphoreDecodeError  a stored row that cannot be read back into a token here
    │   ├── SemaphoreResumeError    the agent cannot resume a token
    │   ├── SemaphoreStoreError     the purgatory's storage failed (I/O, schema, closed)
    │   └── SemaphoreTokenError     a token field is invalid (also a ValueError)
    └── ChannelError
        ├── WouldBlock              a non-blocking operation could not complete now
        ├── EndOfStream             every sender is closed and the buffer is empty
        ├── BrokenResourceError     the other side of the channel is closed
        └── ClosedResourceError     this handle was closed by its owner

Errors raised by the agent itself are never wrapped: the consumer of a stream with
``on_error="raise"`` and the caller of a perturbation see the agent's own exception.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentfluxError",
    "BrokenResourceError",
    "ChannelError",
    "ClosedResourceError",
    "EndOfStream",
    "FluxBackpressureError",
    "FluxEntropyError",
    "FluxError",
    "FluxPerturbationError",
    "FluxStateError",
    "SemaphoreCodecError",
    "SemaphoreDecodeError",
    "SemaphoreError",
    "SemaphoreNotFound",
    "SemaphoreNotPending",
    "SemaphoreResumeError",
    "SemaphoreStoreError",
    "SemaphoreTokenError",
    "WouldBlock",
]


class AgentfluxError(Exception):
    """Root of every error this library raises on its own account."""


class FluxError(AgentfluxError):
    """Base of errors raised by a flux."""


class FluxStateError(FluxError):
    """An operation is not allowed in the flux's current state.

    Attributes:
        state: name of the state the flux was in.
        operation: the operation that was refused.
    """

    def __init__(self, state: str, operation: str, hint: str = "") -> None:
        self.state = state
        self.operation = operation
        message = f"cannot {operation} a flux in state {state}"
        super().__init__(f"{message}: {hint}" if hint else message)


class FluxEntropyError(FluxError):
    """The flux's event budget is exhausted; it collapsed and needs ``reset()``."""


class FluxBackpressureError(FluxError):
    """A bounded lane refused an item instead of waiting for room."""


class FluxPerturbationError(FluxError):
    """A perturbation could not be processed because the flux stopped or failed first."""


class SemaphoreError(AgentfluxError):
    """Base of errors about semaphore tokens and the purgatory."""


class SemaphoreNotFound(SemaphoreError, LookupError):
    """No token with the given id exists."""


class SemaphoreNotPending(SemaphoreError):
    """The token was already resolved, cancelled or voided."""


class SemaphoreCodecError(SemaphoreError):
    """State or a value cannot be encoded or decoded: unsigned, tampered with, frozen for
    another token, malformed, or of an unknown type. The message names what was wrong."""


class SemaphoreDecodeError(SemaphoreCodecError):
    """A stored row cannot be read back into a token here (a type registered only in
    another process, a malformed field).

    ``token_id`` and ``status`` are the row's; ``problem`` says what is wrong; ``committed``
    is true when the operation that raised it (a resolve or cancel) was committed anyway.
    """

    def __init__(self, token_id: str, status: str, problem: str, *, committed: bool = False) -> None:
        self.token_id = token_id
        self.status = status
        self.problem = problem
        self.committed = committed
        done = f"; the token is {status} all the same" if committed else ""
        super().__init__(f"token {token_id} ({status}) cannot be decoded here: {problem}{done}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_decode_error, (self.token_id, self.status, self.problem, self.committed))


def _decode_error(token_id: str, status: str, problem: str, committed: bool) -> SemaphoreDecodeError:
    return SemaphoreDecodeError(token_id, status, problem, committed=committed)


class SemaphoreResumeError(SemaphoreError):
    """The agent cannot resume from a token (for example it has no ``resume``)."""


class SemaphoreStoreError(SemaphoreError):
    """The purgatory's storage failed; the message names the store and the cause."""


class SemaphoreTokenError(SemaphoreError, ValueError):
    """A token field is invalid: a wrong type, an unknown value, a naive datetime, or text
    that is not valid Unicode (a lone surrogate cannot be stored or shown)."""


class ChannelError(AgentfluxError):
    """Base of errors raised by channels and other in-memory streams."""


class WouldBlock(ChannelError):
    """A ``*_nowait`` operation would have had to wait."""


class EndOfStream(ChannelError):
    """Every sender is closed and nothing is left to receive."""


class BrokenResourceError(ChannelError):
    """The other side of the channel is closed, so the operation can never succeed."""


class ClosedResourceError(ChannelError):
    """The handle was closed by its owner and cannot be used any more."""
