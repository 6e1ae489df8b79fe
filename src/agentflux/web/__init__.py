"""The web layer (the ``web`` extra: Starlette): an HTTP API to watch fluxes and answer approvals.

Above workshop and exporters, below the CLI (``agentflux serve``). Starlette is imported here
only, so the core installs and imports without it.
"""

from ._app import MAX_BODY, create_app
from ._auth import load_token
from ._events import EventLog

__all__ = ["MAX_BODY", "EventLog", "create_app", "load_token"]
