"""State codecs: safe JSON by default, pickle only inside an HMAC envelope (SPEC 4, 10 Semaphores)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflux import JsonCodec, SemaphoreCodecError, SemaphoreError, SignedPickleCodec

KEY = b"k" * 32


def same(a: Any, b: Any) -> bool:
    """Equality that also tells bool from int, tuple from list, bytes from str and float from int."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


class Exploit:
    """Unpickling this calls ``os.mkdir(marker)``: the canonical "pickle runs code" payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def point_codec() -> JsonCodec:
    codec = JsonCodec()
    codec.register(Point, lambda p: [p.x, p.y], lambda data: Point(*data), name="test.Point")
    return codec


# ------------------------------------------------------------------------ JsonCodec round trips

ROUND_TRIPS: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**70),
    1.5,
    -0.25,
    "",
    "héllo \u2603 \U0001f600",
    [],
    {},
    [1, "two", 3.0, None, True],
    {"a": {"b": {"c": [1, [2, [3, {"d": None}]]]}}},
    (),
    (1, "x"),
    [(1, 2), ((3,), [4])],
    {"t": (1, (2, 3)), "l": [1, 2]},
    b"",
    b"\x00\xff binary \x80",
    bytearray(b"mutable"),
    datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-8))),
    {"__af__": "dict", "value": 1},
    {"__af__": "type", "name": "os.system", "value": "rm -rf /"},
    {"__af__": None},
    {"outer": {"__af__": "tuple", "value": [1]}},
    [{"__af__": "bytes", "value": "not base64!"}],
    {"format": "agentflux/json1", "value": 1},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_json_codec_round_trips_supported_values_exactly(value: Any) -> None:
    codec = JsonCodec()
    data = codec.encode(value)
    assert isinstance(data, bytes)
    decoded = codec.decode(data)
    expected = bytes(value) if isinstance(value, bytearray) else value
    assert same(decoded, expected), (value, decoded)


@given(st.one_of(st.none(), st.text()))
def test_the_fast_paths_for_none_and_str_write_what_the_general_path_writes(value: str | None) -> None:
    codec = JsonCodec()
    general = json.dumps({"format": "agentflux/json1", "value": value}, separators=(",", ":")).encode()
    assert codec.encode(value) == general
    assert codec.decode(general) == value


def test_json_codec_output_is_plain_json_with_a_format_marker() -> None:
    document = json.loads(JsonCodec().encode({"a": [1, 2]}))
    assert document["format"] == "agentflux/json1"
    assert document["value"] == {"a": [1, 2]}


def test_registered_types_round_trip_nested_in_other_values() -> None:
    codec = point_codec()
    value = {"points": [Point(1, 2), Point(-3, 4)], "origin": (Point(0, 0),)}
    assert codec.decode(codec.encode(value)) == value


def test_registration_is_per_codec_and_exact_type() -> None:
    codec = point_codec()
    data = codec.encode(Point(1, 2))
    with pytest.raises(SemaphoreCodecError, match=r"test\.Point"):
        JsonCodec().decode(data)  # a codec without the registration refuses it

    class SubPoint(Point):
        pass

    with pytest.raises(SemaphoreCodecError, match="SubPoint"):
        codec.encode(SubPoint(1, 2))


def test_registering_the_same_name_twice_raises_value_error() -> None:
    codec = point_codec()
    with pytest.raises(ValueError, match=r"test\.Point"):
        codec.register(Point, repr, repr, name="test.Point")


def test_registered_encoder_output_is_itself_checked() -> None:
    codec = JsonCodec()
    codec.register(Point, lambda p: {"bad": object()}, lambda data: data, name="test.Point")
    with pytest.raises(SemaphoreCodecError, match=r"test\.Point"):
        codec.encode([Point(1, 2)])


# ------------------------------------------------------------------------ JsonCodec refusals


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"when": datetime(2024, 1, 1)}, "$.when"),
        ([0, {1: "x"}], "$[1]"),
        ({"a": {("t",): 1}}, "$.a"),
        ({"n": [1.0, math.nan]}, "$.n[1]"),
        ({"n": math.inf}, "$.n"),
        (-math.inf, "$"),
        ({"obj": [object()]}, "$.obj[0]"),
        ({"s": {1, 2}}, "$.s"),
        ((1, Decimal("1.5")), "$[1]"),
        ({"p": Point(1, 2)}, "$.p"),  # not registered with this codec
    ],
    ids=[
        "naive-datetime", "int-key", "tuple-key", "nan", "inf", "minus-inf", "object", "set", "decimal", "unregistered",
    ],
)
def test_json_codec_refuses_unencodable_values_naming_the_path(value: Any, path: str) -> None:
    with pytest.raises(SemaphoreCodecError) as caught:
        JsonCodec().encode(value)
    assert f"at {path}" in str(caught.value)
    assert isinstance(caught.value, SemaphoreError)


def test_naive_datetime_error_says_what_to_do() -> None:
    with pytest.raises(SemaphoreCodecError, match="timezone"):
        JsonCodec().encode(datetime(2024, 1, 1))


def test_deeply_nested_value_is_refused_with_a_codec_error() -> None:
    value: list[Any] = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().encode(value)


# ------------------------------------------------------------------------ JsonCodec decode safety


def envelope(value: Any, fmt: Any = "agentflux/json1") -> bytes:
    return json.dumps({"format": fmt, "value": value}).encode()


GARBAGE: list[bytes] = [
    b"",
    b"not json at all",
    b"\x80\x81\xfe\xff",
    b"[1, 2",
    b"null",
    b"[]",
    b'"agentflux/json1"',
    b'{"value": 1}',
    envelope(1, fmt="agentflux/json2"),
    envelope(1, fmt=None),
    b'{"format": "agentflux/json1"}',
    envelope({"__af__": "datetime", "value": "yesterday"}),
    envelope({"__af__": "datetime", "value": "2024-01-01T00:00:00"}),  # naive
    envelope({"__af__": "datetime", "value": 5}),
    envelope({"__af__": "bytes", "value": "***"}),
    envelope({"__af__": "bytes", "value": "\u00e9"}),
    envelope({"__af__": "tuple", "value": "abc"}),
    envelope({"__af__": "dict", "value": [1]}),
    envelope({"__af__": "pickle", "value": "gASVAAAA"}),
    envelope({"__af__": "type", "name": "os.system", "value": "touch /tmp/x"}),
    envelope({"__af__": "type", "name": ["os", "system"], "value": 1}),
    envelope({"__af__": "type", "value": 1}),
    pickle.dumps({"a": 1}),
    pickle.dumps([1, 2, 3], protocol=0),
    SignedPickleCodec(KEY).encode({"a": 1}),
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_json_codec_decode_of_anything_it_did_not_write_raises_codec_error(data: bytes) -> None:
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().decode(data)


def test_unknown_registered_type_error_names_the_type() -> None:
    with pytest.raises(SemaphoreCodecError, match=r"os\.system"):
        JsonCodec().decode(envelope({"__af__": "type", "name": "os.system", "value": "id"}))


def test_deeply_nested_garbage_is_refused_with_a_codec_error() -> None:
    depth = 100_000
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().decode(b'{"format":"agentflux/json1","value":' + b"[" * depth + b"]" * depth + b"}")


def test_the_exploit_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # The control for the tests below: plain pickle.loads of this payload creates the marker.
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Exploit(marker)))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_json_codec_never_unpickles(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker), protocol=protocol)
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().decode(payload)
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().decode(envelope({"__af__": "bytes", "value": "x"}) + payload)
    assert not marker.exists()


# ------------------------------------------------------------------------ SignedPickleCodec


class Opaque:
    """Not JSON-encodable: the reason to opt into pickle."""

    def __init__(self, items: set[int]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.items == self.items

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("value", [None, {"a": (1, 2)}, {1, 2, 3}, Opaque({4, 5}), Decimal("1.25"), b"\x00"])
def test_signed_pickle_round_trips_arbitrary_objects(value: Any) -> None:
    codec = SignedPickleCodec(KEY)
    assert codec.decode(codec.encode(value)) == value


def test_signed_pickle_decodes_with_another_instance_holding_the_same_key() -> None:
    assert SignedPickleCodec(KEY).decode(SignedPickleCodec(bytes(KEY)).encode([1, "x"])) == [1, "x"]


def test_signed_pickle_unpicklable_value_raises_codec_error() -> None:
    with pytest.raises(SemaphoreCodecError):
        SignedPickleCodec(KEY).encode(lambda: None)


def test_tampering_with_any_byte_is_detected() -> None:
    codec = SignedPickleCodec(KEY)
    data = codec.encode({"approved": False, "amount": 10})
    for index in range(len(data)):
        for flip in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[index] ^= flip
            with pytest.raises(SemaphoreCodecError):
                codec.decode(bytes(tampered))


@pytest.mark.parametrize("cut", [0, 1, 5, 20, 37, -1])
def test_truncated_or_extended_data_is_refused(cut: int) -> None:
    codec = SignedPickleCodec(KEY)
    data = codec.encode({"x": 1})
    with pytest.raises(SemaphoreCodecError):
        codec.decode(data[:cut])
    with pytest.raises(SemaphoreCodecError):
        codec.decode(data + b"\x00")


def test_a_different_key_is_refused() -> None:
    data = SignedPickleCodec(KEY).encode("secret")
    with pytest.raises(SemaphoreCodecError, match="signature"):
        SignedPickleCodec(b"x" * 32).decode(data)


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15, "a text key of 32 characters long", None])
def test_key_must_be_at_least_16_bytes(key: Any) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SignedPickleCodec(key)


def test_a_16_byte_key_is_enough() -> None:
    codec = SignedPickleCodec(b"0123456789abcdef")
    assert codec.decode(codec.encode(3)) == 3


def test_signed_pickle_refuses_non_bytes_and_json_data() -> None:
    codec = SignedPickleCodec(KEY)
    with pytest.raises(SemaphoreCodecError):
        codec.decode(JsonCodec().encode({"a": 1}))
    with pytest.raises(SemaphoreCodecError):
        codec.decode(bytearray(codec.encode(1)))  # type: ignore[arg-type]


def test_signed_pickle_never_runs_unsigned_or_wrongly_signed_payloads(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    codec = SignedPickleCodec(KEY)
    payload = pickle.dumps(Exploit(marker))
    forged_with_other_key = SignedPickleCodec(b"attacker-key-0123456789").encode(Exploit(marker))
    signed_then_swapped = codec.encode(None)[: 5 + 32] + payload
    attempts = [
        payload,
        b"AFPK1" + payload,
        b"AFPK1" + b"\x00" * 32 + payload,
        forged_with_other_key,
        signed_then_swapped,
    ]
    for data in attempts:
        with pytest.raises(SemaphoreCodecError):
            codec.decode(data)
        with pytest.raises(SemaphoreCodecError):
            JsonCodec().decode(data)
    assert not marker.exists()
    # The control: the same payload signed with the right key is trusted and runs.
    codec.decode(codec.encode(Exploit(marker)))
    assert marker.exists()


# ------------------------------------------------------------------------ property


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary(max_size=32)
    | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-11))]))
)
keys = st.text(max_size=8) | st.sampled_from(["__af__", "format", "value", "name"])
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_json_codec_round_trip_property(value: Any) -> None:
    codec = JsonCodec()
    decoded = codec.decode(codec.encode(value))
    assert same(decoded, value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_json_codec_decode_of_random_bytes_never_raises_anything_but_codec_error(data: bytes) -> None:
    with contextlib.suppress(SemaphoreCodecError):
        JsonCodec().decode(data)


@settings(max_examples=60, deadline=None)
@given(json_values, st.data())
def test_signed_pickle_detects_any_single_byte_change(value: Any, data: st.DataObject) -> None:
    codec = SignedPickleCodec(KEY)
    encoded = codec.encode(value)
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(encoded)
    tampered[index] ^= flip
    with pytest.raises(SemaphoreCodecError):
        codec.decode(bytes(tampered))


# ------------------------------------------------------------------------ signed state is bound to its token


def test_signed_state_decodes_only_for_the_context_it_was_signed_for() -> None:
    codec = SignedPickleCodec(KEY)
    data = codec.encode({"command": "ls"}, context="token-a")
    assert codec.decode(data, context="token-a") == {"command": "ls"}
    assert codec.decode(data, context=b"token-a") == {"command": "ls"}  # a str id is its UTF-8 bytes
    for other in ["token-b", "token-a ", "", None]:
        with pytest.raises(SemaphoreCodecError, match="frozen for another token"):
            codec.decode(data, context=other)
    unbound = codec.encode({"command": "ls"})
    assert codec.decode(unbound) == {"command": "ls"}
    with pytest.raises(SemaphoreCodecError, match="token 'token-a'"):
        codec.decode(unbound, context="token-a")


def test_signed_envelope_is_version_2_and_its_mac_covers_format_version_and_context() -> None:
    codec = SignedPickleCodec(KEY)
    data = codec.encode(1, context="t")
    assert data.startswith(b"AFPK2")
    payload = data[5 + 32 :]
    # The MAC of the same payload for another context is different: nothing can be re-labelled.
    assert codec.encode(1, context="u")[5 + 32 :] == payload
    assert codec.encode(1, context="u")[5 : 5 + 32] != data[5 : 5 + 32]


def test_the_unbound_first_envelope_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """An AFPK1 envelope, even correctly signed with the key, is never unpickled: it names no token."""
    import hashlib
    import hmac

    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    old = b"AFPK1" + hmac.new(KEY, b"AFPK1" + payload, hashlib.sha256).digest() + payload
    for context in [None, "t"]:
        with pytest.raises(SemaphoreCodecError, match="unbound AFPK1 envelope"):
            SignedPickleCodec(KEY).decode(old, context=context)
    assert not marker.exists()


@pytest.mark.parametrize("context", [1, ["t"], "\ud800"], ids=["int", "list", "lone-surrogate"])
def test_a_bad_context_is_a_codec_error(context: Any) -> None:
    codec = SignedPickleCodec(KEY)
    with pytest.raises(SemaphoreCodecError, match="context"):
        codec.encode(1, context=context)
    with pytest.raises(SemaphoreCodecError, match="context"):
        codec.decode(codec.encode(1), context=context)


def test_json_codec_accepts_and_ignores_a_context() -> None:
    codec = JsonCodec()
    data = codec.encode({"a": 1}, context="t")
    assert data == codec.encode({"a": 1})
    assert codec.decode(data, context="other") == {"a": 1}


# ------------------------------------------------------------------------ every failure is a codec error


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"[1,NaN]", b'{"x":-Infinity}'])
def test_json_codec_refuses_the_non_json_literals(literal: bytes) -> None:
    with pytest.raises(SemaphoreCodecError, match="not JSON"):
        JsonCodec().decode(b'{"format":"agentflux/json1","value":' + literal + b"}")


@pytest.mark.parametrize("literal", [b"1e400", b"[-1.5e999]", b'{"x":123456789e308}'])
def test_json_codec_refuses_numbers_that_overflow_to_infinity(literal: bytes) -> None:
    with pytest.raises(SemaphoreCodecError, match="out of the float range"):
        JsonCodec().decode(b'{"format":"agentflux/json1","value":' + literal + b"}")


def test_non_finite_floats_travel_only_through_a_registered_float_handler() -> None:
    codec = JsonCodec()
    with pytest.raises(SemaphoreCodecError, match="register float"):
        codec.encode(math.nan)
    codec.register(float, repr, float, name="float")
    decoded = codec.decode(codec.encode([math.inf, -math.inf, math.nan, 1.5]))
    assert decoded[:2] == [math.inf, -math.inf]
    assert math.isnan(decoded[2])
    assert same(decoded[3], 1.5)
    assert b"1.5" in codec.encode(1.5)  # finite floats stay plain JSON numbers
    with pytest.raises(SemaphoreCodecError, match="not JSON"):
        codec.decode(b'{"format":"agentflux/json1","value":NaN}')  # the literal is still refused


def test_a_huge_int_is_a_codec_error_both_ways() -> None:
    with pytest.raises(SemaphoreCodecError, match="digits"):
        JsonCodec().encode({"n": 10**5000})
    with pytest.raises(SemaphoreCodecError, match="digits"):
        JsonCodec().decode(b'{"format":"agentflux/json1","value":' + b"9" * 5000 + b"}")


def test_a_registered_types_failing_decoder_or_encoder_is_a_codec_error_naming_it() -> None:
    codec = JsonCodec()
    codec.register(Point, lambda p: {"x": p.x, "y": p.y}, lambda data: Point(data["x"], data["y"]), name="test.Point")
    data = envelope({"__af__": "type", "name": "test.Point", "value": {"x": 1}})
    with pytest.raises(SemaphoreCodecError, match=r"test\.Point.*KeyError") as caught:
        codec.decode(data)
    assert isinstance(caught.value.__cause__, KeyError)
    broken = JsonCodec()
    broken.register(Point, lambda p: p.z, lambda data: data, name="test.Point")
    with pytest.raises(SemaphoreCodecError, match=r"test\.Point.*at \$\[0\]: AttributeError"):
        broken.encode([Point(1, 2)])


@pytest.mark.parametrize("data", ["a str", None, 12, bytearray(b"x")], ids=["str", "none", "int", "bytearray"])
def test_decoding_something_that_is_not_bytes_is_a_codec_error(data: Any) -> None:
    with pytest.raises(SemaphoreCodecError):
        JsonCodec().decode(data)
    with pytest.raises(SemaphoreCodecError):
        SignedPickleCodec(KEY).decode(data)


# ------------------------------------------------------------------------ lone surrogates


@pytest.mark.parametrize(
    "value", ["\ud800", "ok \udfff", ["x", {"k": "\udc00"}], {"\ud83d": 1}, ("\ud800",)], ids=range(5)
)
def test_json_codec_refuses_lone_surrogates_when_encoding(value: Any) -> None:
    with pytest.raises(SemaphoreCodecError, match="lone surrogate"):
        JsonCodec().encode(value)


def test_json_codec_refuses_an_escaped_lone_surrogate_when_decoding() -> None:
    for escaped in [rb'"\ud800"', rb'{"\uDC00":1}', rb'["\ud83d x"]', rb'"\ude00\ud83d"']:
        with pytest.raises(SemaphoreCodecError, match="lone surrogate"):
            JsonCodec().decode(b'{"format":"agentflux/json1","value":' + escaped + b"}")
    assert JsonCodec().decode(b'{"format":"agentflux/json1","value":"\\ud83d\\ude00"}') == "\U0001f600"
    with pytest.raises(SemaphoreCodecError):  # raw (CESU-8) surrogate bytes are not UTF-8
        JsonCodec().decode(b'{"format":"agentflux/json1","value":"\xed\xa0\x80"}')


def test_text_outside_the_bmp_still_round_trips() -> None:
    codec = JsonCodec()
    value = {"\U0001f600": ["\U0001f680 launch", ("\u2603",)]}
    assert codec.decode(codec.encode(value)) == value


# ------------------------------------------------------------------------ hostile inputs (property)


tripped: list[str] = []


def _trip(reason: str) -> None:
    """Called only if a pickle payload is ever executed."""
    tripped.append(reason)


class Tripwire:
    """Unpickling this calls ``_trip``: decoding must never reach it unless correctly signed."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_trip, ("unpickled",))


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"format":"agentflux/json1","value":' + b"[" * depth + leaf + b"]" * depth + b"}"


