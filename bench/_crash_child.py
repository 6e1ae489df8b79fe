"""Child process of the crash benchmark: park and resolve in a loop, acknowledging each step.

Every line is printed (and flushed) only after the call returned, so the parent knows
exactly which operations the purgatory acknowledged before it was killed.
"""

from __future__ import annotations

import asyncio
import sys

from agentflux import SemaphoreReason, SemaphoreToken, open_purgatory


async def main(url: str) -> None:
    async with open_purgatory(url) as purgatory:
        print("ready", flush=True)
        number = 0
        while True:
            number += 1
            token = SemaphoreToken(
                reason=SemaphoreReason.APPROVAL_NEEDED, prompt=f"step {number}", frozen_state=b"s" * 1024
            )
            await purgatory.save(token)
            print(f"saved {token.id}", flush=True)
            if number % 3:  # leave every third token pending
                await purgatory.resolve(token.id, {"n": number})
                print(f"resolved {token.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
