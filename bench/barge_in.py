"""Barge-in: how fast the agent stops when a person starts talking, how often it stops for
noise or for its own echo, and what listening costs.

- latency: speech onset in the track the client sends → the last agent speech packet
  arriving at the client (the pause), → `paused`, → `interrupted` (the turn confirmed after
  confirm_ms), also → `user_speech started`; trials over real aiortc peers against a server
  in its own process;
- echo: clients that play the agent back into their microphone (150 ms, −6/−10/−20 dB, noise
  at −55 dBFS) while it reads for a minute: onsets (pauses) and interrupts per minute, with
  and without echo cancellation, all rooms at once;
- interjections: eSpeak NG "yes", "okay", "right", … (300-600 ms) and sentences, through the
  listening code offline: how many resume and how many interrupt at each confirm_ms;
- false triggers per minute on noise: the listening code (Opus in, as a peer sends it)
  fed minutes of noises, tones and hum offline;
- CPU per listened participant: the listener's own thread CPU per second of audio, the echo
  canceller's per second of audio, and the server process's CPU with N peers sending audio
  while the agent reads to each: barge-in off, on without and with echo cancellation.

Also home of the audio the tests send: eSpeak NG speech, noise and tones, and a
microphone track that plays them in real time.

`python -m bench.barge_in [--quick]`
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from .interrupt import last_packet_after

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz
_TIME_BASE = fractions.Fraction(1, RATE)
PAD_S = 0.3  # silence around a recorded sentence


# -- audio the tests and the bench send -----------------------------------------------------


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return pcm
    swr = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = rate_in, 0
    out = [f.to_ndarray().reshape(-1) for f in swr.resample(frame) + swr.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.int16)


async def espeak_speech(engines, text: str, voice: str = "espeak:en-us", speed: float = 1.0) -> np.ndarray:
    """A sentence spoken by the real eSpeak NG engine, 48 kHz mono int16, PAD_S of silence
    before and after (a recording, as a microphone would send it)."""
    engine = next(e for e in engines if e.name == "espeak")
    v = next(x for x in engine.voices() if x.id == voice)
    chunks, rate = [], v.sample_rate
    async for chunk in engine.stream(text, v, speed):
        chunks.append(chunk.pcm)
        rate = chunk.sample_rate
    pad = np.zeros(int(PAD_S * RATE), np.int16)
    return np.concatenate([pad, resample(np.concatenate(chunks), rate, RATE), pad])


def speech_onset_s(pcm: np.ndarray, rate: int = RATE, floor_db: float = -40.0) -> float:
    """Where speech starts in a clip: the first 10 ms window above `floor_db`."""
    win = rate // 100
    n = len(pcm) // win
    rms = np.sqrt(np.mean(pcm[: n * win].astype(np.float64).reshape(n, win) ** 2, axis=1))
    loud = np.nonzero(20 * np.log10(np.maximum(rms, 1e-9) / 32768) > floor_db)[0]
    return float(loud[0] * win / rate) if len(loud) else 0.0


def noise(db: float, seconds: float, rate: int = RATE, color: str = "white", seed: int = 1) -> np.ndarray:
    """Gaussian noise at an RMS level of `db` dBFS; pink (1/f) or brown (1/f²) if asked."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = rng.standard_normal(n)
    if color != "white":
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(n, 1 / rate)
        f[0] = f[1]
        spec /= np.sqrt(f) if color == "pink" else f
        x = np.fft.irfft(spec, n)
    x *= 10 ** (db / 20) * 32768 / np.sqrt(np.mean(x**2))
    return np.clip(x, -32768, 32767).astype(np.int16)


