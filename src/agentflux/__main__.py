"""``python -m agentflux``."""

from .cli import run

run()
