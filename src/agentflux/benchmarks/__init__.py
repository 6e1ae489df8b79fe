"""The flux benchmark workloads, shipped so that ``agentflux bench`` measures the user's machine.

Six workloads compare agentflux with a hand-written loop, an ``asyncio.Queue`` design and
aiostream (when installed) on the same work in one run, as ratios. The repository's
``bench/`` adds the purgatory, sources, workshop and web workloads on top of these.
"""

from ._run import FLUX_WORKLOADS, run_flux_workloads
from ._workloads import FULL, QUICK, BenchError, Results, Settings

__all__ = ["FLUX_WORKLOADS", "FULL", "QUICK", "BenchError", "Results", "Settings", "run_flux_workloads"]