def tone(freq: float | list[float], db: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """A steady tone (or a sum of them: mains hum) at a peak level of `db` dBFS."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate(np.atleast_1d(freq)))
    x = x / np.abs(x).max() * 10 ** (db / 20) * 32767
    return x.astype(np.int16)


@dataclass
class Clip:
    pcm: np.ndarray
    start_pts: int = -1  # where in the track it began (48 kHz samples)
    started: float = 0.0  # perf_counter when its first frame left the track
    ended: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def end_pts(self) -> int:
        return self.start_pts + -(-len(self.pcm) // FRAME) * FRAME


class MicrophoneTrack(MediaStreamTrack):
    """A microphone that plays the clips it is given, in real time, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._clips: deque[Clip] = deque()
        self._offset = 0  # samples of the current clip already sent
        self._pts = 0
        self._t0: float | None = None
        self.frames = 0

    def play(self, pcm: np.ndarray) -> Clip:
        clip = Clip(pcm.astype(np.int16, copy=False))
        self._clips.append(clip)
        return clip

    async def recv(self) -> av.AudioFrame:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        else:  # pace like a sound card: frame n leaves at t0 + n × 20 ms
            wait = self._t0 + self._pts / RATE - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = self._mix(self._next_clip_frame())
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, _TIME_BASE
        self._pts += FRAME
        self.frames += 1
        return frame

    def _mix(self, pcm: np.ndarray) -> np.ndarray:
        return pcm  # what else the microphone picks up (EchoMicrophone: the loudspeaker)

    def _next_clip_frame(self) -> np.ndarray:
        pcm = np.zeros(FRAME, np.int16)
        if self._clips:
            clip = self._clips[0]
            if self._offset == 0:
                clip.start_pts, clip.started = self._pts, time.perf_counter()
            part = clip.pcm[self._offset:self._offset + FRAME]
            pcm[: len(part)] = part
            self._offset += FRAME
            if self._offset >= len(clip.pcm):
                self._clips.popleft()
                self._offset = 0
                clip.ended = time.perf_counter()
                clip.done.set()
        return pcm


class EchoMicrophone(MicrophoneTrack):
    """A device without echo cancellation: its microphone picks up what its loudspeaker plays
    (the agent's audio as the client received it) `delay_ms` later at `gain_db`, over noise
    at `noise_db` dBFS, plus the clips a person says (`play`). Set `client` once the
    RoomClient exists: its received packets are what the loudspeaker plays."""

    def __init__(self, delay_ms: float, gain_db: float, noise_db: float = -50.0, seed: int = 0) -> None:
        super().__init__()
        self.delay_s = delay_ms / 1000
        self.gain = 10 ** (gain_db / 20)
        self.noise_rms = 10 ** (noise_db / 20) * 32768
        self.client = None
        self._rng = np.random.default_rng(seed)
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate, self._decoder.layout = RATE, "mono"
        self._seen = 0  # packets of the client already placed on the loudspeaker's timeline
        self._echo = np.zeros(RATE * 4, np.float32)  # the loudspeaker, from sample _echo_start on
        self._echo_start = 0
        self._ts0: int | None = None  # RTP timestamp of the first packet played …
        self._pos0 = 0  # … and where on the microphone's timeline it was played

    def _place(self, pos: int, pcm: np.ndarray) -> None:
        end = pos + len(pcm) - self._echo_start
        if end > len(self._echo):
            self._echo = np.concatenate([self._echo, np.zeros(max(end - len(self._echo), RATE * 4), np.float32)])
        self._echo[pos - self._echo_start:end] += pcm

    def _pull(self) -> None:
        packets = self.client.packets if self.client is not None else []
        if self._seen > len(packets):  # the list was cleared
            self._seen = 0
        for p in packets[self._seen:]:
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in self._decoder.decode(av.Packet(p.payload))]
                                 or [np.zeros(0, np.int16)]).astype(np.float32)
            # a jitter buffer plays each packet at its RTP timestamp, a fixed delay after the
            # first one arrived: the echo path's delay stays put however packets arrive
            if self._ts0 is None:
                self._ts0, self._pos0 = p.timestamp, int((p.arrival - self._t0 + self.delay_s) * RATE)
            ahead = (p.timestamp - self._ts0) & 0xFFFFFFFF
            pos = self._pos0 + (ahead - (1 << 32) if ahead >= 1 << 31 else ahead)
            if pos >= self._echo_start:
                self._place(pos, pcm)
        self._seen = len(packets)

    def _mix(self, pcm: np.ndarray) -> np.ndarray:
        self._pull()
        lo = self._pts - self._echo_start
        echo = self._echo[lo:lo + FRAME]
        out = pcm.astype(np.float32) + self._rng.standard_normal(FRAME).astype(np.float32) * self.noise_rms
        out[:len(echo)] += echo * self.gain
        if lo > RATE * 2:  # forget what was played long ago
            self._echo = self._echo[lo:].copy()
            self._echo_start += lo
        return np.clip(out, -32768, 32767).astype(np.int16)


