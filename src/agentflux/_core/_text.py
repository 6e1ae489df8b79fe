"""Untrusted text (prompts, LLM output, events, error bodies) made safe to print in a terminal."""

from __future__ import annotations

import re

__all__ = ["has_surrogates", "terminal_safe", "valid_text"]

# What would act on the terminal or on how the text reads rather than be shown:
# C0 controls (ESC, BEL, CR, BS, ... newlines and tabs too), DEL and C1 controls (CSI U+009B);
# bidi marks, embeddings, overrides and isolates (U+061C, U+200E/F, U+202A-E, U+2066-9), which
# reorder what follows them; the Unicode line and paragraph separators (U+2028/9), which some
# terminals break lines at; and lone surrogates, which cannot be written as UTF-8 at all.
_OTHERS = r"\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff"
_ONE_LINE = re.compile(rf"[\x00-\x1f{_OTHERS}]")
# Multi-line text (an artifact, a dialogue line) keeps its newlines and tabs.
_MULTILINE = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHERS}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, multiline: bool = False) -> str:
    """``text`` with every character that would act on the terminal shown escaped instead.

    Control characters become ``\\xNN``; bidi controls, line separators and lone surrogates
    become ``\\uNNNN``. Newlines and tabs are escaped too (a prompt must not forge lines of
    a listing) unless ``multiline`` is true.
    """
    return (_MULTILINE if multiline else _ONE_LINE).sub(_escape, str(text))


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate (text no UTF-8 store or JSON codec takes, as an
    LLM's or a server's answer may hold) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (bytes that were not UTF-8 arrive as such)."""
    return _SURROGATE.search(text) is not None
