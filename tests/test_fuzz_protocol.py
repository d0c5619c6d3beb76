"""Fuzzing the room protocol: hostile messages into a real `Room` (real `parse_command`,
real Speaker) while an utterance plays.

Each generated message is invalid by construction and carries the error code it must get.
For every one: `Room.receive` does not raise, answers exactly one `error` (to the sender, as
its return value) with that code, and emits nothing to the room. The utterance playing
meanwhile finishes with the same frames, sample for sample, as in a quiet room.

The room runs on the deterministic stage of tests/speaker_harness.py: the tone engine and a
manual frame clock (one `tick` = one 20 ms slot), so thousands of cases run in seconds.
"""

from __future__ import annotations

import asyncio
import json
import string
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.protocol import MAX_MESSAGE_BYTES
from agent.rooms import Room
from agent.settings import Settings
from engines.registry import VoiceRegistry

from .speaker_harness import ToneEngine

MAX_TEXT = 200  # the room's max_text_chars here: text_too_long is cheap to reach
UTTERANCE = "Steady words that must arrive intact. Whatever strangers type meanwhile, nothing changes."
FIELDS = {
    "synthesize": {"type", "text", "id", "voice", "priority", "speed", "final", "from"},
    "append": {"type", "id", "text", "final"},
    "interrupt": {"type", "id", "from"},
    "configure": {"type", "voice", "speed", "danmu", "barge_in"},
    "ping": {"type", "t"},
}
ALL_FIELDS = set().union(*FIELDS.values())


class ManualClock:
    """The frame clock's interface, advanced by the test: the current slot is `slot`."""

    def __init__(self) -> None:
        self.slot = 0
        self.subscribers: set = set()

    def subscribe(self, room) -> None:
        room.phase = 0
        self.subscribers.add(room)

    def unsubscribe(self, room) -> None:
        self.subscribers.discard(room)

    def slot_now(self, phase: int = 0) -> int:
        return self.slot


@dataclass
class RecordingSink:
    frames: list[np.ndarray] = field(default_factory=list)
    events: list[tuple[dict, str | None]] = field(default_factory=list)
    closed: bool = False

    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        self.frames.append(pcm.copy())

    def send_event(self, data: str, to: str | None) -> None:
        self.events.append((json.loads(data), to))

    def discard_buffered(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def make_room() -> tuple[Room, ManualClock, RecordingSink]:
    clock = ManualClock()
    sink = RecordingSink()
    room = Room("fuzz", VoiceRegistry([ToneEngine()]), clock, Settings(max_text_chars=MAX_TEXT),  # type: ignore[arg-type]
                lambda _room: sink)
    return room, clock, sink


async def tick(room: Room, clock: ManualClock) -> None:
    for _ in range(3):  # let synthesis (one asyncio.sleep(0) per chunk) keep up
        await asyncio.sleep(0)
    clock.slot += 1
    if room in clock.subscribers:
        room.on_tick(clock.slot)


# -- hostile messages, each with the code it must get ----------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
control_text = st.text(alphabet=st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\u2028\u2029\ufeff"),
                       min_size=1, max_size=30)
foreign_keys = st.text(min_size=1, max_size=12).filter(lambda k: k not in ALL_FIELDS)


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def bad(message, code: str = "bad_message"):
    return (message, code)


not_objects = (json_scalars | st.lists(json_values, max_size=4)).map(lambda v: bad(dumps(v)))
no_type = st.dictionaries(foreign_keys, json_values, max_size=4).map(lambda d: bad(dumps(d)))
unknown_type = st.builds(lambda t, d: bad(dumps({"type": t, **d})),
                         json_values.filter(lambda t: not isinstance(t, str) or t not in FIELDS), st.dictionaries(foreign_keys, json_values, max_size=3))


@st.composite
def unknown_field(draw):
    """A well-formed command plus one field the protocol does not have (a typo)."""
    base = draw(st.sampled_from([{"type": "synthesize", "text": "hi"}, {"type": "append", "id": "a", "text": "x"},
                                 {"type": "interrupt"}, {"type": "configure"}, {"type": "ping"}]))
    key = draw(foreign_keys | st.sampled_from(["priorty", "Text", "TYPE", "voice_id", "danmu_rules"]))
    return bad(dumps({**base, key: draw(json_values)}))


def not_a(*kinds):
    return json_values.filter(lambda v: not isinstance(v, kinds))


@st.composite
def wrong_type(draw):
    """A field of the right name with a value of the wrong type or out of its range."""
    kind, field_name, value = draw(st.sampled_from([
        ("synthesize", "text", not_a(str)),
        ("synthesize", "text", st.just("")),
        ("synthesize", "id", not_a(str, type(None))),
        ("synthesize", "id", st.text(min_size=129, max_size=300)),
        ("synthesize", "priority", json_values.filter(lambda v: v not in ("normal", "high", "critical"))),
        ("synthesize", "speed", not_a(int, float, type(None)).filter(lambda v: not _number_text(v))),
        ("synthesize", "speed", st.floats(allow_nan=False).filter(lambda f: not 0.5 <= f <= 2.0)),
        ("synthesize", "final", not_a(bool)),
        ("synthesize", "from", not_a(str, type(None))),
        ("append", "id", not_a(str)),
        ("append", "text", not_a(str)),
        ("interrupt", "id", not_a(str, type(None))),
        ("configure", "danmu", not_a(dict, type(None))),
        ("configure", "danmu", st.fixed_dictionaries({"max_queue": st.integers(max_value=0) | st.text()})),
        ("configure", "barge_in", st.fixed_dictionaries({"mode": st.text().filter(lambda m: m not in ("interrupt", "duck", "off"))})),
        ("configure", "speed", st.sampled_from(["fast", [], {}, ""])),
    ]).map(lambda t: (t[0], t[1], t[2])))
    message = {"type": kind, **({"text": "ok"} if kind == "synthesize" else {}), **({"id": "a", "text": "x"} if kind == "append" else {})}
    message[field_name] = draw(value)
    return bad(dumps(message))


def _number_text(v) -> bool:
    """Lax pydantic turns "1.5" into a float; see test_speed_takes_numbers_only."""
    try:
        float(v)
        return isinstance(v, str)
    except (TypeError, ValueError):
        return False


not_json = st.builds(lambda junk, t: junk + t, st.sampled_from(["{", "}", "'", "{'type': 'ping'}", "nul", "\x00", "{\"type\""]),
                     st.text(max_size=200)).filter(lambda s: not _is_json(s)).map(bad)


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


invalid_utf8 = st.builds(lambda a, junk, b: bad(a + junk + b), st.binary(max_size=100),
                         st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]), st.binary(max_size=100))
