"""``python -m agentflux``."""

from ._cli import run

run()
