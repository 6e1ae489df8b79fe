"""Agents the scale-out benchmark's worker processes load (``bench._scale_agents:...``)."""

from __future__ import annotations

import asyncio


class Sleeper:
    """An I/O-bound agent: 10 ms per call (a model or an HTTP API), then its input back."""

    name = "sleeper"

    async def invoke(self, fields: dict[str, str]) -> dict[str, str]:
        await asyncio.sleep(0.01)
        return fields
