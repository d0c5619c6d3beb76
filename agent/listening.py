"""Listening (barge-in): a participant's audio → 16 kHz → Silero VAD → speech onset/offset
→ the room's Speaker pauses, then interrupts or resumes (or ducks), and every peer gets
`user_speech`.

Pause, then confirm (mode `interrupt`): an onset pauses the agent at once (the Speaker's
`barge_in` hold, with the fade). Speech still going `confirm_ms` after it began is a turn:
the agent is interrupted. Speech that ends sooner (INTERJECTION_GAP_MS of silence: a cough,
"uh-huh", "yes") is an interjection: the agent resumes from the very next sample. Both are
counted in audio time (VAD chunks), not wall time, so they do not depend on the loop.

Transport-independent core: `Listening.listen(room, participant)` gives a `Listener`; a
transport feeds it Opus payloads (`feed_opus`, embedded WebRTC) or PCM (`feed_pcm`, e.g.
LiveKit `rtc.AudioStream` frames at 48 or 16 kHz). While the room's barge-in mode is `off`
a listener drops what it is fed before any decoding and holds no decoder, resampler or VAD
state; a LiveKit transport can also skip subscribing while `listener.active` is false.
Transports hand audio in; this module knows neither aiortc nor livekit.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
import weakref
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

import av
import numpy as np

from .echo import EchoCanceller, FarEnd
from .protocol import event
from .vad import CHUNK_MS, CHUNK_SAMPLES, SAMPLE_RATE, VadStream, VadUnavailable, load_model

if TYPE_CHECKING:
    from .rooms import Room

log = logging.getLogger(__name__)

DUCK_GAIN = 10 ** (-12 / 20)  # the agent's voice drops 12 dB while a person talks
HANGOVER_MS = 480  # this much non-speech ends a turn: short pauses between words do not
NEG_THRESHOLD_GAP = 0.15  # Silero's hysteresis: below threshold - 0.15 counts as silence
# Before confirm_ms, this much silence ends an interjection: longer than the gaps between the
# syllables of "uh-huh", shorter than the hangover so the agent resumes without waiting for it
INTERJECTION_GAP_MS = 256

Transition = Literal["started", "stopped"] | None


class Downsampler:
    """Mono int16 at any rate → 16 kHz, streaming (FFmpeg's resampler in a one-thread filter
    graph: `av.AudioResampler` starts a thread per core for each instance, per listener)."""

    def __init__(self, rate_in: int):
        self.rate_in = rate_in
        self._time_base = fractions.Fraction(1, rate_in)
        self._pts = 0
        self._graph = av.filter.Graph()
        self._graph.threads = 1
        src = self._graph.add_abuffer(format="s16", sample_rate=rate_in, layout="mono", time_base=self._time_base)
        fmt = self._graph.add("aformat", sample_fmts="s16", sample_rates=str(SAMPLE_RATE), channel_layouts="mono")
        src.link_to(fmt)
        fmt.link_to(self._graph.add("abuffersink"))
        self._graph.configure()

    def push(self, frame: av.AudioFrame):
        """Yields 16 kHz int16 blocks as they come out."""
        frame.pts, frame.time_base = self._pts, self._time_base  # a continuous timeline
        self._pts += frame.samples
        self._graph.push(frame)
        while True:
            try:
                out = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            yield out.to_ndarray().reshape(-1)


class SpeechGate:
    """Onset/offset from per-chunk speech probabilities.

    Onset: speech chunks (p >= threshold) adding up to `min_speech_ms`, a silent chunk
    (p < threshold - 0.15) starting the count again, chunks in between neither.
    Offset: `hangover_ms` of silent chunks in a row."""

    def __init__(self, chunk_ms: int = CHUNK_MS, hangover_ms: int = HANGOVER_MS):
        assert chunk_ms > 0 and hangover_ms >= chunk_ms
        self.chunk_ms = chunk_ms
        self.hangover_ms = hangover_ms
        self.talking = False
        self._speech_ms = 0
        self._silence_ms = 0

    def update(self, p: float, threshold: float, min_speech_ms: int) -> Transition:
        speech = p >= threshold
        silent = p < threshold - NEG_THRESHOLD_GAP
        if not self.talking:
            if speech:
                self._speech_ms += self.chunk_ms
            elif silent:
                self._speech_ms = 0
            if speech and self._speech_ms >= min_speech_ms:
                self.talking, self._speech_ms, self._silence_ms = True, 0, 0
                return "started"
            return None
        if speech:
            self._silence_ms = 0
        elif silent:
            self._silence_ms += self.chunk_ms
            if self._silence_ms >= self.hangover_ms:
                self.talking, self._speech_ms, self._silence_ms = False, 0, 0
                return "stopped"
        return None

    def reset(self) -> None:
        self.talking, self._speech_ms, self._silence_ms = False, 0, 0


@dataclass
class ListenerStats:
    packets_in: int = 0  # Opus payloads or PCM blocks fed
    packets_dropped: int = 0  # fed while barge-in was off: not decoded
    decoders_created: int = 0  # Opus decoders
    resamplers_created: int = 0
    decode_errors: int = 0
    samples_16k: int = 0  # audio that reached the VAD's input buffer
    vad_calls: int = 0
    cancellers_created: int = 0
    echo_frames: int = 0  # 10 ms frames the echo canceller processed (not passed through)
    onsets: int = 0
    cpu_s: float = 0.0  # thread CPU spent decoding, resampling and running the VAD

    def add(self, other: "ListenerStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class RoomListening:
    """Barge-in for one room: who is talking now, and what the Speaker does about it."""

    def __init__(self, room: "Room"):
        self.room = room
        self.talking: set[str] = set()
        self.unconfirmed: set[str] = set()  # talking, not yet long enough to interrupt
        self.ducked = False
        self.far_end = FarEnd(room)  # what the room sent: the echo cancellers' reference

    def speech_started(self, participant: str, confirmed: bool = True) -> None:
        self.talking.add(participant)
        self.room.emit(event("user_speech", participant=participant, state="started"))
        cfg = self.room.speaker.barge_in
        if cfg.mode == "interrupt":
            if confirmed:  # confirm_ms within min_speech_ms: no pause first
                self._interrupt()
            else:
                self.unconfirmed.add(participant)
                if self.room.speaker.current is not None:  # idle: nothing to hold
                    self.room.speaker.pause(now=True, reason="barge_in")
        elif cfg.mode == "duck":
            self.room.speaker.set_gain(DUCK_GAIN)
            self.ducked = True

    def speech_confirmed(self, participant: str) -> None:
        """Speech went on past confirm_ms: a turn, not an interjection."""
        if participant in self.unconfirmed:
            self.unconfirmed.discard(participant)
            if self.room.speaker.barge_in.mode == "interrupt":
                self._interrupt()
            self._release()

    def speech_stopped(self, participant: str, kind: str = "turn") -> None:
        self.talking.discard(participant)
        self.room.emit(event("user_speech", participant=participant, state="stopped", kind=kind))
        if participant in self.unconfirmed:  # an interjection (or the participant went away)
            self.unconfirmed.discard(participant)
            self._release()
        if self.ducked and not self.talking:  # back up only when nobody is talking any more
            self.room.speaker.set_gain(1.0)
            self.ducked = False

    def _interrupt(self) -> None:
        cfg = self.room.speaker.barge_in
        self.room.speaker.interrupt(None, reason="barge_in", clear_queue=cfg.clear_queue)

    def _release(self) -> None:
        if not self.unconfirmed:  # resume once nobody who paused the agent is still undecided
            self.room.speaker.resume("barge_in")


class Listener:
    """One listened participant: Opus or PCM in, decoded once to 16 kHz mono, VAD, gate."""

    def __init__(self, room_listening: RoomListening, participant: str):
        self.room_listening = room_listening
        self.room = room_listening.room
        self.participant = participant
        self.stats = ListenerStats()
        self.gate = SpeechGate()
        self.closed = False
        self._decoder: av.CodecContext | None = None
        self._resampler: Downsampler | None = None
        self._echo: EchoCanceller | None = None
        self._echo_broken = False  # no audio processing module here: listen without it
        self._vad: VadStream | None = None
        self._chunk = np.zeros(CHUNK_SAMPLES, np.int16)  # VAD input being filled, reused
        self._fill = 0
        self._broken = False  # the VAD could not load: listen no more, say so once
        self._turn_ms = 0  # speech so far in this turn (from its first speech chunk)
        self._silent_ms = 0  # silence in a row since the last speech chunk
        self._confirmed = False  # the turn went on past confirm_ms

    @property
    def active(self) -> bool:
        """Barge-in is on for this participant's room: audio is worth decoding."""
        return not self.closed and not self._broken and not self.room.closed \
            and self.room.speaker.barge_in.mode != "off"

    # -- input ---------------------------------------------------------------------------

    def feed_opus(self, payload: bytes) -> None:
        """One Opus packet (an RTP payload) of this participant."""
        self.stats.packets_in += 1
        if not self.active:
            self._drop()
            return
        t0 = time.thread_time()
        if self._decoder is None:
            self._decoder = av.CodecContext.create("libopus", "r")
            self._decoder.sample_rate = 48_000  # FFmpeg's libopus decoder always gives 48 kHz
            self._decoder.layout = "mono"
            self.stats.decoders_created += 1
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            self.stats.decode_errors += 1  # a bad packet costs that packet only
            frames = []
        for frame in frames:
            self._resample(frame)
        self.stats.cpu_s += time.thread_time() - t0

    def feed_pcm(self, pcm: np.ndarray | bytes | memoryview, sample_rate: int) -> None:
        """Mono int16 PCM at any rate (a LiveKit `AudioFrame`'s `data` and `sample_rate`)."""
        samples = pcm if isinstance(pcm, np.ndarray) else np.frombuffer(pcm, np.int16)
        if samples.dtype != np.int16 or samples.ndim != 1 or sample_rate <= 0:
            raise ValueError("feed_pcm takes mono int16 samples at a positive sample rate")
        self.stats.packets_in += 1
        if not self.active:
            self._drop()
            return
        t0 = time.thread_time()
        if sample_rate == SAMPLE_RATE:
            self._push(samples)
        else:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            self._resample(frame)
        self.stats.cpu_s += time.thread_time() - t0

    # -- pipeline ------------------------------------------------------------------------

    def _resample(self, frame: av.AudioFrame) -> None:
        if self._resampler is None or frame.sample_rate != self._resampler.rate_in:
            self._resampler = Downsampler(frame.sample_rate)
            self.stats.resamplers_created += 1
        for block in self._resampler.push(frame):
            self._push(block)

    def _cancel_echo(self, samples: np.ndarray) -> np.ndarray:
        if not self.room.speaker.barge_in.echo_cancel or self._echo_broken:
            if self._echo is not None:
                self._echo.close()
                self._echo = None
            return samples
        if self._echo is None:
            try:
                self._echo = EchoCanceller(self.room_listening.far_end)
            except Exception as exc:  # an SDK without the module: the VAD still runs
                log.error("barge-in listens without echo cancellation: %s", exc)
                self._echo_broken = True
                return samples
            self.stats.cancellers_created += 1
        before = self._echo.frames
        out = self._echo.process(samples)
        self.stats.echo_frames += self._echo.frames - before
        return out

    def _push(self, samples: np.ndarray) -> None:
        samples = self._cancel_echo(samples)
        self.stats.samples_16k += len(samples)
        i = 0
        while i < len(samples):
            take = min(CHUNK_SAMPLES - self._fill, len(samples) - i)
            self._chunk[self._fill:self._fill + take] = samples[i:i + take]
            self._fill += take
            i += take
            if self._fill == CHUNK_SAMPLES:
                self._fill = 0
                self._detect()
                if not self.active:
                    return

    def _detect(self) -> None:
        if self._vad is None:
            try:
                self._vad = VadStream()
            except VadUnavailable as exc:
                log.error("barge-in cannot listen: %s", exc)
                self._broken = True
                return
        p = self._vad.probability(self._chunk)
        self.stats.vad_calls += 1
        cfg = self.room.speaker.barge_in
        change = self.gate.update(p, cfg.threshold, cfg.min_speech_ms)
        if change == "started":
            self.stats.onsets += 1
            self._turn_ms, self._silent_ms = max(cfg.min_speech_ms, CHUNK_MS), 0
            self._confirmed = self._turn_ms >= cfg.confirm_ms
            self.room_listening.speech_started(self.participant, self._confirmed)
        elif change == "stopped":
            self.room_listening.speech_stopped(self.participant, self._kind)
        elif self.gate.talking and not self._confirmed:
            self._turn_ms += CHUNK_MS
            if p >= cfg.threshold:
                self._silent_ms = 0
            elif p < cfg.threshold - NEG_THRESHOLD_GAP:
                self._silent_ms += CHUNK_MS
            if self._silent_ms >= INTERJECTION_GAP_MS:  # it ended before confirm_ms: an interjection
                self.gate.reset()
                self.room_listening.speech_stopped(self.participant, "interjection")
            elif self._turn_ms >= cfg.confirm_ms and p >= cfg.threshold:
                self._confirmed = True
                self.room_listening.speech_confirmed(self.participant)

    @property
    def _kind(self) -> str:
        return "turn" if self._confirmed else "interjection"

    def _drop(self) -> None:
        self.stats.packets_dropped += 1
        if self._decoder is not None or self._resampler is not None or self._vad is not None or self.gate.talking:
            self._release()

    def _release(self) -> None:
        """Barge-in went off (or the participant left): free decoding state, end a turn."""
        self._decoder = None
        self._resampler = None
        self._vad = None
        if self._echo is not None:
            self._echo.close()
            self._echo = None
        self._fill = 0
        if self.gate.talking:
            self.gate.reset()
            self.room_listening.speech_stopped(self.participant, self._kind)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()


