"""agentflux: run async agents over continuous event streams."""

from ._agent import Agent, Identity, agent
from ._codec import JsonCodec, SignedPickleCodec, StateCodec
from ._config import FluxConfig, FluxState
from ._errors import (
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
from ._flux import Flux, FluxAgent, FluxStream
from ._metrics import DeadLetter, FluxMetrics
from ._pipeline import FluxPipeline, PipelineStream
from ._purgatory import Purgatory, PurgatoryChange, open_purgatory
from ._semaphore import (
    ReentryContext,
    SemaphoreCapable,
    SemaphoreMixin,
    SemaphoreReason,
    SemaphoreStatus,
    SemaphoreToken,
)
from ._signals import Signal, SignalObserver

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
