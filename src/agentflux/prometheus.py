"""``agentflux.prometheus``: the Prometheus collector, where it has always been imported from.

The collector lives in ``agentflux.exporters.prometheus``; this module keeps the public
path working (``from agentflux.prometheus import FluxCollector``).
"""

from .exporters.prometheus import FluxCollector

__all__ = ["FluxCollector"]
