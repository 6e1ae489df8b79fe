"""The Builder's Workshop: five agents carry a task through phases as a live stream."""

from ._builders import (
    ARCHETYPES,
    Builder,
    WorkRequest,
    create_sage,
    create_scout,
    create_spark,
    create_steady,
    create_sync,
)
from ._dialogue import (
    Completion,
    DialogueEngine,
    DialogueLine,
    Fallback,
    LLMClient,
    LLMError,
    MockLLMClient,
    OpenAICompatibleClient,
    RecordingLLMClient,
    ReplayLLMClient,
)
from ._environment import TaskState, WorkshopEnvironment, create_workshop
from ._flux import PERTURB_ACTIONS, WorkshopFlux, is_approval
from ._model import (
    PHASE_ORDER,
    WorkshopArtifact,
    WorkshopEvent,
    WorkshopEventType,
    WorkshopMetrics,
    WorkshopPhase,
    WorkshopPlan,
    WorkshopTask,
)
from ._polynomial import BUILDER_POLYNOMIAL, BuilderInput, BuilderPhase, BuilderPolynomial
from ._runner import TaskRecord, TaskRunner
from ._snapshot import WorkshopSnapshotError

__all__ = [
    "ARCHETYPES",
    "BUILDER_POLYNOMIAL",
    "Builder",
    "BuilderInput",
    "BuilderPhase",
    "BuilderPolynomial",
    "Completion",
    "DialogueEngine",
    "DialogueLine",
    "Fallback",
    "LLMClient",
    "LLMError",
    "MockLLMClient",
    "OpenAICompatibleClient",
    "PERTURB_ACTIONS",
    "PHASE_ORDER",
    "RecordingLLMClient",
    "ReplayLLMClient",
    "TaskRecord",
    "TaskRunner",
    "TaskState",
    "WorkRequest",
    "WorkshopArtifact",
    "WorkshopEnvironment",
    "WorkshopEvent",
    "WorkshopEventType",
    "WorkshopFlux",
    "WorkshopMetrics",
    "WorkshopPhase",
    "WorkshopPlan",
    "WorkshopSnapshotError",
    "WorkshopTask",
    "create_sage",
    "create_scout",
    "create_spark",
    "create_steady",
    "create_sync",
    "create_workshop",
    "is_approval",
]