invalid_utf8_in_json = st.builds(lambda junk: bad(b'{"type": "synthesize", "text": "' + junk + b'"}'),
                                 st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))


# Nesting the JSON parser still takes (it recurses; ~1000 levels is its limit); deeper: see
# test_nesting_deeper_than_the_parser_takes_is_a_bad_message.
PARSER_DEPTH = 500
deep_lists = st.integers(min_value=2, max_value=PARSER_DEPTH).map(lambda d: bad("[" * d + "]" * d))
deep_objects = st.integers(min_value=2, max_value=PARSER_DEPTH).map(
    lambda d: bad('{"type": "ping", "t": 1, "x": ' + '{"a":' * d + "1" + "}" * (d + 1)))
deep_unclosed = st.integers(min_value=10, max_value=PARSER_DEPTH).map(lambda d: bad("[" * d))
control_chars = st.one_of(
    control_text.map(lambda t: bad(dumps({"type": "synthesize", "text": "hi", t: 1}))),  # as a field name
    control_text.map(lambda t: bad(dumps({"type": "synthesize" + t, "text": "hi"}))),  # glued to the type
    control_text.filter(lambda t: any(ord(c) < 0x20 for c in t)).map(  # raw, unescaped in a JSON string
        lambda t: bad('{"type": "synthesize", "text": "' + t + '"}')),
)
too_long_text = st.integers(min_value=MAX_TEXT + 1, max_value=MAX_TEXT * 50).map(
    lambda n: bad(dumps({"type": "synthesize", "id": "long", "text": "ä" * n}), "text_too_long"))
oversized = st.integers(min_value=MAX_MESSAGE_BYTES + 1, max_value=MAX_MESSAGE_BYTES + 4096).flatmap(
    lambda n: st.sampled_from([bad("x" * n), bad(dumps({"type": "ping", "t": "y" * n})),
                               bad(dumps({"type": "synthesize", "text": "z" * n}).encode())]))
near_limit = st.integers(min_value=MAX_MESSAGE_BYTES - 64, max_value=MAX_MESSAGE_BYTES).flatmap(
    lambda n: st.sampled_from([  # a message of n bytes, whole (text too long) or cut short (not JSON)
        bad(dumps({"type": "synthesize", "text": "w" * (n - 34)}), "text_too_long"),
        bad(dumps({"type": "synthesize", "text": "w" * (n - 34)})[:-2]),
    ]))