# -- the benchmark ---------------------------------------------------------------------------

LONG_TEXT = ("This sentence is long on purpose, so that the agent is still talking when the person "
             "starts, trial {i}. And it goes on for a while after that, too, with more to say.")
INTERRUPT_SENTENCE = "Hold on, please, one question."
NOISES = {  # name: (signal maker taking seconds) — what a microphone hears when nobody talks
    "white noise -50 dBFS": lambda s: noise(-50, s),
    "white noise -35 dBFS": lambda s: noise(-35, s, seed=2),
    "white noise -20 dBFS": lambda s: noise(-20, s, seed=3),
    "pink noise -30 dBFS": lambda s: noise(-30, s, color="pink", seed=4),
    "brown noise -25 dBFS": lambda s: noise(-25, s, color="brown", seed=5),
    "mains hum 50 Hz -20 dBFS": lambda s: tone([50, 100, 150, 200], -20, s),
    "tone 1 kHz -12 dBFS": lambda s: tone(1000, -12, s),
}




def _espeak():
    """One eSpeak NG engine for the bench process: the library is process-global, and a
    second engine object would take over the first one's audio callback."""
    from engines.espeak import shared_espeak

    return shared_espeak()


def _serve(argv: list[str]) -> int:
    """The agent CLI's `serve` (the runtime listens to WHEP microphones itself)."""
    from agent.cli import main as cli_main

    return cli_main(["serve", *argv])


def _server():
    from .common import ServerProcess

    return ServerProcess(["-m", "bench.barge_in", "serve", "--log-level", "WARNING"], name="tts-agent-barge-in")



async def _first_event(client, uid: str, types: tuple[str, ...], timeout: float = 10) -> dict:
    """The first of these events for utterance `uid` (whichever comes first)."""
    waits = [asyncio.ensure_future(client.wait_event(t, timeout=timeout, id=uid)) for t in types]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise asyncio.TimeoutError(f"none of {types} for {uid}")
        return min((w.result() for w in done), key=lambda e: e["_arrival"])
    finally:
        for w in waits:
            w.cancel()


