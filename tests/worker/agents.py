"""Agents the worker tests load as module:attr (``worker.agents:...``)."""

from __future__ import annotations

import asyncio
from typing import Any

from agentflux import SemaphoreMixin, SemaphoreReason
from agentflux.semaphores._token import resuming_token_id


class Doubler(SemaphoreMixin):
    """Doubles ``n``; every tenth event asks a human first; ``poison`` always fails."""

    name = "doubler"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def invoke(self, fields: dict[str, str]) -> Any:
        if self.delay:
            await asyncio.sleep(self.delay)
        if fields.get("poison"):
            raise ValueError(f"poison event {fields['n']}")
        n = int(fields["n"])
        if n % 10 == 0:
            return self.yield_semaphore(SemaphoreReason.APPROVAL_NEEDED, f"double {n}?", {"n": n}, options=["yes"])
        return {"n": n, "doubled": 2 * n}

    async def resume(self, frozen_state: bytes, answer: Any) -> Any:
        n = self.restore_state(frozen_state)["n"]
        return {"n": n, "doubled": 2 * n, "approved": answer, "token": resuming_token_id.get()}


class SlowDoubler(Doubler):
    """The same, 10 ms per call (an I/O-bound agent)."""

    def __init__(self) -> None:
        super().__init__(delay=0.01)


class Identity:
    name = "identity"

    async def invoke(self, fields: dict[str, str]) -> dict[str, str]:
        return fields
