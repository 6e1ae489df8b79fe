"""agentflux: run async agents over continuous event streams."""

from ._core._agent import Agent, Identity, agent
from ._core._errors import (
    AgentfluxError,
    FluxBackpressureError,
    FluxEntropyError,
    FluxError,
    FluxPerturbationError,
    FluxStateError,
    SemaphoreCodecError,
    SemaphoreDecodeError,
    SemaphoreError,
    SemaphoreNotFound,
    SemaphoreNotPending,
    SemaphoreResumeError,
    SemaphoreStoreError,
    SemaphoreTokenError,
)
from .flux._config import FluxConfig, FluxState
from .flux._flux import Flux, FluxAgent, FluxStream
from .flux._metrics import DeadLetter, FluxMetrics
from .flux._pipeline import FluxPipeline, PipelineStream
from .flux._signals import Signal, SignalObserver
from .semaphores._codec import JsonCodec, SignedPickleCodec, StateCodec
from .semaphores._purgatory import Purgatory, PurgatoryChange, open_purgatory
from .semaphores._token import (
    ReentryContext,
    SemaphoreCapable,
    SemaphoreMixin,
    SemaphoreReason,
    SemaphoreStatus,
    SemaphoreToken,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentfluxError",
    "DeadLetter",
    "Flux",
    "FluxAgent",
    "FluxBackpressureError",
    "FluxConfig",
    "FluxEntropyError",
    "FluxError",
    "FluxMetrics",
    "FluxPerturbationError",
    "FluxPipeline",
    "FluxState",
    "FluxStateError",
    "FluxStream",
    "Identity",
    "JsonCodec",
    "PipelineStream",
    "Purgatory",
    "PurgatoryChange",
    "ReentryContext",
    "SemaphoreCapable",
    "SemaphoreCodecError",
    "SemaphoreDecodeError",
    "SemaphoreError",
    "SemaphoreMixin",
    "SemaphoreNotFound",
    "SemaphoreNotPending",
    "SemaphoreReason",
    "SemaphoreResumeError",
    "SemaphoreStatus",
    "SemaphoreStoreError",
    "SemaphoreToken",
    "SemaphoreTokenError",
    "Signal",
    "SignalObserver",
    "SignedPickleCodec",
    "StateCodec",
    "agent",
    "open_purgatory",
]
