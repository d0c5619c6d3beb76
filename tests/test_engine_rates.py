"""Engines asked for 48 kHz deliver it themselves, resampled on their own threads: the same
speech, the same captions, at the rate the frame path wants (nothing left for the loop)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.espeak import EspeakEngine
from engines.piper import PiperEngine
from tests.conftest import shared_engines

TEXT = "Hello there. This is the second sentence, a little longer than the first."


async def _collect(engine, voice, rate=None):
    return [c async for c in engine.stream(TEXT, voice, 1.0, sample_rate=rate)]


def _envelope(pcm: np.ndarray, rate: int, window_s: float = 0.05) -> np.ndarray:
    """RMS per 50 ms window: the shape of the speech, whatever the sample rate."""
    n = int(rate * window_s)
    frames = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((frames ** 2).mean(axis=1))


def _bare(name: str):
    """The process's own engine: eSpeak NG keeps global state, so there is one per process."""
    engine = next(e for e in shared_engines() if e.name == name)
    while hasattr(engine, "inner"):
        engine = engine.inner
    return engine


@pytest.fixture
def espeak() -> EspeakEngine:
    return _bare("espeak")


@pytest.fixture
def piper() -> PiperEngine:
    return _bare("piper")


async def test_espeak_delivers_48k_with_the_same_speech_and_marks(espeak):
    voice = next(v for v in espeak.voices() if v.id == "espeak:en-us")
    native = await _collect(espeak, voice)
    wide = await _collect(espeak, voice, 48_000)
    assert {c.sample_rate for c in native} == {voice.sample_rate} and {c.sample_rate for c in wide} == {48_000}
    native_s = sum(len(c.pcm) for c in native) / voice.sample_rate
    wide_s = sum(len(c.pcm) for c in wide) / 48_000
    assert abs(wide_s - native_s) < 0.025, (native_s, wide_s)  # the resampler's tail is flushed (a few ms per sentence)
    # the same marks, at the same times
    def timeline(chunks):
        out, base = [], 0
        for c in chunks:
            out += [(m.kind, m.text, (base + m.sample) / c.sample_rate) for m in c.marks]
            base += len(c.pcm)
        return out
    a, b = timeline(native), timeline(wide)
    assert [(k, t) for k, t, _ in a] == [(k, t) for k, t, _ in b] and any(k == "word" for k, _, _ in a)
    assert max(abs(x - y) for (_, _, x), (_, _, y) in zip(a, b)) < 0.025  # within about a frame
    # the same sound: loud where the native speech is loud, quiet in its pauses
    ea = _envelope(np.concatenate([c.pcm for c in native]), voice.sample_rate)
    eb = _envelope(np.concatenate([c.pcm for c in wide]), 48_000)
    n = min(len(ea), len(eb))
    assert np.corrcoef(ea[:n], eb[:n])[0, 1] > 0.95


async def test_piper_delivers_48k(piper):
    voice = next(v for v in piper.voices() if v.id == "piper:en_US-joe-medium")
    native = await _collect(piper, voice)
    wide = await _collect(piper, voice, 48_000)
    assert {c.sample_rate for c in wide} == {48_000}
    assert [m.text for c in wide for m in c.marks] == [m.text for c in native for m in c.marks]
    native_s = sum(len(c.pcm) for c in native) / voice.sample_rate
    wide_s = sum(len(c.pcm) for c in wide) / 48_000
    # Piper is not deterministic sample for sample (noise_w), so compare durations loosely
    assert abs(wide_s - native_s) / native_s < 0.15, (native_s, wide_s)
