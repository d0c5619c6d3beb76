"""The Speaker: one per room. Queue, priorities, interrupts, danmu rules, frames, events.

It knows no transport and no synthesizer library: it pulls PCM from an `Engine`, hands
20 ms frames to whoever calls `next_frame()` (the room, on the frame clock) and reports
what happened through `emit(event, to)`. `to=None` means every client of the room.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import OrderedDict, deque
from typing import Callable, Protocol

import numpy as np

from engines.base import EngineError, Voice
from engines.registry import UnknownVoice, VoiceRegistry
from engines.text import speakable_prefix

from . import metrics
from .audio import FADE_SAMPLES, FRAME_SAMPLES, SAMPLE_RATE, PcmBuffer, Resampler, fade_in, fade_out
from .danmu import DanmuPolicy
from .queue_caps import QueueCaps
from .protocol import (
    PRIORITY_RANK,
    Append,
    BargeIn,
    Configure,
    DanmuRules,
    ErrorCode,
    Interrupt,
    Pause,
    Ping,
    ProtocolError,
    Resume,
    Synthesize,
    event,
)

log = logging.getLogger(__name__)

AHEAD_SAMPLES = SAMPLE_RATE * 3 // 2  # synthesis runs at most 1.5 s ahead of playout
SPEED_STEP = 0.1  # danmu max_speed: the reading speed moves at most this much from one line to the next
FULL_SPEED_BACKLOG = 10  # ... and reaches max_speed with this many lines waiting (or max_queue)
RECENT_IDS = 4096  # ids remembered for duplicate detection
SYNTH_STALL_S = 10.0  # no audio from the engine for this long: engine_error
# Open (final=false) utterances: below this much queued audio a clause is spoken without
# waiting for its sentence's end; when the text has also not grown for SLOW_STREAM_S, the
# whole words so far are. Checked every TEXT_POLL_S while text is pending.
LOW_WATER_SAMPLES = SAMPLE_RATE * 4 // 5
SLOW_STREAM_S = 0.25
TEXT_POLL_S = 0.05


GAIN_STEP_DB = 3.0  # per 20 ms frame: a 12 dB duck takes 80 ms each way


def _step_gain(current: float, target: float) -> float:
    """One frame's move from `current` toward `target`, at most GAIN_STEP_DB."""
    if current == target:
        return target
    floor = 10 ** (-60 / 20)
    cur_db = 20 * np.log10(max(current, floor))
    tgt_db = 20 * np.log10(max(target, floor))
    step = max(-GAIN_STEP_DB, min(GAIN_STEP_DB, tgt_db - cur_db))
    nxt = 10 ** ((cur_db + step) / 20)
    return target if abs(tgt_db - (cur_db + step)) < 1e-6 else float(nxt)


class SpeakerOutput(Protocol):
    def emit(self, event: dict, to: str | None = None) -> None: ...

    def pull_now(self) -> None:
        """The Speaker has a frame that should leave now (first audio, or a fade)."""

    def discard_buffered(self) -> int | None:
        """The playing utterance was cut: audio handed on but not yet played is stale.
        Returns how many of those samples (48 kHz) were dropped."""


class Utterance:
    __slots__ = (
        "id", "text", "voice", "speed", "priority", "rank", "seq", "sender", "final", "received",
        "enqueued", "buffer", "marks", "producer", "synth_done", "played", "started", "more",
        "space", "waiting_space", "error", "owner",
    )

    def __init__(self, id: str, text: str, voice: Voice, speed: float, priority: str, seq: int,
                 sender: str | None, final: bool, received: float, enqueued: float):
        self.id = id
        self.text = text  # for open utterances: all text received so far
        self.voice = voice
        self.speed = speed
        self.priority = priority
        self.rank = PRIORITY_RANK[priority]
        self.seq = seq
        self.sender = sender
        self.final = final
        self.received = received  # perf_counter when the request arrived
        self.enqueued = enqueued
        self.buffer = PcmBuffer()
        self.marks: deque[tuple[int, str, str]] = deque()  # (sample at 48 kHz, kind, caption text)
        self.producer: asyncio.Task | None = None
        self.synth_done = False
        self.played = 0  # samples sent
        self.started = False
        self.more = asyncio.Event()  # text appended
        self.space = asyncio.Event()  # playout made room in the buffer
        self.waiting_space = False
        self.error: str | None = None
        self.owner: str | None = None  # who handed it in (peer or http:identity), for queue caps

    @property
    def key(self) -> tuple[int, int]:
        return (self.rank, self.seq)

    @property
    def played_ms(self) -> int:
        return self.played * 1000 // SAMPLE_RATE