def _hostile_codec() -> JsonCodec:
    codec = point_codec()

    def explode(data: Any) -> Any:
        raise {0: KeyError, 1: IndexError, 2: ZeroDivisionError}.get(len(str(data)) % 4, RuntimeError)("boom")

    codec.register(Decimal, str, explode, name="test.Exploding")
    return codec


tags = st.sampled_from(["dict", "tuple", "datetime", "bytes", "type", "pickle", "", None, 1])
type_names = st.sampled_from(["test.Point", "test.Exploding", "os.system", "builtins.eval"])
hostile_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["\ud800", "2024-01-01", "2024-01-01T00:00:00+00:00", "AAAA", "***"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["__af__", "value", "name", "x"]), children, max_size=3)
    | st.fixed_dictionaries({"__af__": tags, "value": children}, optional={"name": type_names | children})
    | st.fixed_dictionaries({"__af__": st.just("type"), "name": type_names, "value": children}),
    max_leaves=12,
)


def _hostile_document(value: Any) -> bytes:
    return json.dumps({"format": "agentflux/json1", "value": value}).encode()  # NaN literals allowed here


signed_for_a = SignedPickleCodec(KEY).encode(Tripwire(), context="token-a")
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    hostile_json.map(_hostile_document),
    st.integers(1, 100_000).map(_nested),
    st.integers(4000, 9000).map(lambda digits: _nested(1, b"7" * digits)),
    st.sampled_from([b"NaN", b"-Infinity", b"1e99999", b"-0", b'"\\ud800"']).map(lambda leaf: _nested(1, leaf)),
    st.just(pickle.dumps(Tripwire())),
    st.just(signed_for_a),
    st.just(b"AFPK1" + bytes(32) + pickle.dumps(Tripwire())),
)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a decoded value (iterative: values may be deep)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return True


