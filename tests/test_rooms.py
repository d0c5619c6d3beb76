"""The Room as the one door into the core: a failing sink, peers and gauges, read-only
fields, barge-in changes, events encoded once, the per-peer message budget.

Real Rooms, Speakers and the real FrameClock (ticking on the loop); the tone engine of the
Speaker tests stands in for synthesis, and the sinks record what a transport would send.
"""

from __future__ import annotations

import ast
import asyncio
import json
import pathlib

import numpy as np
import pytest

from agent import metrics
from agent.budget import MessageBudget, Verdict
from agent.clock import FrameClock
from agent.rooms import MAX_FAILED_FRAMES, Room, RoomLimit, RoomRegistry
from agent.settings import Settings
from engines.registry import VoiceRegistry

from .speaker_harness import ToneEngine, frames_for

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "Twelve words go out one frame at a time, all of them."


class Sink:
    """Records frames and events; `fail` says which send_frame calls raise (0-based)."""

    def __init__(self, room, fail=lambda n: False):
        self.frames: list[int] = []  # slots
        self.events: list[tuple[dict, str | None]] = []
        self.raw: list[bytes] = []
        self.calls = 0
        self.fail = fail
        self.closed = False
        self.changed = asyncio.Event()

    def send_frame(self, pcm, slot):
        n, self.calls = self.calls, self.calls + 1
        if self.fail(n):
            raise OSError("the network went away")
        self.frames.append(slot)

    def send_event(self, data, to):
        self.raw.append(data)
        self.events.append((json.loads(data), to))
        self.changed.set()

    def discard_buffered(self):
        return 0

    def close(self):
        self.closed = True
        self.changed.set()

    def of(self, type_):
        return [e for e, _ in self.events if e["type"] == type_]

    async def wait(self, predicate, timeout=20.0):
        async def poll():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(poll(), timeout)


def registry(**settings) -> RoomRegistry:
    s = Settings(room_grace_s=0, **settings)
    return RoomRegistry(s, VoiceRegistry([ToneEngine()], None), FrameClock())


def gauges() -> tuple[float, float]:
    return metrics.PEERS._value.get(), metrics.ROOMS._value.get()


async def test_a_sink_that_fails_once_costs_one_frame_and_the_utterance_finishes():
    reg = registry()
    sinks = []
    room = reg.open("once", lambda r: sinks.append(Sink(r, fail=lambda n: n == 3)) or sinks[-1])
    sink = sinks[0]
    room.add_peer("p", {"id": "p"})
    assert room.receive(json.dumps({"type": "synthesize", "id": "u", "text": TEXT}), "p") is None
    await sink.wait(lambda: sink.of("finished"))
    assert not room.closed and not sink.of("error")
    assert len(sink.frames) == frames_for(TEXT) - 1, "only the failed frame is missing"
    assert not room.subscribed and reg.clock.subscribers == 0, "idle again: off the clock"
    # and the room still speaks afterwards
    room.receive(json.dumps({"type": "synthesize", "id": "v", "text": "Again."}), "p")
    await sink.wait(lambda: len(sink.of("finished")) == 2)
    await reg.close_all()


