"""Safe codecs for frozen agent state and for token fields kept in a store.

``JsonCodec`` (the default) writes JSON with a small set of tagged types and reads back
only what it wrote: it never imports or calls anything named by the data, so loading
state from storage cannot run code. ``SignedPickleCodec`` is the explicit opt-in for
arbitrary objects: the pickle is wrapped in an HMAC-SHA256 envelope and is unpickled
only after the signature checks out under the caller's key.

Both take an optional ``context`` (the token id the state is frozen for). The signed
envelope's MAC covers its format, its version and that context as well as the payload,
so state signed for one token is refused when it is placed in another token's row.
Every failure to encode or decode is a ``SemaphoreCodecError`` naming what was wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import pickle
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .._core._errors import SemaphoreCodecError

__all__ = ["JsonCodec", "SignedPickleCodec", "StateCodec"]

_TAG = "__af__"
_JSON_MAGIC = "agentflux/json1"
_PICKLE_MAGIC = b"AFPK2"
_PICKLE_UNBOUND = b"AFPK1"  # the first envelope: its MAC did not cover the token, so it is refused
_PICKLE_FORMAT = b"agentflux/pickle\x00"
_DIGEST = hashlib.sha256().digest_size
# A string escape that may start half of a surrogate pair: only JSON containing one needs
# the (slower) check for lone surrogates.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Context = str | bytes | None


def _context_bytes(context: Context) -> bytes:
    """The context as the MAC sees it: length-prefixed, and distinct for "no context"."""
    if context is None:
        return b"\x00"
    if isinstance(context, str):
        try:
            context = context.encode("utf-8")
        except UnicodeEncodeError:
            raise SemaphoreCodecError(f"codec context {context!r} is not valid text (a lone surrogate)") from None
    elif not isinstance(context, bytes):
        raise SemaphoreCodecError(f"codec context must be a str or bytes token id, got {type(context).__qualname__}")
    return b"\x01" + len(context).to_bytes(4, "big") + context


def _refuse_constant(name: str) -> Any:
    raise SemaphoreCodecError(f"state contains {name}, which is not JSON: non-finite floats are refused")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # a literal such as 1e400 overflows to infinity
        raise SemaphoreCodecError(f"state contains the number {text[:40]}, which is out of the float range")
    return value


@runtime_checkable
class StateCodec(Protocol):
    """Turns agent state into bytes and back."""

    def encode(self, value: Any, *, context: Context = None) -> bytes:
        """Freeze ``value`` for ``context`` (the id of the token that will carry it).

        Raises:
            SemaphoreCodecError: the value cannot be encoded by this codec.
        """
        ...

    def decode(self, data: bytes, *, context: Context = None) -> Any:
        """Thaw bytes written by ``encode`` with the same ``context``.

        Raises:
            SemaphoreCodecError: the data is malformed, unsigned, tampered, frozen for
                another context or of an unknown type.
        """
        ...


class JsonCodec:
    """JSON plus timezone-aware datetimes, bytes, tuples and registered types.

    ``register(cls, encode, decode)`` teaches the codec a type: ``encode(obj)`` must return
    JSON-compatible data (it is encoded recursively) and ``decode(data)`` rebuilds the object.

    Only real JSON is written and read: NaN and the infinities are refused (the literals
    ``NaN``/``Infinity`` too, and numbers such as ``1e400`` that overflow) unless ``float``
    is registered, in which case non-finite floats go through its handler as a tagged
    value (finite floats stay plain numbers). Strings
    with lone surrogates, integers of more digits than Python converts (4300) and nesting
    deeper than the interpreter's recursion limit are refused as well. JSON is not signed,
    so ``context`` is accepted and ignored: whoever can write the store can write any JSON
    state; use ``SignedPickleCodec`` when state must be bound to its token.
    """

    def __init__(self) -> None:
        self._by_type: dict[type, tuple[str, Callable[[Any], Any]]] = {}
        self._by_name: dict[str, Callable[[Any], Any]] = {}
        # None is the most common value by far (events without payload, no resolution yet).
        self._none = json.dumps({"format": _JSON_MAGIC, "value": None}, separators=(",", ":")).encode()
        self._str_prefix = self._none[: -len(b"null}")]
        self._dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        self._dumps_text = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode
        self._loads = json.JSONDecoder(parse_float=_parse_float, parse_constant=_refuse_constant).decode

    def register(
        self,
        cls: type,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
        *,
        name: str | None = None,
    ) -> None:
        """Allow instances of ``cls`` (exactly that type) in encoded state.

        Raises:
            ValueError: ``name`` (default: the class's qualified name) is already registered.
        """
        key = name or f"{cls.__module__}.{cls.__qualname__}"
        if key in self._by_name:
            raise ValueError(f"a type is already registered under {key!r}")
        self._by_type[cls] = (key, encode)
        self._by_name[key] = decode

    # ------------------------------------------------------------------ encode

    def _to_json(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            if float not in self._by_type:
                raise SemaphoreCodecError(
                    f"cannot encode non-finite float {value!r} at {path}: JSON has no NaN or Infinity "
                    "(register float with JsonCodec.register() to carry them)"
                )
        registered = self._by_type.get(type(value))
        if registered is not None:
            name, encode = registered
            try:
                encoded = encode(value)
            except SemaphoreCodecError:
                raise
            except Exception as exc:
                raise SemaphoreCodecError(
                    f"the encoder registered for {name!r} failed at {path}: {type(exc).__name__}: {exc}"
                ) from exc
            return {_TAG: "type", "name": name, "value": self._to_json(encoded, f"{path}<{name}>")}
        if isinstance(value, list):
            return [self._to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, tuple):
            return {_TAG: "tuple", "value": [self._to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise SemaphoreCodecError(f"cannot encode dict key {key!r} at {path}: keys must be str")
            encoded = {key: self._to_json(item, f"{path}.{key}") for key, item in value.items()}
            return {_TAG: "dict", "value": encoded} if _TAG in value else encoded
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise SemaphoreCodecError(f"cannot encode a naive datetime at {path}: give it a timezone")
            return {_TAG: "datetime", "value": value.isoformat()}
        if isinstance(value, (bytes, bytearray)):
            return {_TAG: "bytes", "value": base64.b64encode(bytes(value)).decode("ascii")}
        raise SemaphoreCodecError(
            f"cannot encode {type(value).__qualname__} at {path}: use JSON types, datetime, bytes, "
            "tuples, a type registered with JsonCodec.register(), or SignedPickleCodec"
        )

    def encode(self, value: Any, *, context: Context = None) -> bytes:
        """Encode ``value`` as JSON bytes (UTF-8); ``context`` is ignored (JSON is not signed).

        Raises:
            SemaphoreCodecError: something in ``value`` is not encodable (the message says where).
        """
        if value is None:
            return self._none
        try:
            if type(value) is str:  # the usual human answer: the same bytes as the general path
                data = self._str_prefix + self._dumps(value).encode() + b"}"
            else:
                data = self._dumps({"format": _JSON_MAGIC, "value": self._to_json(value, "$")}).encode()
        except RecursionError:
            raise SemaphoreCodecError("cannot encode: the value is nested too deeply") from None
        except ValueError as exc:  # an int of more digits than Python converts to text
            raise SemaphoreCodecError(f"cannot encode: {exc}") from None
        if b"\\ud" in data and _SURROGATE_ESCAPE.search(data) is not None:  # rare: beyond the BMP, or a lone half
            self._refuse_lone_surrogates(json.loads(data), "cannot encode")
        return data

    # ------------------------------------------------------------------ decode

    def _from_json(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._from_json(item) for item in value]
        if not isinstance(value, dict):
            return value
        tag = value.get(_TAG)
        if tag is None:
            return {key: self._from_json(item) for key, item in value.items()}
        inner = value.get("value")
        if tag == "dict" and isinstance(inner, dict):
            return {key: self._from_json(item) for key, item in inner.items()}
        if tag == "tuple" and isinstance(inner, list):
            return tuple(self._from_json(item) for item in inner)
        if tag == "datetime" and isinstance(inner, str):
            moment = datetime.fromisoformat(inner)
            if moment.tzinfo is None:
                raise SemaphoreCodecError("encoded datetime has no timezone")
            return moment
        if tag == "bytes" and isinstance(inner, str):
            return base64.b64decode(inner.encode("ascii"), validate=True)
        if tag == "type":
            name = value.get("name")
            decode = self._by_name.get(name) if isinstance(name, str) else None
            if decode is None:
                raise SemaphoreCodecError(f"unknown type {name!r} in encoded state: register it with JsonCodec")
            data = self._from_json(inner)
            try:
                return decode(data)
            except SemaphoreCodecError:
                raise
            except Exception as exc:
                raise SemaphoreCodecError(
                    f"the decoder registered for {name!r} refused its data: {type(exc).__name__}: {exc}"
                ) from exc
        raise SemaphoreCodecError(f"malformed tagged value {tag!r} in encoded state")

    def _refuse_lone_surrogates(self, document: Any, doing: str) -> None:
        """Raise if a string in ``document`` holds half a surrogate pair (it is not valid text)."""
        try:
            self._dumps_text(document).encode("utf-8")
        except RecursionError:
            raise SemaphoreCodecError(f"{doing}: the value is nested too deeply") from None
        except UnicodeEncodeError as exc:
            raise SemaphoreCodecError(
                f"{doing}: a string contains a lone surrogate {exc.object[exc.start : exc.end]!r}, "
                "which is not valid text"
            ) from None

    def decode(self, data: bytes, *, context: Context = None) -> Any:
        """Decode bytes written by ``encode``; nothing in the data is ever executed.

        ``context`` is ignored (JSON is not signed).

        Raises:
            SemaphoreCodecError: not this codec's format, malformed (not JSON, NaN, a lone
                surrogate, too deep, a huge int), an unregistered type, or a registered
                type's decoder failed.
        """
        if data == self._none:
            return None
        if not isinstance(data, (bytes, bytearray)):
            raise SemaphoreCodecError(f"state must be bytes, got {type(data).__qualname__}")
        try:
            document = self._loads(data.decode("utf-8"))
        except RecursionError:
            raise SemaphoreCodecError("state is nested too deeply to decode") from None
        except SemaphoreCodecError:
            raise
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise SemaphoreCodecError(f"state is not agentflux JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != _JSON_MAGIC or "value" not in document:
            raise SemaphoreCodecError("state is not agentflux JSON (missing format marker)")
        if b"\\u" in data and _SURROGATE_ESCAPE.search(data) is not None:
            self._refuse_lone_surrogates(document, "cannot decode state")
        try:
            return self._from_json(document["value"])
        except RecursionError:
            raise SemaphoreCodecError("state is nested too deeply to decode") from None
        except SemaphoreCodecError:
            raise
        except (ValueError, TypeError) as exc:
            raise SemaphoreCodecError(f"malformed value in encoded state: {exc}") from exc


class SignedPickleCodec:
    """Pickle inside an HMAC-SHA256 envelope: the explicit opt-in for arbitrary objects.

    Only data signed with the same key is unpickled; anything else raises before
    ``pickle`` sees a byte. Keep the key secret: whoever holds it can run code here.

    The envelope is ``AFPK2`` + MAC + pickle, the MAC covering the codec's format tag, the
    envelope version, the ``context`` (the token id the state was frozen for) and the
    pickle. State signed for one token is therefore refused when decoded for another
    (copying a row's state into another row replays nothing), and so is state signed
    for a token when decoded with no context, or the other way round. The first envelope
    (``AFPK1``, whose MAC covered only the pickle) is refused: it could be replayed.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("SignedPickleCodec(key) must be at least 16 bytes")
        self._key = key

    def _sign(self, payload: bytes, context: Context) -> bytes:
        signed = hmac.new(self._key, _PICKLE_FORMAT + _PICKLE_MAGIC, hashlib.sha256)
        signed.update(_context_bytes(context))
        signed.update(payload)
        return signed.digest()

    def encode(self, value: Any, *, context: Context = None) -> bytes:
        """Pickle ``value`` and sign it for ``context`` (the token id that will carry it).

        Raises:
            SemaphoreCodecError: ``value`` cannot be pickled, or ``context`` is not a str
                or bytes (or is not valid text).
        """
        try:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SemaphoreCodecError(f"cannot pickle {type(value).__qualname__}: {exc}") from exc
        return _PICKLE_MAGIC + self._sign(payload, context) + payload

    def decode(self, data: bytes, *, context: Context = None) -> Any:
        """Check the signature for ``context``, then unpickle.

        Raises:
            SemaphoreCodecError: unsigned, signed with another key, tampered with, signed
                for another context (token), or in the refused unbound ``AFPK1`` format.
        """
        if not isinstance(data, bytes):
            raise SemaphoreCodecError(f"state must be bytes, got {type(data).__qualname__}; refusing to unpickle it")
        if data.startswith(_PICKLE_UNBOUND):
            raise SemaphoreCodecError(
                "state is in the unbound AFPK1 envelope, which is refused: its signature does not name the "
                "token it belongs to, so it could be replayed into another token; freeze the state again"
            )
        if not data.startswith(_PICKLE_MAGIC):
            raise SemaphoreCodecError("state is not a signed agentflux pickle; refusing to unpickle it")
        signature = data[len(_PICKLE_MAGIC) : len(_PICKLE_MAGIC) + _DIGEST]
        payload = data[len(_PICKLE_MAGIC) + _DIGEST :]
        if len(signature) != _DIGEST or not hmac.compare_digest(signature, self._sign(payload, context)):
            bound = "no token" if context is None else f"token {context!r}"
            raise SemaphoreCodecError(
                f"signature mismatch for {bound}: the state was tampered with, signed with another key, "
                "or frozen for another token (state is bound to the token it was frozen for)"
            )
        try:
            return pickle.loads(payload)  # signed with our key for this context: trusted
        except Exception as exc:
            raise SemaphoreCodecError(f"signed state could not be unpickled: {exc}") from exc
