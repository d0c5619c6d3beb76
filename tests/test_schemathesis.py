"""Property-based fuzzing of the control plane from its own OpenAPI schema (schemathesis):
whatever schemathesis sends, with an admin token, the agent never answers 5xx.

The agent runs for real (uvicorn, eSpeak NG, aiortc) on its own event loop in a thread,
because schemathesis' pytest integration calls it synchronously over HTTP.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from agent.settings import Settings
from tests.conftest import start_agent, stop_agent

MAX_EXAMPLES = 12  # per operation and phase: the whole run stays well under a minute

# WHEP bodies are SDP text: send whatever string schemathesis generates as it is
schemathesis.serializer.alias("application/sdp", "text/plain")


@pytest.fixture(scope="module")
def live_agent():
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            # short texts keep generated synthesize calls cheap; a high rate limit lets
            # fuzzing reach the handlers (429s are tested elsewhere)
            holder["running"] = loop.run_until_complete(
                start_agent(Settings(max_text_chars=200, rate_limit_per_min=1_000_000, room_grace_s=0)))
        except BaseException as exc:  # surfaced in the test thread below
            holder["error"] = exc
        started.set()
        if "running" in holder:
            loop.run_forever()

    thread = threading.Thread(target=serve, name="schemathesis-agent", daemon=True)
    thread.start()
    assert started.wait(60), "the agent did not start"
    if "error" in holder:
        raise holder["error"]
    running = holder["running"]
    yield running
    asyncio.run_coroutine_threadsafe(stop_agent(running), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def api_schema(live_agent):
    return schemathesis.openapi.from_url(f"{live_agent.base_url}/openapi.json")


@pytest.fixture(scope="module")
def admin_headers(live_agent) -> dict:
    return {"Authorization": f"Bearer {live_agent.admin_token()}"}


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, admin_headers):
    case.call_and_validate(headers=admin_headers, checks=[not_a_server_error], timeout=30)