async def measure_latency(base_url: str, trials: int, barge_in: dict | None = None, room: str = "bench-barge-in") -> list[dict]:
    """Onset of speech in the sent track → what the client sees, one interrupt per trial.
    `barge_in`: the room's settings (default: the agent's defaults, mode interrupt)."""
    import random

    from agent.client import RoomClient

    from .common import room_token, use_loopback_ice

    use_loopback_ice()
    engine = _espeak()
    sentence = await espeak_speech([engine], INTERRUPT_SENTENCE)
    onset_in_clip = speech_onset_s(sentence)
    mic = MicrophoneTrack()
    client = RoomClient(base_url, room, room_token(room, "bench"), send_audio=mic)
    await client.connect()
    client.send({"type": "configure", "barge_in": {"mode": "interrupt", **(barge_in or {})}})
    samples = []
    try:
        for i in range(trials):
            uid = f"t{i}"
            client.send({"type": "synthesize", "id": uid, "text": LONG_TEXT.format(i=i), "voice": "espeak:en-us"})
            started = await client.wait_event("started", timeout=30, id=uid)
            # the person talks 1.5..1.9 s into the speech: past the ~1.2 s the echo canceller
            # needs to find that this client sends no echo back
            for _ in range(random.randint(75, 95)):
                await client.wait_packet(client.packets[-1].arrival if client.packets else started["_arrival"])
            n_before = len(client.events_of("user_speech"))
            clip = mic.play(sentence)
            paused = await _first_event(client, uid, ("paused", "interrupted"))  # confirm_ms 0: no pause
            last = await last_packet_after(client, paused["_arrival"] - 0.1)
            interrupted = await client.wait_event("interrupted", timeout=10, id=uid)
            heard = client.events_of("user_speech")[n_before]
            await asyncio.wait_for(clip.done.wait(), 10)
            onset = clip.started + onset_in_clip
            samples.append({
                "reason": interrupted["reason"],
                "onset_to_last_packet_ms": round((last - onset) * 1000, 1),
                "onset_to_user_speech_ms": round((heard["_arrival"] - onset) * 1000, 1),
                "onset_to_paused_ms": round((paused["_arrival"] - onset) * 1000, 1) if paused["type"] == "paused" else None,
                "onset_to_interrupted_ms": round((interrupted["_arrival"] - onset) * 1000, 1),
                "packets_after_paused_event": sum(paused["_arrival"] < p.arrival for p in client.packets),
            })
            await client.wait_event("user_speech", timeout=10, state="stopped", participant=heard["participant"])
            client.events.clear()  # the next trial's user_speech events are its own
            client.packets.clear()
    finally:
        await client.close()
    return samples


def _offline_room(mode: str):
    """A real Room and Speaker whose sink keeps events: the listening code without a network."""
    from agent.protocol import BargeIn
    from agent.rooms import RoomRegistry
    from agent.settings import Settings
    from engines.registry import VoiceRegistry

    settings = Settings(barge_in=BargeIn(mode=mode, echo_cancel=False))  # it plays nothing: no echo to cancel
    return RoomRegistry(settings, VoiceRegistry([_espeak()], None))


class _Events:
    """The offline rooms' sink: keeps the events, drops the frames."""

    def __init__(self, room):
        self.events: list[bytes] = []

    def send_frame(self, pcm, slot):
        pass

    def send_event(self, data, to):
        self.events.append(data)

    def discard_buffered(self):
        return 0

    def close(self):
        pass


def _opus_packets(pcm: np.ndarray) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = RATE, "mono", "s16", 32_000
    enc.options = {"application": "voip", "frame_duration": "20"}
    enc.open()
    out = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[i:i + FRAME].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def measure_false_triggers(minutes: float) -> dict:
    """Onsets per minute on noises and tones, fed as Opus packets (as a peer sends them)."""
    from agent.listening import Listening

    registry = _offline_room("interrupt")
    out = {}
    for i, (name, make) in enumerate(NOISES.items()):
        room = registry.open(f"noise{i}", _Events)
        listener = Listening().listen(room, "mic")
        for payload in _opus_packets(make(minutes * 60)):
            listener.feed_opus(payload)
        out[name] = {"minutes": minutes, "onsets": listener.stats.onsets,
                     "per_minute": round(listener.stats.onsets / minutes, 3)}
    return out


def measure_detection(engine_voices: list[str]) -> dict:
    """The other side of false triggers: eSpeak sentences (several voices) that do start a turn."""
    from agent.listening import Listening

    engine = _espeak()
    registry = _offline_room("interrupt")
    texts = ["Hold on, please.", "Wait a second, that is wrong.", "No.", "Could you repeat that?"]
    hits = total = 0
    for v in engine_voices:
        for t in texts:
            room = registry.open(f"{v}-{t}", _Events)
            listener = Listening().listen(room, "mic")
            pcm = asyncio.run(espeak_speech([engine], t, voice=v))
            for payload in _opus_packets(np.concatenate([pcm, np.zeros(RATE, np.int16)])):
                listener.feed_opus(payload)
            hits += listener.stats.onsets >= 1
            total += 1
    return {"voices": engine_voices, "sentences": total, "detected": hits}


