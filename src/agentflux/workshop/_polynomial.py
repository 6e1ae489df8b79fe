"""The builder state machine: per state, the inputs it accepts and where each leads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._model import WorkshopPhase

__all__ = ["BUILDER_POLYNOMIAL", "BuilderInput", "BuilderPhase", "BuilderPolynomial"]


class BuilderPhase(enum.StrEnum):
    """What a builder is doing."""

    IDLE = "idle"
    EXPLORING = "exploring"
    DESIGNING = "designing"
    PROTOTYPING = "prototyping"
    REFINING = "refining"
    INTEGRATING = "integrating"
    WAITING = "waiting"  # asked the user something, waiting for the answer
    RESTING = "resting"

    @classmethod
    def working(cls, phase: WorkshopPhase) -> BuilderPhase:
        """The builder state for working on a workshop phase.

        Raises:
            ValueError: the phase is not a working phase.
        """
        try:
            state = cls(phase.value)
        except ValueError:
            raise ValueError(f"{phase.name} is not a working phase") from None
        if state in (cls.IDLE, cls.WAITING, cls.RESTING):
            raise ValueError(f"{phase.name} is not a working phase")
        return state

    @property
    def is_working(self) -> bool:
        """Whether the builder is busy with a phase."""
        return self not in (BuilderPhase.IDLE, BuilderPhase.WAITING, BuilderPhase.RESTING)


class BuilderInput(enum.StrEnum):
    """What can happen to a builder."""

    ASSIGN = "assign"
    CONTINUE = "continue"
    HANDOFF = "handoff"
    COMPLETE = "complete"
    QUERY = "query"
    RESPONSE = "response"
    REST = "rest"
    WAKE = "wake"


_WORKING = tuple(state for state in BuilderPhase if state.is_working)
# ASSIGN and RESPONSE carry a phase: they lead to the working state of that phase.
_TARGETED = frozenset({BuilderInput.ASSIGN, BuilderInput.RESPONSE})


def _table() -> Mapping[BuilderPhase, Mapping[BuilderInput, BuilderPhase | None]]:
    table: dict[BuilderPhase, dict[BuilderInput, BuilderPhase | None]] = {
        BuilderPhase.IDLE: {BuilderInput.ASSIGN: None, BuilderInput.REST: BuilderPhase.RESTING},
        BuilderPhase.WAITING: {BuilderInput.RESPONSE: None},
        BuilderPhase.RESTING: {BuilderInput.WAKE: BuilderPhase.IDLE},
    }
    for state in _WORKING:
        table[state] = {
            BuilderInput.CONTINUE: state,
            BuilderInput.HANDOFF: BuilderPhase.IDLE,
            BuilderInput.COMPLETE: BuilderPhase.IDLE,
            BuilderInput.QUERY: BuilderPhase.WAITING,
            BuilderInput.ASSIGN: None,
        }
    return MappingProxyType({state: MappingProxyType(inputs) for state, inputs in table.items()})


_OUTPUTS = {
    BuilderInput.ASSIGN: "starts {phase}",
    BuilderInput.CONTINUE: "keeps {state}",
    BuilderInput.HANDOFF: "hands off",
    BuilderInput.COMPLETE: "completes the work",
    BuilderInput.QUERY: "asks the user",
    BuilderInput.RESPONSE: "resumes {phase}",
    BuilderInput.REST: "rests",
    BuilderInput.WAKE: "wakes up",
}


@dataclass(frozen=True)
class BuilderPolynomial:
    """A state machine given as, per state, the accepted inputs and their transitions."""

    table: Mapping[BuilderPhase, Mapping[BuilderInput, BuilderPhase | None]]

    def accepts(self, state: BuilderPhase) -> frozenset[BuilderInput]:
        """The inputs ``state`` accepts."""
        return frozenset(self.table[state])

    def transition(
        self, state: BuilderPhase, builder_input: BuilderInput | str | tuple[BuilderInput | str, WorkshopPhase]
    ) -> tuple[BuilderPhase, str]:
        """Apply an input: ``(new_state, output)``.

        ``assign`` and ``response`` name the phase to work on: pass ``(input, phase)``.

        Raises:
            ValueError: ``state`` does not accept the input, or it is no builder input at
                all (the message names both), or a phase is missing or not a working phase.
        """
        try:
            state = BuilderPhase(state)
        except ValueError:
            states = ", ".join(s.value for s in BuilderPhase)
            raise ValueError(f"unknown builder state {state!r}; states are {states}") from None
        raw, phase = _split(state, builder_input)
        try:
            kind = BuilderInput(raw)  # type: ignore[arg-type]  # anything: a ValueError names it
        except ValueError:
            allowed = ", ".join(sorted(i.value for i in BuilderInput))
            raise ValueError(
                f"a builder in state {state.name} does not accept {raw!r}: unknown builder input; inputs are {allowed}"
            ) from None
        accepted = self.table[state]
        if kind not in accepted:
            allowed = ", ".join(sorted(i.value for i in accepted)) or "nothing"
            raise ValueError(f"a builder in state {state.name} does not accept {kind.value!r} (accepts: {allowed})")
        target = accepted[kind]
        if kind in _TARGETED:
            if phase is None:
                raise ValueError(f"{kind.value!r} needs a phase: transition(state, ({kind.value!r}, phase))")
            try:
                phase = WorkshopPhase(phase)
            except ValueError:
                raise ValueError(
                    f"a builder in state {state.name} cannot {kind.value} {phase!r}: not a workshop phase"
                ) from None
            target = BuilderPhase.working(phase)
        assert target is not None
        output = _OUTPUTS[kind].format(phase=phase.value if phase else "", state=state.value)
        return target, output


def _split(state: BuilderPhase, builder_input: object) -> tuple[object, Any]:
    """``(input, phase)`` from what ``transition`` was given: an input, or an input and a phase."""
    if not isinstance(builder_input, tuple):
        return builder_input, None
    if len(builder_input) != 2:
        raise ValueError(
            f"a builder in state {state.name} does not accept {builder_input!r}: "
            "give an input, or (input, phase)"
        )
    raw, phase = builder_input
    return raw, phase


BUILDER_POLYNOMIAL = BuilderPolynomial(_table())
"""The builder state machine every builder follows."""
