"""Barge-in: how fast the agent stops when a person starts talking, how often it stops for
noise, and what listening costs.

- latency: speech onset in the track the client sends → the last agent speech packet
  arriving at the client (also → `user_speech started` and → `interrupted`), 20 trials over
  real aiortc peers against a server in its own process;
- false triggers per minute on noise: the listening code (Opus in, as a peer sends it)
  fed minutes of noises, tones and hum offline;
- CPU per listened participant: the listener's own thread CPU per second of audio, and the
  server process's CPU with N peers sending audio, barge-in on versus off.

Also home of the audio the tests send: eSpeak NG speech, noise and tones, and a
microphone track that plays them in real time.

`python -m bench.barge_in [--quick]`
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

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
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, _TIME_BASE
        self._pts += FRAME
        self.frames += 1
        return frame
