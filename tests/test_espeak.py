"""eSpeak NG is one library state per process: a second engine must say so, not crash it."""

from __future__ import annotations

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
