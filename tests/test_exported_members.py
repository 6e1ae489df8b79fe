"""The public surface: ``agentflux.__all__`` is sorted and complete, SPEC names import."""

from __future__ import annotations

import importlib
import inspect

import pytest

import agentflux

# SPEC section 8 names that belong to the flux part of the library (this scope).
SPEC_NAMES = [
    "Agent",
    "agent",
    "Identity",
    "Flux",
    "FluxAgent",
    "FluxConfig",
    "FluxState",
    "FluxPipeline",
    "FluxError",
    "FluxStateError",
    "FluxEntropyError",
    "FluxBackpressureError",
    "FluxPerturbationError",
    "AgentfluxError",
    "FluxMetrics",
    "DeadLetter",
    "Signal",
    "SemaphoreError",
    "SemaphoreNotFound",
    "SemaphoreNotPending",
    "SemaphoreCodecError",
    "SemaphoreDecodeError",
    "SemaphoreResumeError",
]


def test_all_is_sorted() -> None:
    assert agentflux.__all__ == sorted(agentflux.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(agentflux.__all__) == len(set(agentflux.__all__))


def test_all_is_complete() -> None:
    public = {
        name for name, value in vars(agentflux).items() if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public - set(agentflux.__all__) == set()


def test_every_name_in_all_exists() -> None:
    missing = [name for name in agentflux.__all__ if not hasattr(agentflux, name)]
    assert missing == []


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from agentflux import {name}", namespace)
    assert namespace[name] is getattr(agentflux, name)
    assert name in agentflux.__all__


def test_private_modules_define_what_the_package_exports() -> None:
    # Every exported object is defined in one of the package's own modules.
    for name in agentflux.__all__:
        value = getattr(agentflux, name)
        module = getattr(value, "__module__", None) or type(value).__module__
        assert module.startswith("agentflux"), (name, module)
        importlib.import_module(module)


# ------------------------------------------------------------------ subpackages

SPEC_SUBPACKAGE_NAMES = {
    "agentflux.sources": (
        "from_iterable", "from_stream", "from_events", "periodic", "countdown", "merged", "filtered", "mapped",
        "take", "open_channel", "EventBus", "PheromoneField", "Pheromone", "from_pheromones", "WouldBlock",
        "EndOfStream", "BrokenResourceError", "ClosedResourceError",
    ),
    "agentflux.workshop": (
        "WorkshopEnvironment", "WorkshopFlux", "WorkshopPhase", "WorkshopEvent", "WorkshopEventType",
        "WorkshopTask", "WorkshopPlan", "WorkshopArtifact", "WorkshopMetrics", "create_workshop", "Builder",
        "BuilderPhase", "BUILDER_POLYNOMIAL", "create_scout", "create_sage", "create_spark", "create_steady",
        "create_sync", "DialogueEngine", "OpenAICompatibleClient", "MockLLMClient",
    ),
}


@pytest.mark.parametrize("package", sorted(SPEC_SUBPACKAGE_NAMES))
def test_subpackage_all_is_sorted_complete_and_covers_the_spec(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=str.casefold) or exported == sorted(exported)
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(exported), f"{package}.__all__ differs from its public names"
    missing = [name for name in SPEC_SUBPACKAGE_NAMES[package] if name not in exported]
    assert not missing, f"{package} lacks SPEC names {missing}"
