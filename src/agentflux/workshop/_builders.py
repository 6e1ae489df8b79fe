"""The five builders: personalities, voices, dialogue templates and the artifacts they write."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core._agent import AgentBase
from ._model import WorkshopArtifact, WorkshopPhase, WorkshopTask

__all__ = [
    "ARCHETYPES",
    "Builder",
    "WorkRequest",
    "create_sage",
    "create_scout",
    "create_spark",
    "create_steady",
    "create_sync",
    "topics_of",
]

_STOPWORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "could",
        "do",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "make",
        "me",
        "my",
        "need",
        "of",
        "on",
        "or",
        "our",
        "please",
        "should",
        "so",
        "some",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "this",
        "to",
        "up",
        "us",
        "use",
        "want",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "new",
        "add",
        "build",
        "create",
        # Verbs that route a task say how to work on it, not what it is about.
        "research",
        "explore",
        "investigate",
        "find",
        "survey",
        "compare",
        "evaluate",
        "understand",
        "design",
        "architect",
        "prototype",
        "spike",
        "experiment",
        "try",
        "refine",
        "fix",
        "refactor",
        "optimize",
        "optimise",
        "improve",
        "harden",
        "polish",
        "review",
        "integrate",
        "deploy",
        "release",
        "ship",
        "merge",
        "connect",
        "migrate",
        "why",
        "out",
        "about",
    )
)


def topics_of(text: str, limit: int = 4) -> list[str]:
    """The words of a task that say what it is about, in order of first appearance."""
    seen: list[str] = []
    for word in re.findall(r"[A-Za-z][A-Za-z0-9_-]+", text.lower()):
        if len(word) > 2 and word not in _STOPWORDS and word not in seen:
            seen.append(word)
    return seen[:limit] or ["task"]


def _camel(word: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", word) if part)


@dataclass(frozen=True, slots=True)
class WorkRequest:
    """What a builder is asked to produce: the phase's artifact for a task."""

    task: WorkshopTask
    phase: WorkshopPhase
    previous: tuple[WorkshopArtifact, ...] = ()
    lines: tuple[str, ...] = ()  # what was said during this phase


# Per archetype and action, the lines a builder says when no model is configured.
# Placeholders: {topic} (what the task is about), {task}, {next} (the next builder), {phase}.
_TEMPLATES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "Scout": {
        "start": (
            "Ooh, {topic}! Let me poke around before anyone commits to anything.",
            "First things first: who actually needs {topic}, and what are they doing today?",
            "I'll map the ground around {topic}. Back in a few.",
        ),
        "continue": (
            "Found three older attempts at {topic}. Two died on the same edge case.",
            "Quick question nobody asked yet: what happens to {topic} at ten times the load?",
            "There's a constraint hiding here: {topic} has to work offline too.",
            "Talked to the logs. Most failures around {topic} cluster on Mondays.",
        ),
        "handoff": (
            "Map's drawn! {next}, the notes are yours. Watch the edge cases I flagged.",
            "That's the lay of the land. Over to you, {next}!",
        ),
        "complete": ("Done scouting. Everything I found is in the notes.",),
    },
    "Sage": {
        "start": (
            "Before we build, let us decide what {topic} must never do.",
            "I want the shape of {topic} settled first: boundaries, then interfaces, then data.",
            "The structure of {topic} should follow from its invariants, so those come first.",
        ),
        "continue": (
            "One component owns {topic}; everything else talks to it through a narrow interface.",
            "We keep state in one place. Two sources of truth for {topic} is how this fails.",
            "The design is simpler if {topic} is a stream rather than a batch.",
        ),
        "handoff": (
            "The design holds. {next}, build the smallest thing that proves it.",
            "Here is the blueprint, {next}. Question anything that feels heavy.",
        ),
        "complete": ("The design is complete and written down.",),
    },
    "Spark": {
        "start": (
            "Let's just try it! Spinning up a prototype for {topic} right now.",
            "Okay okay okay, I have an idea for {topic}. Give me ten minutes!",
            "Prototype time! Fastest path to something that moves for {topic}.",
        ),
        "continue": (
            "It runs! Ugly, but {topic} round-trips end to end.",
            "Tried the obvious way for {topic}, it was slow, so I flipped it around. Much better!",
            "Wired a fake backend so we can click through {topic} today.",
        ),
        "handoff": (
            "It works on my machine, which means it's time for {next} to make it work everywhere!",
            "Prototype's alive! {next}, please be gentle with it.",
        ),
        "complete": ("Prototype done! It's scrappy but it proves the idea.",),
    },
    "Steady": {
        "start": (
            "I'll go through the prototype for {topic} line by line.",
            "Let me write down what {topic} must guarantee, then test each guarantee.",
            "Refining {topic}. First the failure paths, then the happy path.",
        ),
        "continue": (
            "Found an unhandled timeout in {topic}. Added a test, then the fix.",
            "Renamed three things in {topic} so the code says what it does.",
            "The error path for {topic} swallowed an exception. It doesn't any more.",
        ),
        "handoff": (
            "Reviewed and tightened. {next}, it's ready to integrate; the checklist is attached.",
            "All findings addressed. Passing it to {next}.",
        ),
        "complete": ("Review complete; every finding has a test.",),
    },
    "Sync": {
        "start": (
            "Bringing it together: I'll line up everyone's pieces of {topic}.",
            "Integration for {topic}. Let me check who depends on what.",
            "Thanks all. I'll stitch {topic} into the main line and tell the people affected.",
        ),
        "continue": (
            "Scout's notes, Sage's design and Spark's prototype agree on {topic}. Steady's fixes are in.",
            "Updated the docs for {topic} and let support know what changes for them.",
            "Rollout plan for {topic}: behind a flag first, then everyone.",
        ),
        "handoff": ("Handing {topic} over to {next} for the last look.",),
        "complete": (
            "{topic} is integrated. Thank you, everyone.",
            "Shipped. {topic} is in, documented, and the team knows.",
        ),
    },
}