@st.composite
def mutated(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    """Valid-looking bytes with a few flips, cuts or splices."""
    value = bytearray(draw(data))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and value:
            index = draw(st.integers(0, len(value) - 1))
            value[index] ^= draw(st.integers(1, 255))
        elif kind == "cut" and value:
            start = draw(st.integers(0, len(value) - 1))
            del value[start : start + draw(st.integers(1, 8))]
        else:
            index = draw(st.integers(0, len(value)))
            value[index:index] = draw(st.binary(min_size=1, max_size=8))
    return bytes(value)


@settings(max_examples=400, deadline=None)
@given(mutated(hostile_bytes), st.sampled_from([None, "token-a", "token-b"]))
def test_decoding_hostile_bytes_raises_only_codec_errors_and_runs_no_code(data: bytes, context: Any) -> None:
    tripped.clear()
    messages = []
    for codec in (_hostile_codec(), SignedPickleCodec(KEY)):
        try:
            decoded = codec.decode(data, context=context)
        except SemaphoreCodecError as exc:
            messages.append(str(exc))
        else:
            assert _finite(decoded), decoded  # what JSON cannot say is never read back
    assert all(messages)  # each says what was wrong
    # The only way to run the payload is its exact envelope decoded for its own token.
    genuine = data == signed_for_a and context == "token-a"
    assert tripped == (["unpickled"] if genuine else [])


@settings(max_examples=150, deadline=None)
@given(hostile_json)
def test_encoding_hostile_values_raises_only_codec_errors(value: Any) -> None:
    codec = _hostile_codec()
    try:
        data = codec.encode(value)
    except SemaphoreCodecError:
        return
    with contextlib.suppress(SemaphoreCodecError):  # tagged look-alikes are escaped, but may not round-trip
        codec.decode(data)
