"""The five builders: archetypes, personas, template voices and the artifacts they write (SPEC 5)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux import Agent, Flux
from agentflux.workshop import (
    PHASE_ORDER,
    Builder,
    WorkRequest,
    WorkshopArtifact,
    WorkshopPhase,
    WorkshopTask,
    create_sage,
    create_scout,
    create_spark,
    create_steady,
    create_sync,
)

FACTORIES: dict[str, Callable[..., Builder]] = {
    "Scout": create_scout,
    "Sage": create_sage,
    "Spark": create_spark,
    "Steady": create_steady,
    "Sync": create_sync,
}
SPECIALTY = dict(zip(FACTORIES, PHASE_ORDER, strict=True))
TASK = WorkshopTask("Build a caching layer for the payments service")


def builders() -> list[Builder]:
    return [factory() for factory in FACTORIES.values()]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


@pytest.mark.parametrize(("archetype", "factory"), FACTORIES.items())
def test_each_factory_gives_its_archetype_and_specialty(archetype: str, factory: Callable[..., Builder]) -> None:
    builder = factory()
    assert builder.archetype == archetype
    assert builder.name == archetype
    assert builder.specialty is SPECIALTY[archetype]


def test_personalities_voices_and_specialties_are_distinct() -> None:
    team = builders()
    for attribute in ("archetype", "personality", "voice", "specialty"):
        values = [getattr(builder, attribute) for builder in team]
        assert len(set(values)) == 5, (attribute, values)
    for builder in team:
        assert builder.personality.strip()
        assert builder.voice.strip()


def test_custom_names_keep_the_archetype() -> None:
    ada = create_scout("Ada")
    assert (ada.name, ada.archetype, ada.specialty) == ("Ada", "Scout", WorkshopPhase.EXPLORING)
    bob = create_sync(name="Bob")
    assert (bob.name, bob.archetype) == ("Bob", "Sync")
    assert "Ada" in ada.system_prompt()
    assert "Scout" in ada.system_prompt()


def test_the_system_prompt_carries_the_persona() -> None:
    for builder in builders():
        prompt = builder.system_prompt()
        assert builder.personality in prompt
        assert builder.voice in prompt


def test_a_builder_is_an_agent() -> None:
    for builder in builders():
        assert isinstance(builder, Agent)
        assert Flux.is_flux(Flux.lift(builder))


@pytest.mark.parametrize("phase", PHASE_ORDER)
async def test_invoke_writes_the_artifact_of_the_phase(phase: WorkshopPhase) -> None:
    builder = FACTORIES[next(a for a, p in SPECIALTY.items() if p is phase)]()
    artifact = await builder.invoke(WorkRequest(TASK, phase))
    assert isinstance(artifact, WorkshopArtifact)
    assert artifact.phase is phase
    assert artifact.builder == builder.archetype
    assert artifact.title.strip()
    assert len(artifact.content.strip()) > 100
    assert "caching" in artifact.content.lower()  # it is about the task, not boilerplate


async def test_artifacts_differ_per_phase_and_per_task() -> None:
    scout = create_scout()
    contents = [(await scout.invoke(WorkRequest(TASK, phase))).content for phase in PHASE_ORDER]
    assert len(set(contents)) == len(PHASE_ORDER)
    other = WorkshopTask("Design a notification inbox for mobile users")
    for phase in PHASE_ORDER:
        mine = await scout.invoke(WorkRequest(TASK, phase))
        theirs = await scout.invoke(WorkRequest(other, phase))
        assert mine.content != theirs.content


async def test_artifacts_build_on_what_came_before_and_what_was_said() -> None:
    notes = await create_scout().invoke(WorkRequest(TASK, WorkshopPhase.EXPLORING, lines=("Mind the retries!",)))
    assert "Mind the retries!" in notes.content
    design = await create_sage().invoke(WorkRequest(TASK, WorkshopPhase.DESIGNING, previous=(notes,)))
    assert notes.title in design.content


async def test_the_prototype_is_python_that_compiles() -> None:
    artifact = await create_spark().invoke(WorkRequest(TASK, WorkshopPhase.PROTOTYPING))
    blocks = python_blocks(artifact.content)
    assert len(blocks) == 1
    code = compile(blocks[0], "<prototype>", "exec")
    namespace: dict[str, object] = {}
    exec(code, namespace)
    assert "CachingService" in namespace


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .,", min_size=1, max_size=60))
def test_the_prototype_compiles_for_any_task_wording(text: str) -> None:
    if not text.strip():
        return
    builder = create_spark()
    coro = builder.invoke(WorkRequest(WorkshopTask(text), WorkshopPhase.PROTOTYPING))
    try:
        coro.send(None)
    except StopIteration as done:  # invoke never awaits: run it to completion synchronously
        artifact = done.value
    else:  # pragma: no cover - would mean invoke suspended
        coro.close()
        pytest.fail("Builder.invoke suspended")
    (block,) = python_blocks(artifact.content)
    compile(block, "<prototype>", "exec")


def test_template_lines_differ_between_archetypes() -> None:
    team = builders()
    for action in ("start", "continue", "handoff", "complete"):
        seen: dict[str, str] = {}
        for builder in team:
            options = builder.templates[action]
            assert options, (builder.archetype, action)
            for option in options:
                assert option not in seen, f"{builder.archetype} and {seen.get(option)} share {option!r}"
                seen[option] = builder.archetype


def test_line_fills_placeholders_and_avoids_repeats_until_exhausted() -> None:
    scout = create_scout()
    rng = random.Random(3)
    said: list[str] = []
    options = len(scout.templates["continue"])
    for _ in range(options):
        line = scout.line("continue", rng, said, topic="caching")
        assert "{" not in line
        assert "caching" in line
        assert line not in said
        said.append(line)
    # every option was used: repeating is allowed now
    assert scout.line("continue", rng, said, topic="caching") in said


def test_line_is_reproducible_with_the_same_rng_seed() -> None:
    sage = create_sage()
    first = [sage.line("continue", random.Random(9), topic="x") for _ in range(3)]
    second = [sage.line("continue", random.Random(9), topic="x") for _ in range(3)]
    assert first == second
    handoff = sage.line("handoff", random.Random(1), next="Spark", topic="x")
    assert "Spark" in handoff
