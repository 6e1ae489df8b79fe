"""A token as plain JSON data, for every place that shows one (the CLI, the HTTP API)."""

from __future__ import annotations

import json
from typing import Any

from ._token import SemaphoreToken

__all__ = ["json_safe", "token_json"]


def json_safe(value: Any) -> Any:
    """``value`` as JSON data: what JSON cannot hold becomes its ``repr`` (text, never code)."""
    return json.loads(json.dumps(value, default=repr))


def token_json(token: SemaphoreToken) -> dict[str, Any]:
    """Every field of ``token`` as JSON data (the frozen state by its size only)."""
    return {
        "id": token.id,
        "status": token.status.value,
        "reason": token.reason.value,
        "severity": token.severity,
        "prompt": token.prompt,
        "options": list(token.options),
        "flux_id": token.flux_id,
        "original_event": json_safe(token.original_event),
        "deadline": token.deadline.isoformat() if token.deadline else None,
        "escalation": token.escalation,
        "created_at": token.created_at.isoformat(),
        "resolution": json_safe(token.resolution),
        "resolved_at": token.resolved_at.isoformat() if token.resolved_at else None,
        "resolved_by": token.resolved_by,
        "frozen_state_bytes": len(token.frozen_state),
    }
