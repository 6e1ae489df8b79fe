"""``BUILDER_POLYNOMIAL``: per state the inputs it accepts and where each leads (SPEC 5, 10 Workshop)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux.workshop import BUILDER_POLYNOMIAL, BuilderInput, BuilderPhase, WorkshopPhase

In = BuilderInput
S = BuilderPhase

WORKING = (S.EXPLORING, S.DESIGNING, S.PROTOTYPING, S.REFINING, S.INTEGRATING)
WORKING_PHASES = (
    WorkshopPhase.EXPLORING,
    WorkshopPhase.DESIGNING,
    WorkshopPhase.PROTOTYPING,
    WorkshopPhase.REFINING,
    WorkshopPhase.INTEGRATING,
)
# The documented machine, written out independently of the implementation.
ACCEPTS: dict[BuilderPhase, frozenset[BuilderInput]] = {
    S.IDLE: frozenset({In.ASSIGN, In.REST}),
    S.WAITING: frozenset({In.RESPONSE}),
    S.RESTING: frozenset({In.WAKE}),
    **{state: frozenset({In.ASSIGN, In.CONTINUE, In.HANDOFF, In.COMPLETE, In.QUERY}) for state in WORKING},
}
TARGETED = frozenset({In.ASSIGN, In.RESPONSE})


def expected(state: BuilderPhase, builder_input: BuilderInput, phase: WorkshopPhase | None) -> BuilderPhase | None:
    """Where the documented machine goes, or None when the input must be refused."""
    if builder_input not in ACCEPTS[state]:
        return None
    if builder_input in TARGETED:
        if phase not in WORKING_PHASES:
            return None
        return S(phase.value)
    return {
        In.CONTINUE: state,
        In.HANDOFF: S.IDLE,
        In.COMPLETE: S.IDLE,
        In.QUERY: S.WAITING,
        In.REST: S.RESTING,
        In.WAKE: S.IDLE,
    }[builder_input]


def apply(state: BuilderPhase, builder_input: BuilderInput, phase: WorkshopPhase | None) -> tuple[BuilderPhase, str]:
    arg = (builder_input, phase) if phase is not None else builder_input
    return BUILDER_POLYNOMIAL.transition(state, arg)


@pytest.mark.parametrize("state", list(S))
def test_each_state_accepts_exactly_the_documented_inputs(state: BuilderPhase) -> None:
    assert BUILDER_POLYNOMIAL.accepts(state) == ACCEPTS[state]


def test_every_state_has_a_row() -> None:
    assert set(BUILDER_POLYNOMIAL.table) == set(S)


@pytest.mark.parametrize("phase", WORKING_PHASES)
@pytest.mark.parametrize("state", [S.IDLE, *WORKING])
def test_assign_with_a_phase_leads_to_its_working_state(state: BuilderPhase, phase: WorkshopPhase) -> None:
    new_state, output = BUILDER_POLYNOMIAL.transition(state, (In.ASSIGN, phase))
    assert new_state is S(phase.value)
    assert new_state.is_working
    assert phase.value in output


@pytest.mark.parametrize("state", WORKING)
def test_continue_stays_in_the_working_state(state: BuilderPhase) -> None:
    assert BUILDER_POLYNOMIAL.transition(state, In.CONTINUE)[0] is state
    assert BUILDER_POLYNOMIAL.transition(state, "continue")[0] is state  # the string form works too


@pytest.mark.parametrize("builder_input", [In.HANDOFF, In.COMPLETE])
@pytest.mark.parametrize("state", WORKING)
def test_handoff_and_complete_return_to_idle(state: BuilderPhase, builder_input: BuilderInput) -> None:
    assert BUILDER_POLYNOMIAL.transition(state, builder_input)[0] is S.IDLE


@pytest.mark.parametrize("state", WORKING)
def test_query_waits_and_response_resumes_the_phase_given(state: BuilderPhase) -> None:
    waiting, output = BUILDER_POLYNOMIAL.transition(state, In.QUERY)
    assert waiting is S.WAITING
    assert output
    resumed, output = BUILDER_POLYNOMIAL.transition(waiting, (In.RESPONSE, WorkshopPhase.REFINING))
    assert resumed is S.REFINING
    assert "refining" in output


def test_rest_and_wake() -> None:
    assert BUILDER_POLYNOMIAL.transition(S.IDLE, In.REST)[0] is S.RESTING
    assert BUILDER_POLYNOMIAL.transition(S.RESTING, In.WAKE)[0] is S.IDLE


@pytest.mark.parametrize(
    ("state", "builder_input"),
    [(state, builder_input) for state in S for builder_input in In if builder_input not in ACCEPTS[state]],
)
def test_an_input_the_state_does_not_accept_names_both(state: BuilderPhase, builder_input: BuilderInput) -> None:
    arg = (builder_input, WorkshopPhase.DESIGNING) if builder_input in TARGETED else builder_input
    with pytest.raises(ValueError, match="does not accept") as info:
        BUILDER_POLYNOMIAL.transition(state, arg)
    message = str(info.value)
    assert state.name in message
    assert builder_input.value in message


@pytest.mark.parametrize("bad", ["dance", "", "ASSIGN", "Continue"])
def test_an_unknown_input_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown builder input") as info:
        BUILDER_POLYNOMIAL.transition(S.IDLE, bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize(
    "bad",
    ["dance", 42, None, [1], object(), ("dance", WorkshopPhase.DESIGNING), ("assign",), ("assign", "designing", 1)],
    ids=["word", "int", "none", "list", "object", "unknown-in-tuple", "short-tuple", "long-tuple"],
)
def test_something_that_is_not_a_builder_input_names_the_state_too(state: BuilderPhase, bad: Any) -> None:
    with pytest.raises(ValueError, match="does not accept") as info:
        BUILDER_POLYNOMIAL.transition(state, bad)
    assert state.name in str(info.value)


def test_a_phase_that_is_no_workshop_phase_names_the_state() -> None:
    with pytest.raises(ValueError, match="not a workshop phase") as info:
        BUILDER_POLYNOMIAL.transition(S.IDLE, (In.ASSIGN, "juggling"))  # type: ignore[arg-type]
    assert "IDLE" in str(info.value)
    assert "'juggling'" in str(info.value)


def test_state_and_phase_may_be_given_by_value() -> None:
    assert BUILDER_POLYNOMIAL.transition("idle", ("assign", "designing")) == (  # type: ignore[arg-type]
        S.DESIGNING,
        "starts designing",
    )
    with pytest.raises(ValueError, match="unknown builder state 'nope'"):
        BUILDER_POLYNOMIAL.transition("nope", "rest")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "builder_input"), [(S.IDLE, In.ASSIGN), (S.WAITING, In.RESPONSE), (S.DESIGNING, "assign")]
)
def test_assign_and_response_need_a_phase(state: BuilderPhase, builder_input: BuilderInput | str) -> None:
    with pytest.raises(ValueError, match="needs a phase"):
        BUILDER_POLYNOMIAL.transition(state, builder_input)


@pytest.mark.parametrize("phase", [WorkshopPhase.IDLE, WorkshopPhase.COMPLETE])
def test_assign_to_a_phase_that_is_not_working_is_refused(phase: WorkshopPhase) -> None:
    with pytest.raises(ValueError, match="not a working phase"):
        BUILDER_POLYNOMIAL.transition(S.IDLE, (In.ASSIGN, phase))


# ------------------------------------------------------------------------------------ properties

any_phase = st.one_of(st.none(), st.sampled_from(list(WorkshopPhase)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(In)), any_phase), max_size=40))
def test_random_sequences_follow_the_documented_machine(steps: list[tuple[BuilderInput, WorkshopPhase | None]]) -> None:
    """Accepted inputs go where documented and keep a valid state; every other input raises and changes nothing."""
    state = S.IDLE
    for builder_input, phase in steps:
        target = expected(state, builder_input, phase)
        if target is None:
            with pytest.raises(ValueError, match=r"does not accept|needs a phase|not a working phase"):
                apply(state, builder_input, phase)
            continue
        new_state, output = apply(state, builder_input, phase)
        assert new_state is target
        assert isinstance(new_state, BuilderPhase)
        assert isinstance(output, str)
        assert output
        state = new_state


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_valid_sequences_never_reach_an_invalid_state(data: st.DataObject) -> None:
    state = S.IDLE
    for _ in range(data.draw(st.integers(0, 40))):
        builder_input = data.draw(st.sampled_from(sorted(BUILDER_POLYNOMIAL.accepts(state))))
        phase = data.draw(st.sampled_from(WORKING_PHASES)) if builder_input in TARGETED else None
        new_state, _ = apply(state, builder_input, phase)
        assert new_state in BUILDER_POLYNOMIAL.table
        assert new_state is expected(state, builder_input, phase)
        # A working builder is always working on a real workshop phase.
        if new_state.is_working:
            assert WorkshopPhase(new_state.value) in WORKING_PHASES
        state = new_state
