"""`tts-agent bridge jsonl`: JSON lines piped into the real CLI reach a real agent's room in order,
and a malformed line is reported on stderr and skipped."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bridges.jsonl import parse_line
from bridges.lines import ChatLine, LineFilter
from tests.conftest import start_agent, stop_agent

ROOM = "jsonl-room"


async def _bridge(base_url: str, stdin: bytes, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "bridge", "jsonl", "--room", ROOM, "--agent-url", base_url, *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, err.decode()


async def until(condition, timeout: float = 30) -> None:
    """Wait for a condition on the client's recorded events, re-checked as events arrive."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def _spoken_in_order(client) -> list[str]:
    """The text of each utterance that started, in the order it started (from its captions)."""
    out = []
    for started in client.events_of("started"):
        sentences = [c["text"] for c in client.events_of("caption")
                     if c["id"] == started["id"] and c.get("kind") == "sentence"]
        out.append(" ".join(sentences))
    return out


async def test_piped_lines_are_spoken_in_order_and_a_malformed_line_is_skipped():
    running = await start_agent()
    client = await running.client(ROOM)
    try:
        client.send({"type": "configure", "speed": 2.0, "danmu": {"template": "{from} says {text}"}})
        lines = b"\n".join([
            b'{"from": "alice", "text": "alpha"}',
            b'this is not json',
            b'{"from": "bob", "text": "bravo"}',
            b'{"from": "carol"}',
            b'{"from": "dave", "text": "!skip this command"}',
            b'{"from": "erin", "text": "charlie"}',
        ]) + b"\n"
        code, err = await _bridge(running.base_url, lines)
        assert code == 0, err
        assert "line 2: not JSON" in err
        assert "line 4: text: Field required" in err
        assert err.count("skipped") == 2
        # three lines were accepted; each ends with `finished`
        await until(lambda: len(client.events_of("finished")) >= 3)
        assert len(client.events_of("finished")) == 3
        spoken = _spoken_in_order(client)
        assert [s.split() for s in spoken] == [["alice", "says", "alpha"], ["bob", "says", "bravo"],
                                               ["erin", "says", "charlie"]], spoken
        assert not client.events_of("dropped")
    finally:
        await client.close()
        await stop_agent(running)


async def test_a_refused_token_stops_the_bridge_with_a_clear_error():
    running = await start_agent()
    client = await running.client(ROOM)
    try:
        code, err = await _bridge(running.base_url, b'{"from": "a", "text": "hello"}\n', "--api-secret", "wrong")
        assert code == 2
        assert "refused the token (401)" in err
        assert not client.events_of("started") and not client.events_of("queued")
    finally:
        await client.close()
        await stop_agent(running)


@pytest.mark.parametrize("raw, problem", [
    ("[1, 2]", "not a JSON object but list"),
    ('{"from": "a", "text": ""}', "text: String should have at least 1 character"),
    ('{"from": "a", "text": "hi", "colour": "red"}', "colour: Extra inputs are not permitted"),
    ('{"from": 7, "text": "hi"}', "from: Input should be a valid string"),
    ('{"from": "a", "text": "hi", "priority": "critical"}', "priority: Input should be 'normal' or 'high'"),
])
def test_malformed_lines_are_named(raw, problem):
    with pytest.raises(ValueError, match=problem):
        parse_line(raw)


def test_the_line_filter():
    f = LineFilter(ignore_senders=["Nightbot"], command_prefix="!", strip_links=True)
    assert f.admit(ChatLine("nightbot", "hello")) == (None, "ignored_sender")
    assert f.admit(ChatLine("amy", "  !uptime")) == (None, "command")
    assert f.admit(ChatLine("amy", "https://example.com/x")) == (None, "empty")
    line, reason = f.admit(ChatLine("amy", "look at www.example.com and bit.ly/abc now", "high"))
    assert reason is None and line == ChatLine("amy", "look at and now", "high")
    assert line.synthesize_body() == {"text": "look at and now", "from": "amy", "priority": "high"}
    assert LineFilter(command_prefix="").admit(ChatLine("amy", "!hi"))[0] == ChatLine("amy", "!hi")