semantic = st.one_of(
    st.text(max_size=40).map(lambda v: bad(dumps({"type": "synthesize", "text": "hi", "voice": "nope:" + v}),
                                           "unknown_voice")),
    st.text(min_size=1, max_size=40).map(lambda i: bad(dumps({"type": "append", "id": "ghost-" + i, "text": "x"}),
                                                        "unknown_utterance")),
    st.text(min_size=1, max_size=40).map(lambda i: bad(dumps({"type": "interrupt", "id": "ghost-" + i}),
                                                        "unknown_utterance")),
    st.just(bad(dumps({"type": "synthesize", "id": "steady", "text": "again"}), "duplicate_id")),
    st.just(bad(dumps({"type": "configure", "voice": "nope:none"}), "unknown_voice")),
)
as_dict = st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(
    lambda d: bad({"type": "synthesize", "text": "hi", "voice ": d}))  # the HTTP path hands dicts in

hostile = st.one_of(not_objects, no_type, unknown_type, unknown_field(), wrong_type(), not_json, invalid_utf8,
                    invalid_utf8_in_json, deep_lists, deep_objects, deep_unclosed, control_chars, too_long_text,
                    oversized, near_limit, semantic, as_dict)


async def play(messages: list) -> tuple[list[np.ndarray], dict, list[tuple[dict, str | None]]]:
    """Speak UTTERANCE while feeding one message per slot; returns frames, `finished`, events."""
    room, clock, sink = make_room()
    assert room.receive(dumps({"type": "synthesize", "id": "steady", "text": UTTERANCE}), "speaker") is None
    pending = list(messages)
    for _ in range(2000):
        await tick(room, clock)
        if pending:
            message, code = pending.pop(0)
            before = len(sink.events)
            reply = room.receive(message, "stranger")
            assert reply is not None and reply["type"] == "error", (message[:200], reply)
            assert reply["code"] == code, (message[:200] if isinstance(message, (str, bytes)) else message, reply)
            assert sink.events[before:] == [], "an invalid message changed something in the room"
        if not pending and room.speaker.idle:
            break
    finished = [e for e, _ in sink.events if e["type"] == "finished"]
    assert len(finished) == 1, sink.events
    room.close()
    return sink.frames, finished[0], sink.events


QUIET = asyncio.run(play([]))
CASES = {"messages": 0}


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
@given(st.lists(hostile, min_size=20, max_size=30))
def test_hostile_messages_get_one_error_each_and_the_utterance_plays_intact(messages):
    frames, finished, events = asyncio.run(play(messages))
    CASES["messages"] += len(messages)
    quiet_frames, quiet_finished, quiet_events = QUIET
    assert finished["audio_ms"] == quiet_finished["audio_ms"]
    assert len(frames) == len(quiet_frames) and all(np.array_equal(a, b) for a, b in zip(frames, quiet_frames))
    # the room's own events (to everyone) are exactly those of the quiet room
    strip = lambda evs: [({k: v for k, v in e.items() if k not in ("ts", "ttfa_ms")}, to) for e, to in evs]
    assert strip(events) == strip(quiet_events)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "\x00\x01\u00e4\u4e2d\U0001f600", max_size=64))
def test_pong_echoes_any_json_value_it_was_given(t):
    room, _, sink = make_room()
    reply = room.receive(dumps({"type": "ping", "t": t}), "p")
    assert reply is not None and reply["type"] == "pong" and reply["t"] == t
    assert json.loads(json.dumps(reply, ensure_ascii=False)) == reply  # the transport can send it
    assert sink.events == []


@settings(max_examples=50, deadline=None, phases=[Phase.generate])
@given(st.integers(min_value=1_000, max_value=MAX_MESSAGE_BYTES // 2),
       st.sampled_from(["[{}]", '{"type": "ping", "t": {}}', '{"a":{}}']))
def test_nesting_deeper_than_the_parser_takes_is_a_bad_message(depth, shape):
    # 64 KB of brackets is within the message limit and reaches Python's recursion limit
    room, _, sink = make_room()
    open_, close = shape.split("{}")
    message = (open_ * depth + "1" + close * depth)[:MAX_MESSAGE_BYTES]
    reply = room.receive(message, "stranger")
    assert reply is not None and reply["code"] == "bad_message"
    assert sink.events == []


@pytest.mark.parametrize("speed", [
    "fast", [1.0], {"v": 1},
    True,
    "1.5",
])
@pytest.mark.parametrize("kind", ["synthesize", "configure"])
def test_speed_takes_numbers_only(kind, speed):
    room, _, sink = make_room()
    message = {"type": kind, "speed": speed, **({"text": "hi"} if kind == "synthesize" else {})}
    with asyncio.Runner() as runner:  # a valid synthesize would start a task: give it a loop
        reply = runner.run(_receive(room, dumps(message)))
    assert reply is not None and reply["code"] == "bad_message", reply
    assert sink.events == []


async def _receive(room: Room, message: str) -> dict | None:
    reply = room.receive(message, "p")
    room.close()
    return reply