def measure_listener_cpu(seconds: float) -> dict:
    """Thread CPU one listener spends (Opus decode, resample to 16 kHz, VAD) per second of audio."""
    from agent.listening import Listening

    speech = asyncio.run(espeak_speech([_espeak()], LONG_TEXT.format(i=1)))
    reps = int(seconds * RATE // len(speech)) + 1
    pcm = (np.tile(speech, reps)[: int(seconds * RATE)] + noise(-45, seconds)).astype(np.int16)
    packets = _opus_packets(pcm)
    registry = _offline_room("duck")
    listener = Listening().listen(registry.open("cpu", _Events), "mic")
    for payload in packets[:50]:  # warm: model, decoder
        listener.feed_opus(payload)
    before_cpu, before_calls = listener.stats.cpu_s, listener.stats.vad_calls
    t0 = time.thread_time()
    for payload in packets[50:]:
        listener.feed_opus(payload)
    wall_cpu = time.thread_time() - t0
    audio_s = (len(packets) - 50) * FRAME / RATE
    cpu = listener.stats.cpu_s - before_cpu
    return {"audio_s": round(audio_s, 1), "cpu_percent_of_one_core": round(100 * cpu / audio_s, 3),
            "including_call_overhead_percent": round(100 * wall_cpu / audio_s, 3),
            "vad_us_per_call": None if listener.stats.vad_calls == before_calls else
            round(1e6 * cpu / (listener.stats.vad_calls - before_calls), 1)}


ECHO_TEXT = " ".join(["The agent reads the news of the day, one story after another, calm and steady, "
                      "while the people in the room listen to it on a loudspeaker."] * 6)  # ~1 min
ECHO_GAINS = (-6, -10, -20)
ECHO_DELAY_MS = 150


async def measure_echo(base_url: str, seconds: float) -> dict:
    """Clients playing the agent back into their microphones, one room per (gain, echo
    cancellation on/off), all at once: onsets (each pauses the agent) and interrupts per minute."""
    from agent.client import RoomClient

    from .common import room_token, use_loopback_ice

    use_loopback_ice()
    rooms = []
    for gain in ECHO_GAINS:
        for cancel in (False, True):
            name = f"bench-echo{-gain}-{'ec' if cancel else 'raw'}"
            mic = EchoMicrophone(ECHO_DELAY_MS, gain, noise_db=-55, seed=len(rooms))
            client = RoomClient(base_url, name, room_token(name, "bench"), send_audio=mic)
            mic.client = client
            rooms.append((gain, cancel, client))
    await asyncio.gather(*(c.connect() for _, _, c in rooms))

    async def keep_reading(client) -> None:
        n = 0
        while True:
            uid = f"r{n}"
            client.send({"type": "synthesize", "id": uid, "text": ECHO_TEXT, "voice": "espeak:en-us"})
            await _first_event(client, uid, ("finished", "interrupted"), timeout=3600)
            n += 1

    for gain, cancel, c in rooms:
        c.send({"type": "configure", "barge_in": {"mode": "interrupt", "echo_cancel": cancel}})
    readers = [asyncio.ensure_future(keep_reading(c)) for _, _, c in rooms]
    try:
        await asyncio.sleep(seconds)
    finally:
        for r in readers:
            r.cancel()
    out = {}
    for gain, cancel, c in rooms:
        onsets = sum(e.get("type") == "user_speech" and e.get("state") == "started" for e in c.events)
        cuts = sum(e.get("type") == "interrupted" and e.get("reason") == "barge_in" for e in c.events)
        out[f"{gain} dB, echo cancellation {'on' if cancel else 'off'}"] = {
            "gain_db": gain, "echo_cancel": cancel, "seconds": seconds,
            "pauses_per_min": round(onsets * 60 / seconds, 2), "interrupts_per_min": round(cuts * 60 / seconds, 2)}
    await asyncio.gather(*(c.close() for _, _, c in rooms), return_exceptions=True)
    return out


INTERJECTIONS = ["Yes.", "Okay.", "Right.", "Yeah.", "Uh-huh.", "Mm-hmm.", "No.", "Sure."]
TURNS = ["Hold on, please, I have a question.", "Wait a second, that is wrong.",
         "Could you repeat the last part?", "Stop, stop, that is enough for now."]


def measure_interjections(voices: list[str], confirm_ms_values=(500, 600, 700, 800, 1000)) -> dict:
    """Short words and sentences (eSpeak NG, several voices), Opus through the listening code:
    at each confirm_ms, how many of the words end as an interjection (the agent resumes) and
    how many sentences as a turn (it is interrupted). Clips that start no turn at all (too
    short for min_speech_ms) are counted apart."""
    from agent.listening import Listening

    engine = _espeak()
    clips = [(kind, text, v, asyncio.run(espeak_speech([engine], text, voice=v)))
             for v in voices for kind, texts in (("interjection", INTERJECTIONS), ("turn", TURNS)) for text in texts]
    out = {}
    for confirm_ms in confirm_ms_values:
        registry = _offline_room("interrupt")
        registry.settings.barge_in = registry.settings.barge_in.model_copy(update={"confirm_ms": confirm_ms})
        counts = {"interjection": Counter(), "turn": Counter()}
        for i, (kind, text, v, pcm) in enumerate(clips):
            sinks: list[_Events] = []
            room = registry.open(f"c{confirm_ms}-{i}", lambda r: sinks.append(_Events(r)) or sinks[-1])
            listener = Listening().listen(room, "mic")
            for payload in _opus_packets(np.concatenate([pcm, np.zeros(RATE, np.int16)])):
                listener.feed_opus(payload)
            kinds = [json.loads(e).get("kind") for e in sinks[0].events if b'"state":"stopped"' in e]
            counts[kind][kinds[0] if kinds else "not heard"] += 1
        out[confirm_ms] = {k: dict(c) for k, c in counts.items()}
    return out


class SteppedRoom:
    """What a FarEnd reads of a Room, on a clock the caller steps: the canceller offline."""

    class Clock:
        slot = 1000

        def slot_now(self, phase: int = 0) -> int:
            return self.slot

    def __init__(self) -> None:
        self.clock, self.phase, self.output_taps = self.Clock(), 0, []

    def slot_now(self) -> int:
        return self.clock.slot_now(self.phase)

    def add_output_tap(self, tap) -> None:
        self.output_taps.append(tap)

    def remove_output_tap(self, tap) -> None:
        self.output_taps.remove(tap)


def measure_echo_cpu(seconds: float) -> dict:
    """Thread CPU of one participant's echo canceller (AEC3 + noise suppression + high-pass,
    far end and echo-path estimate) per second of audio, with echo (−10 dB, 150 ms)."""
    from agent.echo import SLOT_SAMPLES, EchoCanceller, FarEnd

    speech = asyncio.run(espeak_speech([_espeak()], ECHO_TEXT[:400]))
    reps = int(seconds * RATE // len(speech)) + 1
    far48 = np.tile(speech, reps)[: int(seconds * RATE)]
    far16 = resample(far48, RATE, 16_000).astype(np.float64)
    d = ECHO_DELAY_MS * 16
    mic = noise(-55, len(far16) / 16_000, 16_000).astype(np.float64)
    mic[d:] += far16[:-d] * 10 ** (-10 / 20)
    mic = mic.astype(np.int16)
    room = SteppedRoom()
    canceller = EchoCanceller(FarEnd(room))
    cpu = 0.0
    for k in range(len(mic) // SLOT_SAMPLES):
        for tap in room.output_taps:
            tap(far48[k * FRAME:(k + 1) * FRAME], room.clock.slot)
        room.clock.slot += 1
        t0 = time.thread_time()
        canceller.process(mic[k * SLOT_SAMPLES:(k + 1) * SLOT_SAMPLES])
        cpu += time.thread_time() - t0
    audio_s = len(mic) / 16_000
    return {"audio_s": round(audio_s, 1), "cpu_percent_of_one_core": round(100 * cpu / audio_s, 3),
            "us_per_10ms_frame": round(1e6 * cpu / max(canceller.frames, 1), 1),
            "echo_found": canceller.path.echo, "delay_ms": canceller.path.delay_ms}


async def _peers_sending(base_url: str, n: int, seconds: float, pid: int) -> dict:
    """Server process CPU with n peers sending speech while the agent reads to each of them:
    barge-in off, then on (`duck`, so the agent keeps talking) without and with echo
    cancellation."""
    from agent.client import RoomClient

    from .common import ProcessMeter, room_token, use_loopback_ice

    use_loopback_ice()
    speech = await espeak_speech([_espeak()], LONG_TEXT.format(i=2))
    mics = [MicrophoneTrack() for _ in range(n)]
    clients = [RoomClient(base_url, f"bench-cpu-{k}", room_token(f"bench-cpu-{k}", f"p{k}"), send_audio=mic)
               for k, mic in enumerate(mics)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        loops = int(4 * seconds * RATE // len(speech)) + 2
        for mic in mics:
            for _ in range(loops):
                mic.play(speech)
        for c in clients:  # the agent talks all along: the echo canceller has a far end
            c.send({"type": "synthesize", "id": "read", "text": ECHO_TEXT * 2, "voice": "espeak:en-us"})
        meter = ProcessMeter(pid)
        out = {}
        for name, cfg in (("off", {"mode": "off"}), ("on", {"mode": "duck", "echo_cancel": False}),
                          ("on_echo_cancel", {"mode": "duck", "echo_cancel": True})):
            for c in clients:
                c.send({"type": "configure", "barge_in": cfg})
            await asyncio.sleep(1.0)  # settle after switching, then measure a fixed window
            meter.mark()
            await asyncio.sleep(seconds)
            out[name] = round(meter.cpu_percent(), 2)
        out["per_listened_peer"] = round((out["on"] - out["off"]) / n, 2)
        out["per_listened_peer_echo_cancel"] = round((out["on_echo_cancel"] - out["off"]) / n, 2)
        return out
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def main(quick: bool = False) -> dict:
    from .common import percentiles, print_table, write_result

    trials = 4 if quick else 12  # each trial is seconds of real-time speech
    noise_min = 0.25 if quick else 3.0
    echo_s = 20.0 if quick else 60.0
    peers, window_s = (2, 3.0) if quick else (4, 6.0)
    before = {"confirm_ms": 0, "echo_cancel": False}  # what barge-in did before pause-then-confirm

    with _server() as server:
        samples = asyncio.run(measure_latency(server.base_url, trials))
        samples_before = asyncio.run(measure_latency(server.base_url, trials, before, room="bench-barge-in-before"))
        echo = asyncio.run(measure_echo(server.base_url, echo_s))
        cpu_server = asyncio.run(_peers_sending(server.base_url, peers, window_s, server.pid))
    false_triggers = measure_false_triggers(noise_min)
    detection = measure_detection(["espeak:en-us", "espeak:en-029"] if quick else
                                  ["espeak:en-us", "espeak:en-029", "espeak:de", "espeak:fr-fr", "espeak:es"])
    interjections = measure_interjections(["espeak:en-029"] if quick else ["espeak:en-029", "espeak:en-gb", "espeak:en-us"])
    cpu_listener = measure_listener_cpu(20.0 if quick else 120.0)
    cpu_echo = measure_echo_cpu(20.0 if quick else 120.0)

    keys = ("onset_to_last_packet_ms", "onset_to_paused_ms", "onset_to_interrupted_ms", "onset_to_user_speech_ms")
    latency = {k: percentiles([s[k] for s in samples if s[k] is not None], (50, 95)) for k in keys}
    latency_before = {k: percentiles([s[k] for s in samples_before if s[k] is not None], (50, 95)) for k in keys}
    print_table(f"Speech onset in the sent track → at the client, {trials} trials each, min_speech_ms 250 (ms)",
                ["measure", "settings", "n", "p50", "p95"],
                [[k, name, v["n"], v["p50"], v["p95"]] for name, lat in
                 (("defaults (pause, confirm 700)", latency), ("confirm_ms 0, no echo cancel", latency_before))
                 for k, v in lat.items() if v["n"]])
    after = [s["packets_after_paused_event"] for s in samples]
    print(f"packets arriving after the paused event: {dict(sorted(Counter(after).items()))} (count: trials)")
    print_table(f"Agent's own echo ({ECHO_DELAY_MS} ms, noise -55 dBFS), {echo_s:.0f} s per room, all rooms at once",
                ["echo gain", "echo cancellation", "pauses / min", "interrupts / min"],
                [[v["gain_db"], "on" if v["echo_cancel"] else "off", v["pauses_per_min"], v["interrupts_per_min"]]
                 for v in echo.values()])
    print_table("Interjections and turns by confirm_ms (eSpeak NG, Opus, offline): how they end",
                ["confirm_ms", "words: interjection", "words: turn", "words: not heard", "sentences: turn",
                 "sentences: interjection"],
                [[ms, c["interjection"].get("interjection", 0), c["interjection"].get("turn", 0),
                  c["interjection"].get("not heard", 0), c["turn"].get("turn", 0), c["turn"].get("interjection", 0)]
                 for ms, c in interjections.items()])
    print_table(f"False triggers on noise ({noise_min} min each, fed as Opus)", ["signal", "onsets", "per minute"],
                [[k, v["onsets"], v["per_minute"]] for k, v in false_triggers.items()])
    print(f"detected eSpeak sentences: {detection['detected']}/{detection['sentences']} ({', '.join(detection['voices'])})")
    print_table("CPU per listened participant (% of one core)", ["measure", "value"], [
        ["listener thread CPU (decode + resample + VAD)", cpu_listener["cpu_percent_of_one_core"]],
        ["VAD + decode per 32 ms chunk (µs)", cpu_listener["vad_us_per_call"]],
        ["echo canceller thread CPU (AEC3 + NS + HPF, far end, echo path)", cpu_echo["cpu_percent_of_one_core"]],
        ["echo canceller per 10 ms frame (µs)", cpu_echo["us_per_10ms_frame"]],
        [f"server process, {peers} peers sending, agent reading, barge-in off", cpu_server["off"]],
        [f"server process, {peers} peers sending, agent reading, barge-in on", cpu_server["on"]],
        [f"server process, {peers} peers sending, agent reading, on + echo cancellation", cpu_server["on_echo_cancel"]],
        ["server process, added per listened peer", cpu_server["per_listened_peer"]],
        ["server process, added per listened peer with echo cancellation", cpu_server["per_listened_peer_echo_cancel"]],
    ])
    from agent.vad import load_model

    result = {"trials": trials, "vad_backend": load_model(), "latency": latency, "latency_before": latency_before,
              "samples": samples, "samples_before": samples_before, "echo": echo, "interjections": interjections,
              "false_triggers": false_triggers, "detection": detection,
              "cpu": {"listener": cpu_listener, "echo_canceller": cpu_echo,
                      "server_process": {"peers": peers, "window_s": window_s, **cpu_server}}}
    print(f"-> {write_result('barge_in', result)}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        raise SystemExit(_serve(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, shorter noise")
    main(quick=parser.parse_args().quick)
