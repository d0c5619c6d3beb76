"""Fuzzing through a live aiortc peer: hostile messages on the `tts` data channel of a real
agent (uvicorn, aiortc, eSpeak NG) while another peer's utterance plays.

The messages come from the same strategies as tests/test_fuzz_protocol.py; here they cross
SCTP/DTLS and the transport's own message handling.
"""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from agent.protocol import MAX_MESSAGE_BYTES
from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.test_fuzz_protocol import MAX_TEXT, hostile

pytestmark = pytest.mark.e2e

STEADY = ("This utterance keeps playing while a stranger throws garbage at the room. "
          "It ends as it would in a quiet room.")
VOICE = "espeak:en-us"  # deterministic, unlike Piper's noise-driven durations
N_MESSAGES = 300
WEBRTC_STRING = 51  # SCTP payload protocol id of a text message (RFC 8831)


def hostile_messages(n: int) -> list[tuple[str | bytes, str]]:
    """n invalid messages with the code each must get, small enough for one SCTP message."""
    out: list[tuple[str | bytes, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        while len(out) < n:
            for message, code in st.lists(hostile, min_size=50, max_size=50).example():
                if isinstance(message, dict):
                    message = json.dumps(message)
                size = len(message.encode() if isinstance(message, str) else message)
                if 0 < size <= MAX_MESSAGE_BYTES:  # the agent advertises a 64 KB SCTP max-message-size
                    out.append((message, code))
    return out[:n]


async def wait_for(predicate, timeout: float = 20) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def agent():
    # 300 hostile messages at once, each to be answered: past a real client's message budget
    running = await start_agent(Settings(max_text_chars=MAX_TEXT, room_grace_s=0, peer_message_burst=N_MESSAGES + 100))
    try:
        yield running
    finally:
        await stop_agent(running)


async def test_hundreds_of_hostile_messages_each_get_one_error_and_speech_is_intact(agent):
    quiet = await agent.client("quiet", "listener")
    speaker = await agent.client("fuzzed", "speaker")
    stranger = await agent.client("fuzzed", "stranger")
    try:
        messages = hostile_messages(N_MESSAGES)
        # The reference: the same text in a quiet room, first. (eSpeak NG's output for a text
        # depends slightly on what its one engine thread synthesized before; played second,
        # the fuzzed room gets the same PCM, from the engine cache.)
        quiet.send({"type": "synthesize", "id": "steady", "text": STEADY, "voice": VOICE})
        reference = await quiet.wait_event("finished", id="steady")
        speaker.send({"type": "synthesize", "id": "steady", "text": STEADY, "voice": VOICE})
        await speaker.wait_event("started", id="steady")
        for message, _ in messages:
            stranger.channel.send(message)  # str → a text message, bytes → a binary one
        await wait_for(lambda: len(stranger.events_of("error")) >= len(messages))
        finished = await speaker.wait_event("finished", id="steady")

        errors = stranger.events_of("error")
        assert [e["code"] for e in errors] == [code for _, code in messages]
        assert errors[0]["_arrival"] > (await stranger.wait_event("started", id="steady"))["_arrival"]
        assert errors[-1]["_arrival"] < finished["_arrival"], "the fuzz did not overlap the utterance"
        assert speaker.events_of("error") == [], "errors go to their sender only"
        assert not speaker.events_of("interrupted")
        assert finished["audio_ms"] == reference["audio_ms"]
        # the room still serves the stranger and everyone else
        stranger.send({"type": "ping", "t": "still here"})
        await stranger.wait_event("pong", t="still here")
        speaker.send({"type": "synthesize", "id": "after", "text": "And the room goes on."})
        await speaker.wait_event("finished", id="after")
        assert len(agent.agent.rooms.get("fuzzed").peers) == 2
    finally:
        for c in (quiet, speaker, stranger):
            await c.close()


async def test_invalid_utf8_in_a_text_message_ends_only_the_senders_session(agent):
    """aiortc decodes text messages itself and its DTLS loop dies on invalid UTF-8, before
    the agent sees the message: the sender loses its own session. The room must not notice,
    and the agent must clean the dead session up."""
    speaker = await agent.client("utf8", "speaker")
    stranger = await agent.client("utf8", "stranger")
    try:
        speaker.send({"type": "synthesize", "id": "steady", "text": STEADY})
        await speaker.wait_event("started", id="steady")
        sctp = stranger.pc.sctp  # a text message whose bytes are not UTF-8, as a raw client can send
        await sctp._send(stranger.channel.id, WEBRTC_STRING, b'{"type": "ping", "t": "\xff\xfe"}')
        await wait_for(lambda: len(agent.agent.webrtc.sessions) == 1)
        assert [s.identity for s in agent.agent.webrtc.sessions.values()] == ["speaker"]
        assert list(agent.agent.rooms.get("utf8").peers) == [next(iter(agent.agent.webrtc.sessions.values())).peer_id]
        finished = await speaker.wait_event("finished", id="steady")
        assert not speaker.events_of("interrupted") and not speaker.events_of("error")
        assert finished["audio_ms"] > 0
        speaker.send({"type": "synthesize", "id": "after", "text": "Still speaking."})
        await speaker.wait_event("finished", id="after")
    finally:
        await speaker.close()
        await stranger.close()


async def test_deeply_nested_json_gets_an_error_and_the_session_lives(agent):
    stranger = await agent.client("deep", "stranger")
    try:
        depth = MAX_MESSAGE_BYTES // 2 - 1
        stranger.send("[" * depth + "]" * depth)
        error = await stranger.wait_event("error", timeout=5)
        assert error["code"] == "bad_message"
        stranger.send({"type": "ping", "t": 1})
        await stranger.wait_event("pong", timeout=5, t=1)
    finally:
        await stranger.close()
