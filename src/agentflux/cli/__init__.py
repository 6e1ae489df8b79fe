"""The ``agentflux`` command line, one module per command group (purgatory, workshop).

The top of the house: nothing imports it but the ``agentflux`` script and ``python -m agentflux``.
"""

from ._main import main, run

__all__ = ["main", "run"]
