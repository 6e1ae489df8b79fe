"""The error hierarchy: one root, typed branches, and a docstring that draws the tree."""

from __future__ import annotations

import inspect

import pytest

import agentflux
from agentflux import (
    AgentfluxError,
    Flux,
    FluxBackpressureError,
    FluxEntropyError,
    FluxError,
    FluxPerturbationError,
    FluxStateError,
    SemaphoreCodecError,
    SemaphoreError,
    SemaphoreNotFound,
    SemaphoreNotPending,
    SemaphoreResumeError,
    SemaphoreStoreError,
    SemaphoreTokenError,
)
from agentflux._core import _errors as errors_module
from conftest import TrackedSource

FLUX_ERRORS = [FluxStateError, FluxEntropyError, FluxBackpressureError, FluxPerturbationError]
SEMAPHORE_ERRORS = [
    SemaphoreNotFound,
    SemaphoreNotPending,
    SemaphoreCodecError,
    SemaphoreResumeError,
    SemaphoreStoreError,
    SemaphoreTokenError,
]


def test_a_token_error_is_also_a_value_error() -> None:
    assert issubclass(SemaphoreTokenError, ValueError)


def module_error_classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(errors_module).values()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors_module.__name__
    ]


def test_root_is_an_exception() -> None:
    assert issubclass(AgentfluxError, Exception)
    assert issubclass(FluxError, AgentfluxError)
    assert issubclass(SemaphoreError, AgentfluxError)


@pytest.mark.parametrize("cls", FLUX_ERRORS)
def test_flux_errors_derive_from_flux_error(cls: type[Exception]) -> None:
    assert issubclass(cls, FluxError)
    assert issubclass(cls, AgentfluxError)
    assert not issubclass(cls, SemaphoreError)


@pytest.mark.parametrize("cls", SEMAPHORE_ERRORS)
def test_semaphore_errors_derive_from_semaphore_error(cls: type[Exception]) -> None:
    assert issubclass(cls, SemaphoreError)
    assert issubclass(cls, AgentfluxError)
    assert not issubclass(cls, FluxError)


def test_every_error_in_the_package_derives_from_the_root() -> None:
    classes = module_error_classes()
    assert len(classes) >= 1 + 2 + len(FLUX_ERRORS) + len(SEMAPHORE_ERRORS)
    for cls in classes:
        assert issubclass(cls, AgentfluxError), cls
    exported = [
        getattr(agentflux, name)
        for name in agentflux.__all__
        if inspect.isclass(getattr(agentflux, name)) and issubclass(getattr(agentflux, name), BaseException)
    ]
    for cls in exported:
        assert issubclass(cls, AgentfluxError), cls


def test_semaphore_not_found_is_a_lookup_error() -> None:
    assert issubclass(SemaphoreNotFound, LookupError)
    with pytest.raises(LookupError):
        raise SemaphoreNotFound("token-1")


def test_flux_state_error_names_state_and_operation() -> None:
    error = FluxStateError("COLLAPSED", "start")
    assert error.state == "COLLAPSED"
    assert error.operation == "start"
    assert "COLLAPSED" in str(error)
    assert "start" in str(error)


async def test_flux_state_error_raised_by_a_flux_names_state_and_operation() -> None:
    flux = Flux.lift(lambda x: x)
    source = TrackedSource(gate=None, items=None, delay=0.001)
    stream = flux.start(source)
    try:
        with pytest.raises(FluxStateError) as excinfo:
            flux.start([1])
        assert excinfo.value.state == "FLOWING"
        assert excinfo.value.operation == "start"
        assert "FLOWING" in str(excinfo.value)
        assert "start" in str(excinfo.value)
    finally:
        await stream.aclose()


def test_errors_docstring_draws_every_class() -> None:
    doc = errors_module.__doc__
    assert doc is not None
    for cls in module_error_classes():
        assert cls.__name__ in doc, f"{cls.__name__} missing from the errors tree"


def test_errors_docstring_draws_the_tree_in_order() -> None:
    # Each child appears below (after) its parent in the drawing.
    doc = errors_module.__doc__
    assert doc is not None
    for cls in module_error_classes():
        for base in cls.__mro__[1:]:
            if base.__module__ == errors_module.__name__:
                assert doc.index(base.__name__) < doc.index(cls.__name__), (base, cls)


def test_a_decode_error_names_the_row_and_survives_pickling() -> None:
    import pickle

    from agentflux import SemaphoreCodecError as Codec
    from agentflux import SemaphoreDecodeError

    error = SemaphoreDecodeError("t1", "resolved", "unknown type 'x'", committed=True)
    assert isinstance(error, Codec)
    assert "t1" in str(error)
    assert "unknown type 'x'" in str(error)
    assert "resolved all the same" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.token_id, copy.status, copy.problem, copy.committed) == ("t1", "resolved", "unknown type 'x'", True)
