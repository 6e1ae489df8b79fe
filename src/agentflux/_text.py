"""Untrusted text (prompts, LLM output, events) made safe to print in a terminal."""

from __future__ import annotations

import re

__all__ = ["terminal_safe"]

# Control characters, newlines and tabs included: a prompt must not forge lines or move the cursor.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: object) -> str:
    """``text`` with every control character shown as ``\\xNN`` instead of acting on the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
