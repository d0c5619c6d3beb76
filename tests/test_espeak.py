"""eSpeak NG is one library state per process: a second engine must say so, not crash it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engines.espeak import EspeakEngine
from tests.conftest import shared_engines


async def test_a_second_espeak_engine_is_unavailable_and_the_first_still_speaks():
    first = next(e for e in shared_engines() if e.name == "espeak")
    second = EspeakEngine()
    try:
        assert not second.available and "already in use" in second.unavailable_reason
        voice = next(v for v in first.voices() if v.id == "espeak:en-us")
        pcm = [c.pcm async for c in first.stream("Still speaking.", voice)]
        assert sum(len(p) for p in pcm) > 0.3 * voice.sample_rate
    finally:
        second.close()


def test_closing_the_engine_hands_the_library_on():
    # in a fresh process: this one's engine is shared by the whole suite
    script = """
import asyncio
from engines.espeak import EspeakEngine, shared_espeak
first = shared_espeak()
assert first.available and not EspeakEngine().available
first.close()
again = shared_espeak()
assert again is not first and again.available
voice = next(v for v in again.voices() if v.id == "espeak:en-us")
async def speak():
    return sum([len(c.pcm) async for c in again.stream("Hello again.", voice)])
assert asyncio.run(speak()) > 0.3 * voice.sample_rate
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


async def test_synthesis_leaves_no_cyclic_garbage():
    # Garbage in cycles is only freed by a collector pass, which stops the frame clock: at
    # 150 rooms the eSpeak callback's ctypes objects were ~1300 such objects a second.
    import gc

    engine = next(e for e in shared_engines() if e.name == "espeak")
    while hasattr(engine, "inner"):
        engine = engine.inner
    voice = next(v for v in engine.voices() if v.id == "espeak:en-us")
    text = "Every chunk of this reading comes through the library's callback. " * 8
    gc.collect()
    gc.disable()
    try:
        chunks = [c async for c in engine.stream(text, voice, sample_rate=48_000)]
        found = gc.collect()
    finally:
        gc.enable()
    assert len(chunks) > 20  # enough callbacks that one cycle each would show
    assert found < len(chunks) // 4, f"{found} objects in reference cycles after {len(chunks)} chunks"
