"""A deterministic stage for the Speaker: an engine with exact samples, a fake clock and a
fake sink that plays the room's part (one `tick()` = one 20 ms slot).

The tone engine is a test double on purpose: it makes sample values and mark positions
exact, so fades, captions and played positions can be asserted to the sample. Real engines
are covered by the e2e tests.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import numpy as np

from agent.audio import FRAME_SAMPLES, SAMPLE_RATE
from agent.protocol import parse_command
from agent.speaker import Speaker
from engines.base import AudioChunk, Mark, Voice
from engines.registry import VoiceRegistry
from engines.text import split_sentences

AMPLITUDE = 10_000
SAMPLES_PER_CHAR = 480  # 10 ms of audio per character


class ToneEngine:
    """Speaks each character as 10 ms of a ±AMPLITUDE square wave; a mark per word."""

    name = "tone"
    available = True
    unavailable_reason = None

    def __init__(self, rate: int = SAMPLE_RATE):
        self.rate = rate
        self.calls: list[str] = []
        self.speeds: list[float] = []

    def voices(self) -> list[Voice]:
        return [Voice("tone:en", "tone", "en", "Tone", self.rate)]

    async def stream(self, text: str, voice: Voice, speed: float = 1.0, sample_rate: int | None = None):
        self.calls.append(text)
        self.speeds.append(speed)
        per_char = int(SAMPLES_PER_CHAR * self.rate / SAMPLE_RATE / speed)
        for sentence in split_sentences(text):
            n = len(sentence) * per_char
            pcm = np.where((np.arange(n) // 24) % 2 == 0, AMPLITUDE, -AMPLITUDE).astype(np.int16)
            marks = [Mark("sentence", sentence, 0)]
            marks += [Mark("word", m.group(), m.start() * per_char) for m in re.finditer(r"\S+", sentence)]
            await asyncio.sleep(0)  # a real engine yields to the loop between chunks
            yield AudioChunk(pcm, self.rate, marks)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stage:
    """Plays the room: records events with the tick they were emitted in."""

    engine: ToneEngine = field(default_factory=ToneEngine)
    clock: FakeClock = field(default_factory=FakeClock)
    events: list[tuple[int, dict]] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)  # the fake clock when each event was emitted
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    tick_no: int = 0
    pulls: int = 0
    discards: int = 0

    def __post_init__(self):
        self.voices = VoiceRegistry([self.engine])
        self.speaker = Speaker("test", self.voices, self, clock=self.clock)

    # SpeakerOutput
    def emit(self, event: dict, to: str | None = None) -> None:
        self.events.append((self.tick_no, event))
        self.event_times.append(self.clock.now)

    def pull_now(self) -> None:
        self.pulls += 1

    def discard_buffered(self) -> None:
        self.discards += 1

    # driving
    def send(self, message: dict | str, sender: str = "tester") -> dict | None:
        cmd = parse_command(message, max_text_chars=self.speaker.max_text_chars)
        return self.speaker.handle(cmd, sender)

    async def settle(self) -> None:
        """Let synthesis tasks run until none can make progress (no wall time involved)."""
        for _ in range(200):
            await asyncio.sleep(0)

    def tick(self) -> np.ndarray | None:
        self.tick_no += 1
        frame = self.speaker.next_frame()
        if frame is not None:
            frame = frame.copy()
            self.frames.append((self.tick_no, frame))
        return frame

    async def play_until_idle(self, max_ticks: int = 10_000) -> None:
        for _ in range(max_ticks):
            await self.settle()
            self.tick()
            if self.speaker.idle:
                return
        raise AssertionError("speaker never went idle")

    def of(self, type_: str, **match) -> list[dict]:
        return [e for _, e in self.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]

    def time_of(self, type_: str, **match) -> float:
        return next(t for t, (_, e) in zip(self.event_times, self.events)
                    if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()))

    def tick_of(self, type_: str, **match) -> int:
        return next(t for t, e in self.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()))


def frames_for(text: str) -> int:
    chars = sum(len(s) for s in split_sentences(text))
    return -(-chars * SAMPLES_PER_CHAR // FRAME_SAMPLES)


class CountingEngine(ToneEngine):
    """Like ToneEngine, but sample k of an utterance's audio is a value that names k (no two
    neighbours alike, never zero): a test can tell which sample a frame carries, and that each
    was played exactly once."""

    name = "tone"

    async def stream(self, text: str, voice: Voice, speed: float = 1.0, sample_rate: int | None = None):
        start = 0  # one utterance of final text: one stream
        async for chunk in super().stream(text, voice, speed, sample_rate):
            n = len(chunk.pcm)
            yield AudioChunk(counting_samples(start, n), chunk.sample_rate, chunk.marks)
            start += n


def counting_samples(start: int, n: int) -> np.ndarray:
    """Samples start..start+n of CountingEngine's audio."""
    return (1000 + (np.arange(start, start + n) % 20_000)).astype(np.int16)


@dataclass
class FloodRun:
    """A chat flood on the fake clock: what was sent when, and the backlog after every tick."""

    stage: Stage
    sent_at: dict[str, float]  # line id -> fake time it arrived
    backlog: list[tuple[float, int]]  # (fake seconds since the start, queued utterances)
    start: float


async def chat_flood(lines: int = 300, seconds: float = 10.0, chars: int = 100, rules: dict | None = None,
                     tail_s: float = 60.0) -> FloodRun:
    """`lines` chat lines spread evenly over `seconds` into a room that reads about one a second
    (`chars` characters at 10 ms each), then `tail_s` more seconds; one tick = 20 ms of fake time."""
    s = Stage()
    s.send({"type": "configure", "danmu": rules or {}})
    start = s.clock.now
    every = seconds / lines
    sent_at: dict[str, float] = {}
    backlog: list[tuple[float, int]] = []
    next_line = 0
    for _ in range(int((seconds + tail_s) / 0.02)):
        while next_line < lines and next_line * every <= s.clock.now - start:
            uid = f"c{next_line:03d}"
            body = f"viewer {next_line:03d} says " + "la " * ((chars - 20) // 3)
            s.send({"type": "synthesize", "id": uid, "text": body[:chars], "from": f"viewer{next_line % 40}"})
            sent_at[uid] = s.clock.now
            next_line += 1
        await s.settle()
        s.tick()
        backlog.append((round(s.clock.now - start, 2), len(s.speaker.queue)))
        s.clock.now += 0.02
        if next_line == lines and s.speaker.idle:
            break
    return FloodRun(s, sent_at, backlog, start)