class Listening:
    """Every listener of the process, grouped by room; totals for tests and benchmarks."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, str], Listener] = {}  # (room name, participant)
        self._rooms: weakref.WeakKeyDictionary["Room", RoomListening] = weakref.WeakKeyDictionary()
        self._retired = ListenerStats()
        self._preloading = False

    def listen(self, room: "Room", participant: str) -> Listener:
        old = self.listeners.get((room.name, participant))
        if old is not None:
            self.remove(old)
        room_listening = self._rooms.get(room)
        if room_listening is None:
            room_listening = self._rooms[room] = RoomListening(room)
        listener = self.listeners[(room.name, participant)] = Listener(room_listening, participant)
        self._preload()
        return listener

    def remove(self, listener: Listener) -> None:
        listener.close()
        key = (listener.room.name, listener.participant)
        if self.listeners.get(key) is listener:
            del self.listeners[key]
            self._retired.add(listener.stats)
        if not any(other.room is listener.room for other in self.listeners.values()):
            # the value holds its room strongly, so the weak key alone would never let it go
            self._rooms.pop(listener.room, None)

    def totals(self) -> ListenerStats:
        total = ListenerStats()
        total.add(self._retired)
        for listener in self.listeners.values():
            total.add(listener.stats)
        return total

    def _preload(self) -> None:
        # The model takes ~150 ms to load: do it off the event loop, once, as soon as
        # anyone might be listened to, so the first onset does not stall every room's audio.
        if self._preloading:
            return
        self._preloading = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.run_in_executor(None, load_model).add_done_callback(_report_load)


def _report_load(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("barge-in cannot listen: %s", future.exception())

