"""`tts-agent bridge irc` against a server speaking Twitch's IRC dialect (tests/twitch_double.py:
Twitch itself cannot be reached here) and the real agent with a real aiortc peer in the room.

The double answers as Twitch does where a general IRC client stumbles: the two-field
`004 <user> :-`, `421 Unknown command` for what it does not serve, no answer to WHOIS. Every
chatter's first line must be read; moderation (CLEARMSG, CLEARCHAT) must reach the room; bits,
highlighted messages, subscriptions and channel-point redemptions go first.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridges.backoff import Backoff
from bridges.irc import IrcBridge
from bridges.sink import AdminToken, SpeakSink
from tests.conftest import start_agent, stop_agent
from tests.twitch_double import TwitchDouble

from .test_bridge_irc import spoken_text, until

CHANNEL = "#streamer"
ROOM = "twitch-room"
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)  # ~15 s at speed 2: plays while we moderate


@pytest.fixture
async def stack():
    double = TwitchDouble()
    await double.start()
    running = await start_agent()
    client = await running.client(ROOM)
    client.send({"type": "configure", "speed": 2.0, "danmu": {"template": "{from} says {text}"}})
    client.send({"type": "ping", "t": 1})
    await client.wait_event("pong", t=1)  # the data channel is ordered: the rules are in place
    sink = SpeakSink(running.base_url, ROOM, AdminToken(api_key="devkey", api_secret="secret", room=ROOM),
                     bridge="irc")
    bridge = IrcBridge(double.address, CHANNEL, sink, backoff=Backoff(0.2, 1.0))
    task = asyncio.create_task(bridge.run())
    sink.start()
    await asyncio.wait_for(bridge.wait_joined(), 15)
    try:
        yield double, client, bridge, sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        await client.close()
        await stop_agent(running)
        await double.close()


def ids_of(client, type_: str) -> list[str]:
    return [e["id"] for e in client.events_of(type_)]


async def test_every_chatters_first_line_is_read_and_keepalives_and_reconnect_work(stack, caplog):
    double, client, bridge, sink = stack
    caplog.set_level(logging.INFO, logger="tts_agent.bridge")
    sent = double.commands_received()
    assert sent[0] == "CAP" and double.received[0] == "CAP REQ :twitch.tv/tags twitch.tv/commands"
    assert bridge.caps == {"twitch.tv/tags", "twitch.tv/commands"}

    chatters = ["alice", "bob", "carol", "dave", "erin", "frank"]
    msg_ids = [double.privmsg(CHANNEL, login, f"hello number {i}", display_name=login.title())
               for i, login in enumerate(chatters)]
    await until(lambda: len(client.events_of("finished")) == 6, timeout=60)
    # each line was read, under Twitch's message id, by its display name
    assert ids_of(client, "started") == msg_ids
    assert [spoken_text(client, i).split()[:2] for i in msg_ids] == [[c.title(), "says"] for c in chatters]
    assert "WHOIS" not in double.commands_received() and "WHO" not in double.commands_received()

    double.ping()
    await until(lambda: bridge.pings_answered == 1 and any(c.pongs == ["tmi.twitch.tv"] for c in double.clients))

    double.reconnect()  # Twitch's notice before a restart: the bridge connects again at once
    await asyncio.wait_for(bridge.wait_joined(more_than=1), 15)
    late = double.privmsg(CHANNEL, "grace", "back after the reconnect")
    await client.wait_event("finished", id=late, timeout=30)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert sink.counts["spoken"] == 7 and not client.events_of("error")


async def test_moderation_follows_chat_and_paid_lines_go_first(stack):
    double, client, bridge, sink = stack
    playing = double.privmsg(CHANNEL, "alice", LONG)
    await client.wait_event("started", id=playing, timeout=20)

    deleted = double.privmsg(CHANNEL, "bob", "this one a moderator deletes")
    banned = [double.privmsg(CHANNEL, "carol", f"spam line {i}", display_name="Carol") for i in range(2)]
    normal = double.privmsg(CHANNEL, "dave", "a plain line")
    bits = double.privmsg(CHANNEL, "erin", "Cheer100 great stream", bits=100, badges="bits/100")
    highlighted = double.privmsg(CHANNEL, "frank", "look at me", highlighted=True)
    sub = double.usernotice(CHANNEL, "resub", "grace", "grace subscribed for 6 months!", "love it", display_name="Grace",
                            cumulative_months="6", sub_plan="1000")
    reward = double.privmsg(CHANNEL, "heidi", "play my song", reward_id="f2d4c3b8-6a1e-4b8f-9c1d-2e3f4a5b6c7d")
    await until(lambda: {deleted, *banned, normal, bits, highlighted, sub, reward} <= set(ids_of(client, "queued")))

    double.clearmsg(CHANNEL, "bob", deleted, "this one a moderator deletes")
    double.clearchat(CHANNEL, "carol", ban_duration=600)  # a timeout: every queued line of carol goes
    double.clearmsg(CHANNEL, "alice", playing, LONG)  # the line being read is cut, with the fade
    cut = await client.wait_event("interrupted", id=playing, timeout=20)
    assert cut["played_ms"] > 0 and cut["reason"] == "interrupt"

    await client.wait_event("finished", id=normal, timeout=60)
    gone = {e["id"]: e for e in client.events_of("interrupted")}
    assert gone[deleted]["played_ms"] == 0 and all(gone[b]["played_ms"] == 0 for b in banned)
    started = ids_of(client, "started")
    assert deleted not in started and not set(banned) & set(started)
    # paid, highlighted, subscription and redemption lines went ahead of the earlier plain one
    assert started == [playing, bits, highlighted, sub, reward, normal]
    assert spoken_text(client, bits).split() == ["erin", "says", "great", "stream"]  # the cheermote is not read
    assert spoken_text(client, sub).startswith("Grace says grace subscribed for 6 months")

    first = double.privmsg(CHANNEL, "ivan", LONG)
    second = double.privmsg(CHANNEL, "judy", "waiting behind it")
    await client.wait_event("queued", id=second, timeout=20)
    double.clearchat(CHANNEL)  # the whole chat cleared: what plays and what waits
    await client.wait_event("interrupted", id=second, timeout=20)
    assert (await client.wait_event("interrupted", id=first))["played_ms"] >= 0
    assert second not in ids_of(client, "started")
    assert not client.events_of("error")
