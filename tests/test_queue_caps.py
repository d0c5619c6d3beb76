"""Default caps on what a room and one sender in it may queue (agent/queue_caps.py), and a
sender's queue not outliving it. The Speaker on its deterministic stage (tone engine, fake
clock: tests/speaker_harness.py)."""

from __future__ import annotations

import pytest

from agent.protocol import ProtocolError
from agent.queue_caps import QueueCaps
from agent.settings import Settings
from tests.speaker_harness import Stage


def refused(stage: Stage, message: dict, sender: str = "tester") -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        stage.send(message, sender)
    assert err.value.code.value == "queue_full"
    return err.value


async def test_one_sender_cannot_fill_the_room_by_default():
    stage = Stage()
    caps = QueueCaps.from_settings(Settings())
    assert stage.speaker.caps == caps  # the Speaker's default is the settings' default
    for i in range(caps.sender_items + 1):  # the first plays at once, the rest wait
        stage.send({"type": "synthesize", "text": f"line {i}", "id": f"a{i}"}, "flooder")
    assert len(stage.speaker.queue) == caps.sender_items
    err = refused(stage, {"type": "synthesize", "text": "one more", "id": "over"}, "flooder")
    assert err.id == "over" and "64 utterances" in err.message
    # refused changes nothing: no event, and the id is still free for a later try
    assert not stage.of("queued", id="over") and not stage.of("dropped", id="over")
    stage.send({"type": "synthesize", "text": "another sender", "id": "b0"}, "someone-else")
    assert stage.speaker.queue[-1].id == "b0"
    stage.send({"type": "interrupt", "id": "a1"}, "flooder")  # room again under the sender's cap
    stage.send({"type": "synthesize", "text": "one more", "id": "over"}, "flooder")
    assert stage.speaker.queue[-1].id == "over"


async def test_room_caps_hold_against_many_senders():
    stage = Stage()
    stage.speaker.caps = QueueCaps(room_items=5, room_chars=10_000, sender_items=2, sender_chars=10_000)
    stage.send({"type": "synthesize", "text": "playing now", "id": "p"}, "s0")
    for i in range(5):
        stage.send({"type": "synthesize", "text": "x", "id": f"q{i}"}, f"s{i + 1}")
    assert "room has 5 utterances" in refused(stage, {"type": "synthesize", "text": "x", "id": "q5"}, "s9").message


async def test_character_caps_per_sender_and_per_room():
    stage = Stage()
    stage.speaker.caps = QueueCaps(room_items=100, room_chars=250, sender_items=100, sender_chars=100)
    stage.send({"type": "synthesize", "text": "playing " * 10, "id": "p"}, "a")  # playing: no longer queued
    stage.send({"type": "synthesize", "text": "y" * 60, "id": "a1"}, "a")
    assert "100 characters" in refused(stage, {"type": "synthesize", "text": "y" * 41, "id": "a2"}, "a").message
    stage.send({"type": "synthesize", "text": "y" * 40, "id": "a2"}, "a")
    stage.send({"type": "synthesize", "text": "z" * 100, "id": "b1"}, "b")
    assert "250 characters" in refused(stage, {"type": "synthesize", "text": "w" * 51, "id": "c1"}, "c").message


async def test_appending_to_a_queued_utterance_counts_too():
    stage = Stage()
    stage.speaker.caps = QueueCaps(room_items=100, room_chars=10_000, sender_items=100, sender_chars=100)
    stage.send({"type": "synthesize", "text": "playing", "id": "p"}, "other")
    stage.send({"type": "synthesize", "text": "open ", "id": "o", "final": False}, "llm")
    stage.send({"type": "append", "id": "o", "text": "a" * 90}, "llm")
    refused(stage, {"type": "append", "id": "o", "text": "a" * 10}, "llm")
    assert len(stage.speaker.queue[0].text) == 95  # the refused append added nothing


async def test_a_danmu_max_queue_still_drops_the_oldest_instead():
    stage = Stage()
    stage.speaker.caps = QueueCaps(room_items=3, room_chars=10_000, sender_items=100, sender_chars=10_000)
    stage.send({"type": "configure", "danmu": {"max_queue": 3}})
    for i in range(6):
        stage.send({"type": "synthesize", "text": f"chat {i}", "id": f"c{i}"}, "bridge")
    assert [d["id"] for d in stage.of("dropped", reason="queue_full")] == ["c1", "c2"]


async def test_a_senders_queue_goes_with_it_and_its_open_utterance_ends():
    stage = Stage()
    stage.send({"type": "synthesize", "text": "Hello from the bot", "id": "open", "final": False}, "bot")
    for i in range(3):
        stage.send({"type": "synthesize", "text": f"later {i}", "id": f"bot{i}"}, "bot")
    stage.send({"type": "synthesize", "text": "from a person", "id": "person"}, "person")
    await stage.settle()
    stage.speaker.drop_sender("bot")
    assert [e["id"] for e in stage.of("interrupted", reason="disconnect")] == ["bot0", "bot1", "bot2"]
    assert [u.id for u in stage.speaker.queue] == ["person"]
    # the open utterance that was playing ends with what it had, then the room goes on
    await stage.play_until_idle()
    assert stage.of("finished", id="open") and stage.of("finished", id="person")


# -- LiveKit rooms: a participant's queue leaves with it too ------------------------------------

from tests.test_livekit_transport import lk, packet, participant  # noqa: E402,F401 (fixture)


async def test_a_livekit_participant_leaving_takes_its_queue(lk):  # noqa: F811
    _, lk_room, session, pub = lk
    alice, bob = participant("alice"), participant("bob")
    for who in (alice, bob):
        lk_room.emit("participant_connected", who)
    long = "Alice keeps talking for quite a while, sentence after sentence. " * 4
    lk_room.emit("data_received", packet({"type": "synthesize", "text": long, "id": "a0"}, alice))
    for uid, who in (("a1", alice), ("a2", alice), ("b1", bob)):
        lk_room.emit("data_received", packet({"type": "synthesize", "text": "later", "id": uid}, who))
    await pub.wait_for(lambda: pub.events("started"))
    lk_room.emit("participant_disconnected", alice)
    gone = await pub.wait_for(lambda: len(pub.events("interrupted")) >= 2 and pub.events("interrupted"))
    assert [(e["id"], e["reason"]) for e in gone] == [("a1", "disconnect"), ("a2", "disconnect")]
    speaker = session.room.speaker
    assert [u.id for u in speaker.queue] == ["b1"] and speaker.current.id == "a0"  # bob stays, so the room