class Speaker:
    def __init__(
        self,
        room: str,
        voices: VoiceRegistry,
        output: SpeakerOutput,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        danmu: DanmuRules | None = None,
        barge_in: BargeIn | None = None,
        max_text_chars: int = 5000,
        word_captions: bool = True,
        clock: Callable[[], float] = time.monotonic,
        caps: QueueCaps | None = None,
    ):
        self.room = room
        self.voices = voices
        self.output = output
        self.voice = voices.resolve(voice)
        self.speed = speed
        self.clock = clock  # monotonic seconds: danmu windows and queue expiry (tests pass a fake)
        self.danmu = DanmuPolicy(danmu, clock)
        self.barge_in = barge_in or BargeIn()
        self.max_text_chars = max_text_chars
        self.caps = caps or QueueCaps()
        self.word_captions = word_captions
        self.queue: list[Utterance] = []  # sorted by (rank, seq)
        self.current: Utterance | None = None
        self._open: dict[str, Utterance] = {}  # final=False utterances, by id
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._seq = itertools.count()
        self._auto_id = itertools.count(1)
        self._frame = np.zeros(FRAME_SAMPLES, np.int16)
        self._pending_fade: np.ndarray | None = None
        self._gain = 1.0  # gain at the end of the last frame (ducking); applied before encoding
        self.target_gain = 1.0
        # pause/resume: the reasons holding the room (`pause`, `barge_in`); while any holds,
        # nothing plays and the paused utterance keeps its place and its unplayed audio
        self.holds: set[str] = set()
        self._pause_at_boundary: str | None = None  # a pause waiting for the next sentence
        self._fade_in = False  # the next frame resumes audio that was cut with the fade
        self.on_idle: Callable[[], None] | None = None
        self.closed = False
        self._summary_n = 0  # lines dropped for queue_full since the last summary line
        self._read_since_summary = 0
        self._pace: float | None = None  # danmu max_speed: the speed of the last line read in this run

    # -- commands ------------------------------------------------------------------------

    def handle(self, cmd, sender: str | None = None, received: float | None = None) -> dict | None:
        """Apply one validated command. Returns the direct reply (if any) for the sender.
        Raises ProtocolError for a command that cannot be applied."""
        received = time.perf_counter() if received is None else received
        if isinstance(cmd, Synthesize):
            self.synthesize(cmd, sender, received)
            return None
        if isinstance(cmd, Append):
            self.append(cmd)
            return None
        if isinstance(cmd, Interrupt):
            self.interrupt(cmd.id, received=received, sender=cmd.from_)
            return None
        if isinstance(cmd, Pause):
            self.pause(now=cmd.now)
            return None
        if isinstance(cmd, Resume):
            self.resume()
            return None
        if isinstance(cmd, Configure):
            self.configure(cmd)
            return None
        if isinstance(cmd, Ping):
            return event("pong", t=cmd.t)
        raise ProtocolError(ErrorCode.bad_message, f"unsupported command {type(cmd).__name__}")

    def synthesize(self, cmd: Synthesize, sender: str | None, received: float) -> tuple[str, str | None]:
        """Queue an utterance: (its id, the danmu reason it was dropped for, or None)."""
        try:
            voice = self.voices.resolve(cmd.voice) if cmd.voice else self.voice
        except UnknownVoice as exc:
            raise ProtocolError(ErrorCode.unknown_voice, str(exc), cmd.id) from None
        uid = cmd.id
        if uid is None:
            uid = f"u{next(self._auto_id)}"
            while uid in self._recent_ids:
                uid = f"u{next(self._auto_id)}"
        elif uid in self._recent_ids:
            raise ProtocolError(ErrorCode.duplicate_id, f"utterance id {uid!r} was already used in this room", uid)
        danmu_cap = self.danmu.rules.max_queue
        self.caps.check(self.queue, sender, len(cmd.text), uid,
                        room_makes_room=danmu_cap is not None and danmu_cap <= self.caps.room_items)
        self._remember(uid)
        admission = self.danmu.admit(cmd.text, cmd.from_)
        if admission.dropped:
            self._dropped(uid, admission.dropped)
            return uid, admission.dropped
        utt = Utterance(uid, admission.text, voice, cmd.speed or self.speed, cmd.priority, next(self._seq),
                        cmd.from_, cmd.final, received, self.clock())
        utt.owner = sender
        if not cmd.final:
            self._open[uid] = utt
        if cmd.priority == "critical" and self.current is not None:
            self._cut(self.current, "preempted")
        return uid, self._enqueue(utt)

    def append(self, cmd: Append) -> None:
        utt = self._open.get(cmd.id)
        if utt is None:
            raise ProtocolError(ErrorCode.unknown_utterance, f"no open utterance {cmd.id!r}", cmd.id)
        if len(utt.text) + len(cmd.text) > self.max_text_chars:
            raise ProtocolError(ErrorCode.text_too_long, f"utterance would exceed {self.max_text_chars} characters", cmd.id)
        if utt is not self.current:  # text waiting in the queue counts against the caps
            self.caps.check(self.queue, utt.owner, len(cmd.text), cmd.id, new_items=0)
        utt.text += cmd.text
        if cmd.final:
            utt.final = True
            self._open.pop(cmd.id, None)
        utt.more.set()

    def interrupt(self, uid: str | None = None, reason: str = "interrupt", clear_queue: bool = True,
                  received: float | None = None, sender: str | None = None) -> None:
        if sender is not None:  # a banned chat user: all of theirs, and none an error when there is none
            for utt in [u for u in self.queue if u.sender == sender]:
                self._cut(utt, reason)
            if self.current is not None and self.current.sender == sender:
                self._cut(self.current, reason, received)
            return
        if uid is None:
            if clear_queue:
                self._summary_n = 0  # what it would have summed up is gone too
                for utt in list(self.queue):
                    self._cut(utt, reason)
            if self.current is not None:
                self._cut(self.current, reason, received)
            return
        if self.current is not None and self.current.id == uid:
            self._cut(self.current, reason, received)
            return
        for utt in self.queue:
            if utt.id == uid:
                self._cut(utt, reason)
                return
        raise ProtocolError(ErrorCode.unknown_utterance, f"no queued or playing utterance {uid!r}", uid)

    # -- pause / resume ------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return bool(self.holds)

    def pause(self, now: bool = False, reason: str = "pause") -> None:
        """Hold the room: at the next sentence boundary of what is playing, or `now` (one
        faded frame). The queue and the paused utterance's unplayed audio are kept."""
        utt = self.current
        if not now and not self.holds and utt is not None and utt.started:
            if self._pause_at_boundary is None:
                self._pause_at_boundary = reason
            return
        self._hold(reason, fade=True)

    def resume(self, reason: str = "pause") -> None:
        """Release one reason's hold; when none is left, go on where the room stopped."""
        if self._pause_at_boundary == reason:
            self._pause_at_boundary = None  # it had not landed yet: nothing was paused
        if reason not in self.holds:
            return
        self.holds.discard(reason)
        if self.holds:
            return
        utt = self.current
        playing = utt is not None and utt.started
        self.output.emit(event("resumed", id=utt.id if playing else None, reason=reason))
        if utt is None:
            self._advance()
        else:
            self.output.pull_now()  # back on the clock; the first frame back leaves now

    def _hold(self, reason: str, fade: bool) -> None:
        pending, self._pause_at_boundary = self._pause_at_boundary, None
        was_held = bool(self.holds)
        self.holds.add(reason)
        if pending is not None:
            self.holds.add(pending)  # a pause waiting for its boundary has landed with this one
        if was_held:
            return
        utt = self.current
        playing = utt is not None and utt.started
        if playing and fade and utt.buffer.available:
            # the fade takes only FADE_SAMPLES of the utterance: the rest of the frame is
            # silence, and resume goes on from the very next sample (each played once)
            frame = np.zeros(FRAME_SAMPLES, np.int16)
            n = utt.buffer.read_into(frame[:FADE_SAMPLES])
            self._apply_gain(frame)
            fade_out(frame)
            self._captions(utt, utt.played + n)
            utt.played += n
            self._wake_producer(utt)
            self._pending_fade = frame
            self._fade_in = True
        self.output.emit(event("paused", id=utt.id if playing else None, reason=reason))
        if self._pending_fade is not None:
            self.output.pull_now()

    def drop_sender(self, owner: str, reason: str = "disconnect") -> None:
        """The sender left: its queued utterances go (`interrupted`), and what it is saying now
        plays to its end; an open one ends with the text it has (no append can come)."""
        for utt in [u for u in self.queue if u.owner == owner]:
            self._cut(utt, reason)
        cur = self.current
        if cur is not None and cur.owner == owner and not cur.final:
            cur.final = True
            self._open.pop(cur.id, None)
            cur.more.set()

    def configure(self, cmd: Configure) -> None:
        voice = None
        if cmd.voice is not None:
            try:
                voice = self.voices.resolve(cmd.voice)
            except UnknownVoice as exc:
                raise ProtocolError(ErrorCode.unknown_voice, str(exc)) from None
        # validated above: nothing below can fail, so a bad configure changes nothing
        if voice is not None:
            self.voice = voice
        if cmd.speed is not None:
            self.speed = cmd.speed
        if cmd.danmu is not None:
            self.danmu.update(cmd.danmu)
        if cmd.barge_in is not None:
            self.barge_in = cmd.barge_in

    # -- queue ---------------------------------------------------------------------------

    def _remember(self, uid: str) -> None:
        self._recent_ids[uid] = None
        if len(self._recent_ids) > RECENT_IDS:
            self._recent_ids.popitem(last=False)

    def _enqueue(self, utt: Utterance) -> str | None:
        max_queue = self.danmu.rules.max_queue
        if max_queue is not None and len(self.queue) >= max_queue:
            victim = next((u for u in self.queue if u.priority == "normal"), None)
            if victim is None:  # only high/critical queued: the newcomer is the one that goes
                self._open.pop(utt.id, None)
                self._dropped(utt.id, "queue_full")
                self._summed_up()
                return "queue_full"
            self.queue.remove(victim)
            metrics.QUEUE_DEPTH.dec()
            self._dropped(victim.id, "queue_full")
            self._summed_up()
        bisect.insort(self.queue, utt, key=lambda u: u.key)
        metrics.QUEUE_DEPTH.inc()
        # position: how many utterances will play before this one (0: it is next)
        ahead = self.queue.index(utt) + (self.current is not None)
        self.output.emit(event("queued", id=utt.id, position=ahead))
        if self.current is None:
            self._advance()
        return None

    def _advance(self) -> None:
        """Make the next queued utterance current and start synthesizing it."""
        max_wait = self.danmu.rules.max_wait_s
        while self.current is None and not self.closed and not self.holds:
            utt = self._summary_line()
            if utt is None:
                if not self.queue:
                    break
                utt = self.queue.pop(0)
                metrics.QUEUE_DEPTH.dec()
                if max_wait is not None and self.clock() - utt.enqueued > max_wait:
                    self._open.pop(utt.id, None)
                    self._dropped(utt.id, "expired")
                    continue
                self._read_since_summary += 1
            self._paced(utt)
            self.current = utt
            utt.producer = asyncio.get_running_loop().create_task(self._produce(utt), name=f"synth-{self.room}-{utt.id}")
        if self.current is None and not self.queue:
            self._pace = None  # the backlog is gone: the next line reads at the room's speed
            if self.on_idle is not None:
                self.on_idle()

    def _summed_up(self) -> None:
        """A line dropped for queue_full: the next summary counts it."""
        if self._summary_n == 0:
            self._read_since_summary = 0  # lines read before this drop do not hurry its summary
        self._summary_n += 1

    def _summary_line(self) -> Utterance | None:
        """Danmu `summary`: the lines dropped for queue_full, read as one line once the queue is
        caught up or after every max_queue lines read, whichever comes first (a raid gets a
        summary now and then, not one after every line)."""
        template = self.danmu.rules.summary
        every = self.danmu.rules.max_queue or FULL_SPEED_BACKLOG
        if not (template and self._summary_n and (not self.queue or self._read_since_summary >= every)):
            return None
        uid = f"summary{next(self._auto_id)}"
        while uid in self._recent_ids:
            uid = f"summary{next(self._auto_id)}"
        self._remember(uid)
        text = template.replace("{n}", str(self._summary_n))
        self._summary_n = self._read_since_summary = 0
        utt = Utterance(uid, text, self.voice, self.speed, "normal", next(self._seq), None, True,
                        time.perf_counter(), self.clock())
        self.output.emit(event("queued", id=uid, position=0))
        return utt

    def _paced(self, utt: Utterance) -> None:
        """Danmu `max_speed`: read faster as the backlog grows, slower as it shrinks, one step per line."""
        top = self.danmu.rules.max_speed
        if top is None or top <= self.speed:
            return
        # full speed when this line came from a full queue (the rest of it still waiting behind)
        full = max(1, (self.danmu.rules.max_queue or FULL_SPEED_BACKLOG) - 1)
        target = self.speed + (top - self.speed) * min(1.0, len(self.queue) / full)
        pace = self.speed if self._pace is None else self._pace
        pace = min(pace + SPEED_STEP, target) if target > pace else max(pace - SPEED_STEP, target)
        self._pace = pace
        utt.speed = max(utt.speed, round(pace, 3))

    def _dropped(self, uid: str, reason: str) -> None:
        metrics.DROPPED.labels(reason).inc()
        self.output.emit(event("dropped", id=uid, reason=reason))

    def _cut(self, utt: Utterance, reason: str, received: float | None = None) -> None:
        """Stop an utterance now: playing → one faded frame then silence; queued → removed."""
        self._open.pop(utt.id, None)
        if utt.producer is not None:
            utt.producer.cancel()
        if utt is self.current:
            self._fade_in = False
            if utt.started and not self.holds:
                # what the transport held and now drops was never heard: not part of played_ms
                utt.played -= min(utt.played, self.output.discard_buffered() or 0)
                fade = np.zeros(FRAME_SAMPLES, np.int16)
                n = utt.buffer.read_into(fade)
                if n:
                    self._apply_gain(fade)
                    fade_out(fade)
                    utt.played += min(n, FRAME_SAMPLES)
                    self._pending_fade = fade
            utt.buffer.clear()
            utt.marks.clear()
            self.current = None
            metrics.UTTERANCES.labels("interrupted").inc()
            self.output.emit(event("interrupted", id=utt.id, played_ms=utt.played_ms, reason=reason))
            if self._pending_fade is not None:
                self.output.pull_now()
            if received is not None and utt.started:
                # the faded frame has just been handed to the transport (or waits for the next slot)
                metrics.INTERRUPT_LATENCY.observe(time.perf_counter() - received)
            if self._pause_at_boundary is not None and reason != "preempted":
                self._hold(self._pause_at_boundary, fade=False)  # the cut is the boundary it waited for
            self._advance()
        else:
            self.queue.remove(utt)
            metrics.QUEUE_DEPTH.dec()
            metrics.UTTERANCES.labels("interrupted").inc()
            self.output.emit(event("interrupted", id=utt.id, played_ms=0, reason=reason))

    # -- synthesis -----------------------------------------------------------------------

    async def _texts(self, utt: Utterance):
        """The text to synthesize, in pieces: all of it at once, or as an open (final=false)
        utterance grows: whole sentences while audio is queued (their prosody intact); once
        less than LOW_WATER_SAMPLES is left, a clause that stands alone; and once the text has
        also stopped growing for SLOW_STREAM_S, the whole words there are, so the track does
        not stall while text is already there."""
        if utt.final:
            yield utt.text
            return
        done = 0
        grew = time.monotonic()  # when text last arrived
        seen = len(utt.text)
        while True:
            if utt.final:
                rest = utt.text[done:]
                if rest.strip():
                    yield rest
                return
            if len(utt.text) != seen:
                seen, grew = len(utt.text), time.monotonic()
            low = utt.buffer.available < LOW_WATER_SAMPLES
            slow = low and time.monotonic() - grew >= SLOW_STREAM_S
            ready, rest = speakable_prefix(utt.text[done:], clauses=low, words=slow)
            if ready.strip():
                done += len(ready)
                yield ready
                continue
            utt.more.clear()
            if not rest.strip():  # nothing pending: only new text can change anything
                await utt.more.wait()
                continue
            try:  # text pending: look again as the queued audio drains
                async with asyncio.timeout(TEXT_POLL_S):
                    await utt.more.wait()
            except TimeoutError:
                pass

    async def _produce(self, utt: Utterance) -> None:
        engine = self.voices.engine_for(utt.voice)
        resampler = Resampler(utt.voice.sample_rate)
        synth_s = 0.0  # time spent waiting on the engine (not on playout)
        try:
            async for text in self._texts(utt):
                # at 48 kHz where the engine can: resampled on its threads, off this loop
                stream = engine.stream(text, utt.voice, utt.speed, sample_rate=SAMPLE_RATE)
                try:
                    while True:
                        t0 = time.perf_counter()
                        try:
                            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                            # that lands with a chunk, leaving a cut utterance's producer waiting
                            async with asyncio.timeout(SYNTH_STALL_S):
                                chunk = await anext(stream)
                        except StopAsyncIteration:
                            break
                        except asyncio.TimeoutError:
                            raise EngineError(f"{engine.name} produced no audio for {SYNTH_STALL_S:.0f} s") from None
                        finally:
                            synth_s += time.perf_counter() - t0
                        if chunk.notice:
                            self.output.emit(event("error", id=utt.id, code=ErrorCode.engine_error.value,
                                                   message=chunk.notice))
                        if chunk.sample_rate != resampler.in_rate:
                            resampler = Resampler(chunk.sample_rate)
                        base = utt.buffer.written
                        for mark in chunk.marks:
                            if mark.kind == "sentence" or self.word_captions:
                                utt.marks.append((base + resampler.to_output_samples(mark.sample), mark.kind, mark.text))
                        utt.buffer.write(resampler.push(chunk.pcm))
                        self._on_audio(utt)
                        while utt.buffer.available > AHEAD_SAMPLES:
                            utt.waiting_space = True
                            utt.space.clear()
                            await utt.space.wait()
                finally:
                    await stream.aclose()
            utt.buffer.write(resampler.flush())
            if utt.buffer.written:
                metrics.SYNTH_RTF.labels(engine.name).observe(synth_s / (utt.buffer.written / SAMPLE_RATE))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine failing must not take the room down
            log.warning("synthesis failed: %s", exc, extra={"room": self.room, "utterance": utt.id})
            utt.error = str(exc)
            metrics.ERRORS.labels(ErrorCode.engine_error.value).inc()
            self.output.emit(event("error", id=utt.id, code=ErrorCode.engine_error.value, message=str(exc)))
        finally:
            utt.synth_done = True
        if utt is self.current:
            self._on_audio(utt)

    def _on_audio(self, utt: Utterance) -> None:
        # Only the first frame is pulled early (TTFA); once playing, the clock paces the rest.
        if utt is self.current and not utt.started and not self.holds \
                and (utt.buffer.available >= FRAME_SAMPLES or utt.synth_done):
            self.output.pull_now()

    # -- playout -------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing to send until something changes: the room may leave the clock."""
        return self._pending_fade is None and (bool(self.holds) or (self.current is None and not self.queue))

    def next_frame(self) -> np.ndarray | None:
        """The next 20 ms frame to send, or None when there is nothing to send this slot.
        The returned array is reused or a view of buffered PCM: encode it before the next
        call, and never write to it."""
        if self._pending_fade is not None:
            frame, self._pending_fade = self._pending_fade, None
            return frame
        if self.holds:
            if self.on_idle is not None:
                self.on_idle()  # paused: the room need not ask again until resume
            return None
        utt = self.current
        if utt is None:
            return None
        buf = utt.buffer
        if self._pause_at_boundary is not None and utt.started:
            boundary = self._next_sentence(utt)
            if boundary is not None and boundary < utt.played + FRAME_SAMPLES:
                if buf.available < boundary - utt.played and not utt.synth_done:
                    return None  # synthesis has not caught up with the boundary yet
                return self._play_to_boundary(utt, boundary)
        if buf.available < FRAME_SAMPLES and not (utt.synth_done and buf.available > 0):
            if utt.synth_done:
                self._finish(utt)
            return None  # synthesis has not caught up: skip this slot
        frame, n = buf.read_frame(self._frame)
        if self._fade_in:  # back from a cut with the fade: ramp up, no click
            self._fade_in = False
            if frame is not self._frame:
                np.copyto(self._frame, frame)
                frame = self._frame
            fade_in(frame)
        if not utt.started:
            utt.started = True
            ttfa_ms = (time.perf_counter() - utt.received) * 1000
            metrics.TTFA.labels(utt.voice.engine).observe(ttfa_ms / 1000)
            self.output.emit(event("started", id=utt.id, ttfa_ms=round(ttfa_ms, 2)))
        end = utt.played + n
        self._captions(utt, end)
        utt.played = end
        self._wake_producer(utt)
        if self._gain != 1.0 or self.target_gain != 1.0:  # ducking: scale a private copy
            if frame is not self._frame:
                np.copyto(self._frame, frame)
                frame = self._frame
            self._apply_gain(frame)
        if utt.synth_done and buf.available == 0:
            self._finish(utt)
        return frame

    def _captions(self, utt: Utterance, end: int) -> None:
        """Captions of the marks before sample `end` (the frame now leaving)."""
        while utt.marks and utt.marks[0][0] < end:
            at, kind, text = utt.marks.popleft()
            self.output.emit(event("caption", id=utt.id, text=text, kind=kind,
                                   offset_ms=max(at, utt.played) * 1000 // SAMPLE_RATE))

    def _wake_producer(self, utt: Utterance) -> None:
        if utt.waiting_space and utt.buffer.available <= AHEAD_SAMPLES:
            utt.waiting_space = False
            utt.space.set()

    @staticmethod
    def _next_sentence(utt: Utterance) -> int | None:
        """Where the next sentence of the playing utterance starts (a sample), if known yet."""
        for at, kind, _ in utt.marks:
            if kind == "sentence" and at >= utt.played:
                return at
        return None

    def _play_to_boundary(self, utt: Utterance, boundary: int) -> np.ndarray | None:
        """A pause waiting for a sentence boundary lands inside this frame: play up to it."""
        reason = self._pause_at_boundary
        assert reason is not None
        frame = None
        k = boundary - utt.played
        if k > 0:
            frame = self._frame
            n = utt.buffer.read_into(frame[:k])
            frame[n:] = 0
            self._apply_gain(frame)
            self._captions(utt, utt.played + n)
            utt.played += n
            self._wake_producer(utt)
        self._hold(reason, fade=False)
        return frame

    def set_gain(self, gain: float) -> None:
        """Duck (or restore) the voice; the change ramps over a few frames, click-free."""
        self.target_gain = max(0.0, min(1.0, gain))

    def _apply_gain(self, frame: np.ndarray) -> None:
        g0, target = self._gain, self.target_gain
        if g0 == 1.0 and target == 1.0:
            return  # the common case: nothing to do, no allocation
        g1 = _step_gain(g0, target)
        if g0 == g1:
            np.multiply(frame, g1, out=frame, casting="unsafe")
        else:  # a linear ramp inside the frame: no step in the waveform
            np.multiply(frame, np.linspace(g0, g1, len(frame), dtype=np.float32), out=frame, casting="unsafe")
        self._gain = g1

    def _finish(self, utt: Utterance) -> None:
        self.current = None
        self._fade_in = False
        self._open.pop(utt.id, None)
        metrics.UTTERANCES.labels("error" if utt.error else "finished").inc()
        self.output.emit(event("finished", id=utt.id, audio_ms=utt.played_ms))
        if self._pause_at_boundary is not None:  # the end of an utterance is a sentence boundary
            self._hold(self._pause_at_boundary, fade=False)
        self._advance()

    # -- lifecycle -----------------------------------------------------------------------

    def snapshot(self) -> dict:
        cur = self.current
        return {
            "voice": self.voice.id,
            "playing": None if cur is None else {"id": cur.id, "text": cur.text[:200], "played_ms": cur.played_ms},
            "paused": self.paused,
            "queue": [{"id": u.id, "priority": u.priority, "text": u.text[:200]} for u in self.queue],
        }

    def close(self, reason: str = "disconnect") -> None:
        """Stop everything (the room is going away)."""
        self.closed = True
        for utt in list(self.queue):
            self._cut(utt, reason)
        if self.current is not None:
            utt = self.current
            if utt.producer is not None:
                utt.producer.cancel()
            self.current = None
            metrics.UTTERANCES.labels("interrupted").inc()
            self.output.emit(event("interrupted", id=utt.id, played_ms=utt.played_ms, reason=reason))
        self._pending_fade = None