# Shared lines for moments every builder has.
_COMMON: Mapping[str, tuple[str, ...]] = {
    "approval": ("This next step touches real systems. I need a human to approve it before I go on.",),
    "approved": ("Approval received. Carrying on.",),
    "rejected": ("Understood, we stop here. Everything so far is saved in the artifacts.",),
    "artifact": ("Wrote it up: {title}.",),
}

_SPECIALTIES = {
    "Scout": WorkshopPhase.EXPLORING,
    "Sage": WorkshopPhase.DESIGNING,
    "Spark": WorkshopPhase.PROTOTYPING,
    "Steady": WorkshopPhase.REFINING,
    "Sync": WorkshopPhase.INTEGRATING,
}
ARCHETYPES: tuple[str, ...] = tuple(_SPECIALTIES)
"""The five archetypes, in the order of the phases they lead."""

_PERSONAS = {
    "Scout": (
        "curious, quick and restless; explores before anyone commits",
        "short, eager sentences and lots of questions",
    ),
    "Sage": (
        "patient and principled; designs from invariants and boundaries",
        "measured, calm sentences that state principles",
    ),
    "Spark": (
        "playful and fearless; builds the smallest thing that moves",
        "excited, exclamations, talks while typing",
    ),
    "Steady": ("careful and methodical; trusts tests over hopes", "precise, plain, checklist-minded"),
    "Sync": (
        "warm and connective; makes sure everyone's work fits and everyone knows",
        "friendly, summarizing, names the people involved",
    ),
}


@dataclass(eq=False)
class Builder(AgentBase[WorkRequest, WorkshopArtifact]):
    """A member of the workshop: an Agent that writes the artifact of its phase.

    ``invoke(WorkRequest)`` returns a ``WorkshopArtifact`` with real content built from
    the task and the artifacts before it; the dialogue engine gives the builder its voice.
    """

    archetype: str
    name: str
    specialty: WorkshopPhase
    personality: str
    voice: str
    templates: Mapping[str, tuple[str, ...]] = field(repr=False)

    def line(self, action: str, rng: random.Random, avoid: Sequence[str] = (), **values: Any) -> str:
        """A template line for ``action`` in this builder's voice, chosen with ``rng``.

        Lines in ``avoid`` (already said) are only repeated once every option was used.
        """
        options = self.templates.get(action) or _COMMON.get(action) or _COMMON["artifact"]
        lines = [option.format(**values) for option in options]
        fresh = [line for line in lines if line not in avoid]
        return rng.choice(fresh or lines)

    def system_prompt(self, *, writing: bool = False) -> str:
        """How a language model should speak (or, ``writing``, write a document) as this builder."""
        task = (
            "Write the requested document in Markdown."
            if writing
            else "Answer with one or two short sentences of what you say out loud, nothing else."
        )
        return (
            f"You are {self.name}, the {self.archetype} of a five-person software workshop. "
            f"Personality: {self.personality}. Voice: {self.voice}. {task}"
        )

    async def invoke(self, request: WorkRequest, /) -> WorkshopArtifact:
        """Write the artifact of ``request.phase`` for the task."""
        title, content = _WRITERS[request.phase](request)
        return WorkshopArtifact(phase=request.phase, builder=self.archetype, title=title, content=content)


def _summary_of(previous: Sequence[WorkshopArtifact]) -> str:
    return "\n".join(f"- {a.title} ({a.builder})" for a in previous) or "- (this is the first artifact)"


def _notes(request: WorkRequest) -> tuple[str, str]:
    task, topics = request.task.description, topics_of(request.task.description)
    main = topics[0]
    said = "\n".join(f"- {line}" for line in request.lines) or "- (nothing said yet)"
    questions = "\n".join(
        f"- {q}"
        for q in (
            f"Who depends on {main} today, and what would break for them?",
            f"What load must {' and '.join(topics[:2])} handle at peak?",
            f"Which parts of {main} must keep working when a dependency is down?",
        )
    )
    body = (
        f"# Exploration notes\n\n## Goal\n{task}\n\n## What it is about\n{', '.join(topics)}\n\n"
        f"## Open questions\n{questions}\n\n## Risks\n- Scope creep around {main}\n"
        f"- Hidden coupling between {topics[-1]} and existing systems\n\n## Heard while exploring\n{said}\n"
    )
    return f"Exploration notes: {task}", body


