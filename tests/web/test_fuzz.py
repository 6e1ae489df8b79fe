"""Fuzzing the API from its OpenAPI schema (schemathesis): no request makes it fail with a
server error or answer something its schema does not say, with the token or without."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from agentflux import open_purgatory
from agentflux.web import create_app
from agentflux.workshop import MockLLMClient

TOKEN = "fuzz-token"
# Tasks that ask for LLM dialogue talk to a mock: fuzzed options never reach the network.
APP = create_app(open_purgatory("memory://"), token=TOKEN, llm=lambda options: MockLLMClient())
# The event stream never ends by design: it has its own tests (test_events.py).
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/api/events")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_misbehave(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