async def test_a_sink_that_always_fails_closes_its_room_and_a_neighbour_keeps_every_frame():
    reg = registry()
    bad_sinks, good_sinks = [], []
    bad = reg.open("bad", lambda r: bad_sinks.append(Sink(r, fail=lambda n: True)) or bad_sinks[-1])
    good = reg.open("good", lambda r: good_sinks.append(Sink(r)) or good_sinks[-1])
    before = gauges()
    bad.add_peer("a", {"id": "a"})
    good.add_peer("b", {"id": "b"})
    long_text = " ".join([TEXT] * 3)
    good.receive(json.dumps({"type": "synthesize", "id": "g", "text": long_text}), "b")
    bad.receive(json.dumps({"type": "synthesize", "id": "x", "text": long_text}), "a")
    await bad_sinks[0].wait(lambda: bad_sinks[0].closed)
    assert bad.closed and reg.get("bad") is None
    errors = bad_sinks[0].of("error")
    assert len(errors) == 1 and errors[0]["code"] == "engine_error" and bad_sinks[0].events[-2][1] is None
    assert bad_sinks[0].calls == MAX_FAILED_FRAMES
    assert [e["reason"] for e in bad_sinks[0].of("interrupted")] == ["disconnect"]
    await good_sinks[0].wait(lambda: good_sinks[0].of("finished"))
    assert len(good_sinks[0].frames) == frames_for(long_text) == -(-good_sinks[0].of("finished")[0]["audio_ms"] // 20)
    assert gauges() == (before[0] + 1, before[1] - 1), "the closed room's peer and room left the gauges"
    await reg.close_all()


async def test_peers_joining_and_leaving_in_any_order_leave_the_gauges_where_they_were():
    before = gauges()
    reg = registry()
    sink_of = lambda r: Sink(r)
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        room = reg.open("lobby", sink_of)
        ids = [f"p{i}" for i in range(3)]
        for peer in ids:
            room.add_peer(peer, {"id": peer})
        with pytest.raises(ValueError):
            room.add_peer("p0", {"id": "p0"})
        assert gauges() == (before[0] + 3, before[1] + 1)
        for i in order:
            room.remove_peer(ids[i])
            room.remove_peer(ids[i])  # twice: nothing more
        await asyncio.wait_for(_until(lambda: reg.get("lobby") is None), 10)  # grace 0: closes on the loop
        assert room.closed
        assert gauges() == before
    # a room closed with peers in it (shutdown) takes them off the gauge too
    room = reg.open("full", sink_of)
    room.add_peer("x", {"id": "x"})
    room.add_peer("y", {"id": "y"})
    await reg.close_all()
    assert gauges() == before


async def test_a_room_limit_refuses_and_another_transport_cannot_take_a_room_over():
    reg = registry(max_peers_per_room=1)
    make = lambda r: Sink(r)
    room = reg.open("small", make)
    room.add_peer("a", {})
    with pytest.raises(RoomLimit):
        room.add_peer("b", {})
    with pytest.raises(RoomLimit):
        reg.open("small", lambda r: Sink(r))
    assert reg.open("small", make) is room
    await reg.close_all()


def test_room_fields_are_read_only():
    reg = RoomRegistry(Settings(), VoiceRegistry([ToneEngine()], None), FrameClock())
    room = Room("ro", reg.voices, reg.clock, reg.settings, lambda r: Sink(r))
    room.add_peer("p", {"id": "p", "participants": 0})
    for name in ("name", "settings", "created", "closed", "frames_sent", "sink", "speaker", "subscribed", "peers",
                 "barge_in", "idle"):
        with pytest.raises(AttributeError):
            setattr(room, name, None)
    with pytest.raises(TypeError):
        room.peers["q"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        room.peers["p"]["participants"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        reg.rooms["x"] = room  # type: ignore[index]
    room.update_peer("p", participants=2)
    assert room.peers["p"]["participants"] == 2


def _writes_to_rooms(path: pathlib.Path) -> list[str]:
    """Assignments in a module to anything reached through a `room` (its fields, its peers)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        calls = [node] if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "pop", "clear", "update", "setdefault", "__setitem__") else []
        for target in targets + [c.func.value for c in calls]:
            chain = ast.unparse(target)
            if isinstance(target, (ast.Attribute, ast.Subscript)) and any(
                    part in ("room", "rooms") for part in chain.replace("[", ".").split(".")[:-1]):
                found.append(f"{path.name}:{node.lineno}: {chain}")
    return found


def test_no_transport_or_control_plane_module_writes_a_room():
    modules = sorted((ROOT / "agent" / "transports").glob("*.py")) + sorted((ROOT / "control_api").rglob("*.py"))
    assert modules
    assert [w for m in modules for w in _writes_to_rooms(m)] == []


def test_the_control_plane_reaches_the_agent_only_through_its_interface():
    private = {"rooms", "webrtc", "clock", "sessions", "listening"}
    found = []
    for path in sorted((ROOT / "control_api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private and ast.unparse(node.value) == "agent":
                found.append(f"{path.name}:{node.lineno}: agent.{node.attr}")
    assert found == []


async def test_a_configure_that_changes_barge_in_is_announced_once():
    reg = registry()
    room = reg.open("listen", lambda r: Sink(r))
    seen = []
    stop = room.on_barge_in(lambda config: seen.append(config.mode))
    room.receive(json.dumps({"type": "configure", "barge_in": {"mode": "duck"}}), "p")
    room.receive(json.dumps({"type": "configure", "speed": 1.2}), "p")  # no barge-in change
    room.receive(json.dumps({"type": "configure", "barge_in": {"mode": "sideways"}}), "p")  # refused
    room.receive(json.dumps({"type": "configure", "barge_in": {"mode": "off"}}), "p")
    stop()
    room.receive(json.dumps({"type": "configure", "barge_in": {"mode": "interrupt"}}), "p")
    assert seen == ["duck", "off"] and room.barge_in.mode == "interrupt"
    await reg.close_all()


async def test_each_event_is_encoded_once_and_the_same_bytes_reach_every_peer(monkeypatch):
    from agent.transports import webrtc

    sent: list[tuple[object, bytes]] = []
    monkeypatch.setattr(webrtc, "_send", lambda channel, data: sent.append((channel, data)))
    reg = registry()
    room = reg.open("fanout", lambda r: webrtc.OpusRoomSink(r, 32_000))
    channels = [object(), object(), object()]
    for i, ch in enumerate(channels):
        room.add_peer(f"p{i}", {})
        room.sink.channels[f"p{i}"] = ch
    room.receive(json.dumps({"type": "synthesize", "id": "u", "text": "Hi there."}), "p0")
    await asyncio.wait_for(_until(lambda: any(b'"finished"' in d for _, d in sent)), 20)
    by_event: dict[int, list] = {}
    for ch, data in sent:
        by_event.setdefault(id(data), []).append(ch)
    assert all(chs == channels for chs in by_event.values()), "one bytes object per event, to every peer"
    assert all(isinstance(d, bytes) for _, d in sent)
    await reg.close_all()


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)


def test_the_message_budget_drops_tells_once_a_second_and_gives_up_on_a_flood():
    now = [0.0]
    budget = MessageBudget(rate=100, burst=200, flood_limit=1000, clock=lambda: now[0])
    verdicts = [budget.take() for _ in range(200)]
    assert set(verdicts) == {Verdict.accept}
    assert budget.take() is Verdict.drop_and_tell
    assert {budget.take() for _ in range(50)} == {Verdict.drop}
    now[0] = 0.5  # 50 tokens back
    assert [budget.take() for _ in range(50)] == [Verdict.accept] * 50
    assert budget.take() is Verdict.drop  # told less than a second ago
    now[0] = 1.0
    verdicts = [budget.take() for _ in range(2000)]
    assert verdicts[:50] == [Verdict.accept] * 50 and Verdict.drop_and_tell in verdicts
    assert Verdict.disconnect in verdicts
    # a client just over its budget is never disconnected
    steady = MessageBudget(rate=100, burst=200, flood_limit=1000, clock=lambda: now[0])
    for step in range(6000):  # 60 s at 120 messages a second
        now[0] = 10 + step / 120
        assert steady.take() is not Verdict.disconnect


async def test_over_its_budget_a_peer_gets_rate_limited_at_most_once_a_second_then_is_disconnected():
    reg = registry(peer_messages_per_s=10, peer_message_burst=20, peer_flood_drops=100)
    room = reg.open("flood", lambda r: Sink(r))
    gone = []
    room.add_peer("flooder", {}, disconnect=lambda: gone.append("flooder"))
    room.add_peer("quiet", {})
    replies = [room.receive('{"type":"ping"}', "flooder") for _ in range(150)]
    codes = [r["type"] if r["type"] == "pong" else r["code"] for r in replies if r is not None]
    assert codes[:20] == ["pong"] * 20
    assert codes[20:] == ["rate_limited", "rate_limited"], codes[20:]  # the first drop, then the disconnect
    assert gone == ["flooder"]
    assert room.receive('{"type":"ping","t":1}', "quiet")["type"] == "pong", "another peer's budget is its own"
    await reg.close_all()


def test_a_quiet_former_flooder_budget_is_full_again_and_can_be_forgotten():
    now = [0.0]
    budget = MessageBudget(rate=100, burst=200, flood_limit=1000, clock=lambda: now[0])
    for _ in range(500):
        budget.take()  # 200 accepted, 300 dropped
    assert not budget.full
    now[0] = 2.0  # 200 tokens and 200 drops forgiven: not yet all of them
    assert not budget.full
    now[0] = 3.5
    assert budget.full


async def test_a_failing_output_tap_is_removed_and_the_room_keeps_every_frame():
    reg = registry()
    sinks = []
    room = reg.open("tapped", lambda r: sinks.append(Sink(r)) or sinks[-1])
    sink = sinks[0]
    room.add_peer("p", {"id": "p"})
    taps = []

    def broken(frame, slot):
        taps.append(slot)
        raise RuntimeError("a listener bug")

    room.add_output_tap(broken)
    room.receive(json.dumps({"type": "synthesize", "id": "u", "text": TEXT}), "p")
    await sink.wait(lambda: sink.of("finished"))
    assert len(taps) == 1, "called once, then removed"
    assert len(sink.frames) == frames_for(TEXT) and not sink.of("error") and not room.closed
    await reg.close_all()
