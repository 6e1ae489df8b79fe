"""The access token: from ``AGENTFLUX_TOKEN``, or generated once and kept (mode 0600)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

__all__ = ["load_token", "token_matches"]


def load_token(directory: str | os.PathLike[str] = ".agentflux") -> tuple[str, bool]:
    """The token and whether it was generated now.

    ``AGENTFLUX_TOKEN`` wins; else ``directory/token`` is read, or written first (created
    with mode 0600, so no other user can read it; an existing file is never widened).

    Raises:
        ValueError: the variable or the file holds an empty token.
    """
    given = os.environ.get("AGENTFLUX_TOKEN")
    if given is not None:
        if not given.strip():
            raise ValueError("AGENTFLUX_TOKEN is set but empty")
        return given.strip(), False
    path = Path(directory) / "token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server wrote it first: use theirs
            return load_token(directory)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(token + "\n")
        return token, True
    if not token:
        raise ValueError(f"{path} holds an empty token: delete it to have a new one generated")
    return token, False


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    if header is None:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))