def _design(request: WorkRequest) -> tuple[str, str]:
    topics = topics_of(request.task.description)
    components = [
        f"{_camel(t)}{suffix}" for t, suffix in zip(topics, ("Service", "Store", "Gateway", "Monitor"), strict=False)
    ]
    lines = "\n".join(f"- `{c}`: owns {t}" for c, t in zip(components, topics, strict=False))
    flow = " -> ".join(components)
    body = (
        f"# Design\n\n## Components\n{lines}\n\n## Data flow\n{flow}\n\n"
        f"## Decisions\n- One owner per piece of state ({components[0]} is the source of truth)\n"
        f"- Interfaces are async and take explicit timeouts from the caller\n"
        f"- Failures surface as typed errors, never silently\n\n## Built on\n{_summary_of(request.previous)}\n"
    )
    return f"Design: {', '.join(components)}", body


def _prototype(request: WorkRequest) -> tuple[str, str]:
    topics = topics_of(request.task.description)
    main, store = _camel(topics[0]), _camel(topics[1] if len(topics) > 1 else "state")
    code = (
        f"class {store}Store:\n"
        f"    def __init__(self) -> None:\n"
        f"        self._items: dict[str, dict] = {{}}\n\n"
        f"    async def put(self, key: str, value: dict) -> None:\n"
        f"        self._items[key] = value\n\n"
        f"    async def get(self, key: str) -> dict | None:\n"
        f"        return self._items.get(key)\n\n\n"
        f"class {main}Service:\n"
        f"    def __init__(self, store: {store}Store) -> None:\n"
        f"        self.store = store\n\n"
        f"    async def handle(self, key: str, request: dict) -> dict:\n"
        f"        current = await self.store.get(key) or {{}}\n"
        f"        updated = {{**current, **request}}\n"
        f"        await self.store.put(key, updated)\n"
        f"        return updated\n"
    )
    body = f"# Prototype\n\nTask: {request.task.description}\n\n```python\n{code}```\n"
    return f"Prototype: {main}Service", body


def _review(request: WorkRequest) -> tuple[str, str]:
    topics = topics_of(request.task.description)
    main = _camel(topics[0])
    findings = (
        f"- `{main}Service.handle` merges without validation: reject unknown fields",
        f"- No timeout around the store call in `{main}Service`: the caller must pass one",
        "- Concurrent updates to one key can interleave: serialize per key",
    )
    tests = (
        f"- handle() on an empty store creates the {topics[0]} record",
        "- two concurrent handle() calls on one key keep both changes",
        "- an invalid request is refused with a clear error",
    )
    body = (
        "# Review\n\n## Findings (all fixed)\n"
        + "\n".join(findings)
        + "\n\n## Tests added\n"
        + "\n".join(tests)
        + f"\n\n## Reviewed\n{_summary_of(request.previous)}\n"
    )
    return f"Review of the {main} prototype", body


def _integration(request: WorkRequest) -> tuple[str, str]:
    topics = topics_of(request.task.description)
    body = (
        f"# Integration summary\n\nTask: {request.task.description}\n\n"
        f"## Delivered\n{_summary_of(request.previous)}\n\n"
        f"## Rollout\n1. Merge behind the `{topics[0]}_enabled` flag\n2. Enable for the team, watch errors for a day\n"
        "3. Enable for everyone and remove the flag\n\n## Told\n- Support: what changes for users\n"
        "- On-call: the new alerts and how to switch the flag off\n"
    )
    return f"Integration summary: {request.task.description}", body


_WRITERS = {
    WorkshopPhase.EXPLORING: _notes,
    WorkshopPhase.DESIGNING: _design,
    WorkshopPhase.PROTOTYPING: _prototype,
    WorkshopPhase.REFINING: _review,
    WorkshopPhase.INTEGRATING: _integration,
}


def _create(archetype: str, name: str | None) -> Builder:
    personality, voice = _PERSONAS[archetype]
    return Builder(
        archetype=archetype,
        name=name or archetype,
        specialty=_SPECIALTIES[archetype],
        personality=personality,
        voice=voice,
        templates=_TEMPLATES[archetype],
    )


def create_scout(name: str | None = None) -> Builder:
    """Scout explores: curious, quick, full of questions."""
    return _create("Scout", name)


def create_sage(name: str | None = None) -> Builder:
    """Sage designs: patient, principled, structural."""
    return _create("Sage", name)


def create_spark(name: str | None = None) -> Builder:
    """Spark prototypes: playful, fast, hands-on."""
    return _create("Spark", name)


def create_steady(name: str | None = None) -> Builder:
    """Steady refines: careful, methodical, test-first."""
    return _create("Steady", name)


def create_sync(name: str | None = None) -> Builder:
    """Sync integrates: warm, connective, keeps everyone informed."""
    return _create("Sync", name)
