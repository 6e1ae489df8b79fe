"""Tokens, reasons, statuses and the SemaphoreMixin (SPEC 4, 10 Semaphores)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from agentflux import (
    JsonCodec,
    ReentryContext,
    SemaphoreCapable,
    SemaphoreCodecError,
    SemaphoreError,
    SemaphoreMixin,
    SemaphoreReason,
    SemaphoreStatus,
    SemaphoreToken,
    SemaphoreTokenError,
    SignedPickleCodec,
    StateCodec,
    open_purgatory,
)

SOON = datetime.now(UTC) + timedelta(hours=1)


def test_reasons_are_exactly_the_six_of_the_spec() -> None:
    assert {reason.name for reason in SemaphoreReason} == {
        "APPROVAL_NEEDED",
        "CONTEXT_REQUIRED",
        "SENSITIVE_ACTION",
        "AMBIGUOUS_CHOICE",
        "RESOURCE_DECISION",
        "ERROR_RECOVERY",
    }
    assert len(SemaphoreReason) == 6
    for reason in SemaphoreReason:
        assert reason == reason.value
        assert isinstance(reason, str)
        assert SemaphoreReason(reason.value) is reason


def test_statuses_are_a_str_enum_with_the_five_spec_values() -> None:
    assert [status.value for status in SemaphoreStatus] == ["pending", "resolved", "cancelled", "voided", "escalated"]
    assert SemaphoreStatus.PENDING == "pending"
    assert SemaphoreStatus("escalated") is SemaphoreStatus.ESCALATED


def test_token_defaults() -> None:
    before = datetime.now(UTC)
    token = SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt="ok?")
    after = datetime.now(UTC)
    assert token.status is SemaphoreStatus.PENDING
    assert token.severity == "info"
    assert token.options == ()
    assert token.frozen_state == b""
    assert token.original_event is None
    assert token.deadline is None
    assert token.escalation is None
    assert token.flux_id is None
    assert token.resolution is None
    assert token.resolved_at is None
    assert token.created_at.utcoffset() is not None
    assert before <= token.created_at <= after
    assert isinstance(token.id, str)
    assert token.id


def test_token_ids_are_unique() -> None:
    ids = {SemaphoreToken(reason=SemaphoreReason.CONTEXT_REQUIRED, prompt="?").id for _ in range(2000)}
    assert len(ids) == 2000


def test_token_ids_are_uuid7_hex_carrying_their_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [SemaphoreToken(reason=SemaphoreReason.CONTEXT_REQUIRED, prompt="?").id for _ in range(100)]
    after = time.time_ns() // 1_000_000
    for token_id in ids:
        assert len(token_id) == 32
        parsed = uuid.UUID(hex=token_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(token_id[:12], 16) <= after  # so they sort by creation, to the millisecond
    assert len(set(ids)) == 100


def test_token_has_every_spec_field() -> None:
    names = {field.name for field in dataclasses.fields(SemaphoreToken)}
    assert names >= {
        "id",
        "reason",
        "prompt",
        "options",
        "severity",
        "frozen_state",
        "original_event",
        "deadline",
        "escalation",
        "flux_id",
        "created_at",
        "status",
        "resolution",
        "resolved_at",
    }


def test_token_is_immutable() -> None:
    token = SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt="ok?")
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.status = SemaphoreStatus.RESOLVED  # type: ignore[misc]


def test_reason_and_status_may_be_given_as_strings() -> None:
    token = SemaphoreToken(reason="sensitive_action", prompt="rm?", status="escalated")  # type: ignore[arg-type]
    assert token.reason is SemaphoreReason.SENSITIVE_ACTION
    assert token.status is SemaphoreStatus.ESCALATED


def test_options_are_kept_as_a_tuple() -> None:
    token = SemaphoreToken(reason=SemaphoreReason.AMBIGUOUS_CHOICE, prompt="which?", options=["a", "b"])  # type: ignore[arg-type]
    assert token.options == ("a", "b")


@pytest.mark.parametrize("severity", ["info", "warning", "critical"])
def test_the_three_severities_are_accepted(severity: Any) -> None:
    assert SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt="?", severity=severity).severity == severity


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"deadline": datetime(2030, 1, 1)}, "deadline"),
        ({"created_at": datetime(2030, 1, 1)}, "created_at"),
        ({"resolved_at": datetime(2030, 1, 1)}, "resolved_at"),
        ({"deadline": "2030-01-01T00:00:00+00:00"}, "deadline"),
        ({"severity": "fatal"}, "severity"),
        ({"severity": "INFO"}, "severity"),
        ({"reason": "because"}, "reason"),
        ({"prompt": None}, "prompt"),
        ({"frozen_state": "text"}, "frozen_state"),
        ({"options": ["a", 2]}, "options"),
        ({"id": ""}, "id"),
        ({"status": "done"}, "status"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else v,
)
def test_invalid_token_fields_raise_value_error_naming_the_field(fields: dict[str, Any], named: str) -> None:
    arguments: dict[str, Any] = {"reason": SemaphoreReason.APPROVAL_NEEDED, "prompt": "?"}
    arguments.update(fields)
    with pytest.raises(SemaphoreTokenError, match=named) as caught:
        SemaphoreToken(**arguments)
    assert isinstance(caught.value, ValueError)  # SemaphoreTokenError is also a ValueError
    assert isinstance(caught.value, SemaphoreError)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"prompt": "approve \ud800?"}, "prompt"),
        ({"options": ("yes", "n\udfffo")}, "options"),
        ({"escalation": "\udc00oncall"}, "escalation"),
        ({"flux_id": "flux-\ud83d"}, "flux_id"),
        ({"id": "id-\udead"}, "id"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else v,
)
def test_text_fields_with_a_lone_surrogate_are_a_token_error(fields: dict[str, Any], named: str) -> None:
    arguments: dict[str, Any] = {"reason": SemaphoreReason.APPROVAL_NEEDED, "prompt": "?"}
    arguments.update(fields)
    with pytest.raises(SemaphoreTokenError, match=rf"SemaphoreToken\.{named} contains a lone surrogate"):
        SemaphoreToken(**arguments)


def test_yield_semaphore_refuses_a_prompt_with_a_lone_surrogate_and_valid_text_is_kept() -> None:
    with pytest.raises(SemaphoreTokenError, match="prompt"):
        Reviewer().yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "LLM said \ud83d")
    token = SemaphoreToken(reason="approval_needed", prompt="ok \U0001f600 \u2603", options=("\u00e9",))
    assert token.prompt == "ok \U0001f600 \u2603"


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/p.db"])
async def test_lone_surrogates_in_values_saved_or_answered_are_codec_errors(url: str, tmp_path: Any) -> None:
    async with open_purgatory(url.format(tmp=tmp_path)) as purgatory:
        bad = SemaphoreToken(reason="approval_needed", prompt="?", original_event={"text": "\ud800"})
        with pytest.raises(SemaphoreCodecError, match="lone surrogate"):
            await purgatory.save(bad)
        token = await purgatory.save(SemaphoreToken(reason="approval_needed", prompt="?"))
        with pytest.raises(SemaphoreCodecError, match="lone surrogate"):
            await purgatory.resolve(token.id, "yes \udc00")
        assert (await purgatory.get(token.id)).status is SemaphoreStatus.PENDING  # nothing changed
        assert [t.id for t in await purgatory.list_pending()] == [token.id]


def test_an_aware_deadline_in_any_timezone_is_accepted() -> None:
    deadline = datetime(2030, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    assert SemaphoreToken(reason=SemaphoreReason.APPROVAL_NEEDED, prompt="?", deadline=deadline).deadline == deadline


def test_reentry_context_fields() -> None:
    context = ReentryContext("tid", b"state", {"ok": True}, "event")
    assert (context.token_id, context.frozen_state, context.human_input, context.original_event) == (
        "tid",
        b"state",
        {"ok": True},
        "event",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.human_input = None  # type: ignore[misc]


# ----------------------------------------------------------------------------- SemaphoreMixin


class Reviewer(SemaphoreMixin):
    name = "reviewer"

    async def invoke(self, x: int) -> Any:
        return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"ok {x}?", {"x": x, "at": SOON})

    async def resume(self, frozen_state: bytes, human_input: Any) -> Any:
        return (self.restore_state(frozen_state), human_input)


def test_default_state_codec_is_json() -> None:
    assert isinstance(SemaphoreMixin.state_codec, JsonCodec)
    assert isinstance(SemaphoreMixin.state_codec, StateCodec)


def test_yield_semaphore_freezes_state_and_restore_state_thaws_it() -> None:
    reviewer = Reviewer()
    state = {"draft": "text", "steps": (1, 2), "blob": b"\x00\x01", "when": SOON, "nested": [{"a": None}]}
    token = reviewer.yield_semaphore(
        SemaphoreReason.RESOURCE_DECISION,
        "spend $10?",
        state,
        options=["yes", "no"],
        severity="critical",
        original_event="evt",
        deadline=SOON,
        escalation="oncall",
    )
    assert token.reason is SemaphoreReason.RESOURCE_DECISION
    assert token.prompt == "spend $10?"
    assert token.options == ("yes", "no")
    assert token.severity == "critical"
    assert token.original_event == "evt"
    assert token.deadline == SOON
    assert token.escalation == "oncall"
    assert token.status is SemaphoreStatus.PENDING
    assert isinstance(token.frozen_state, bytes)
    assert reviewer.restore_state(token.frozen_state) == state
    assert JsonCodec().decode(token.frozen_state) == state  # plain JSON codec output


def test_yield_semaphore_with_no_state() -> None:
    reviewer = Reviewer()
    token = reviewer.yield_semaphore(SemaphoreReason.CONTEXT_REQUIRED, "which repo?")
    assert reviewer.restore_state(token.frozen_state) is None


def test_yield_semaphore_refuses_unencodable_state_and_naive_deadline() -> None:
    reviewer = Reviewer()
    with pytest.raises(SemaphoreCodecError, match=r"\$\.handle"):
        reviewer.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", {"handle": object()})
    with pytest.raises(ValueError, match="deadline"):
        reviewer.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", deadline=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="severity"):
        reviewer.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", severity="loud")  # type: ignore[arg-type]


def test_restore_state_refuses_bytes_it_did_not_write() -> None:
    with pytest.raises(SemaphoreCodecError):
        Reviewer().restore_state(b"\x80\x04K\x01.")  # pickle of 1


def test_a_mixin_agent_with_resume_is_semaphore_capable() -> None:
    assert isinstance(Reviewer(), SemaphoreCapable)
    assert not isinstance(SemaphoreMixin(), SemaphoreCapable)


class Blob:
    def __init__(self, parts: set[str]) -> None:
        self.parts = parts


class PickleReviewer(SemaphoreMixin):
    state_codec: ClassVar[StateCodec] = SignedPickleCodec(b"a secret key of 32 bytes........")


def test_a_class_can_opt_into_the_signed_pickle_codec() -> None:
    reviewer = PickleReviewer()
    token = reviewer.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", Blob({"a", "b"}))
    assert token.frozen_state.startswith(b"AFPK2")
    restored = reviewer.restore_state(token.frozen_state, token_id=token.id)
    assert isinstance(restored, Blob)
    assert restored.parts == {"a", "b"}
    # The signature names the token: outside a resume, the token id must be given.
    with pytest.raises(SemaphoreCodecError, match="no token"):
        reviewer.restore_state(token.frozen_state)
    # The opt-in is per class: the default codec still refuses the same bytes, and so does
    # a pickle codec with another key.
    with pytest.raises(SemaphoreCodecError):
        Reviewer().restore_state(token.frozen_state)
    with pytest.raises(SemaphoreCodecError):
        SignedPickleCodec(b"another key of 32 bytes.........").decode(token.frozen_state)


def test_a_class_can_use_a_json_codec_with_registered_types() -> None:
    codec = JsonCodec()
    codec.register(Blob, lambda blob: sorted(blob.parts), lambda parts: Blob(set(parts)), name="tests.Blob")

    class BlobReviewer(SemaphoreMixin):
        state_codec = codec

    token = BlobReviewer().yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", {"blob": Blob({"x"})})
    assert BlobReviewer().restore_state(token.frozen_state)["blob"].parts == {"x"}
    with pytest.raises(SemaphoreCodecError, match=r"tests\.Blob"):
        Reviewer().restore_state(token.frozen_state)


class LegacyCodec:
    """A codec written before ``context`` was part of ``StateCodec``: still works, binds nothing."""

    def encode(self, value: Any) -> bytes:
        return repr(value).encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()


def test_a_codec_without_context_is_called_without_it() -> None:
    class LegacyReviewer(SemaphoreMixin):
        state_codec: ClassVar[StateCodec] = LegacyCodec()  # type: ignore[assignment]

    reviewer = LegacyReviewer()
    token = reviewer.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, "?", [1, 2])
    assert token.frozen_state == b"[1, 2]"
    assert reviewer.restore_state(token.frozen_state, token_id=token.id) == "[1, 2]"
