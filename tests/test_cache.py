"""The PCM cache in front of real engines: hits are counted and identical, only complete
results are kept, and the byte bound evicts the least recently used phrase."""

from __future__ import annotations

import numpy as np
import pytest

from agent import metrics
from engines.base import AudioChunk, EngineError
from engines.cache import CachingEngine, PcmCache
from engines.piper import PiperEngine
from tests.conftest import shared_engines
from tests.piper_models import write_tiny_voice

JOE = "piper:en_US-joe-medium"


def bare(name: str):
    """The process's real engine `name`, without the cache and fallback wrappers."""
    engine = next(e for e in shared_engines() if e.name == name)
    while hasattr(engine, "inner"):
        engine = engine.inner
    return engine


def counts() -> tuple[float, float]:
    return metrics.CACHE.labels("hit")._value.get(), metrics.CACHE.labels("miss")._value.get()


async def pcm_of(engine, text, voice, speed=1.0) -> np.ndarray:
    return np.concatenate([c.pcm async for c in engine.stream(text, voice, speed)])


async def test_second_identical_request_is_served_from_cache():
    piper = bare("piper")
    voice = next(v for v in piper.voices() if v.id == JOE)
    cached = CachingEngine(piper, 16 << 20)
    hits, misses = counts()
    first = await pcm_of(cached, "Thank you for the follow!", voice)
    assert counts() == (hits, misses + 1)
    second = await pcm_of(cached, "  Thank you   for the follow!", voice)  # spaces do not matter
    assert counts() == (hits + 1, misses + 1)
    # Piper (VITS) samples noise: only the cache can give the very same samples twice
    assert np.array_equal(first, second)
    assert not np.array_equal(await pcm_of(piper, "Thank you for the follow!", voice), first)


async def test_a_miss_hands_out_read_only_pcm():
    # The miss's chunks are what a later hit plays (kept, not copied): a consumer that wrote
    # into one would change the phrase for every later listener, so writing must fail.
    espeak = bare("espeak")
    voice = espeak.voices()[0]
    cached = CachingEngine(espeak, 16 << 20)
    chunks = [c async for c in cached.stream("Read only, please.", voice)]
    with pytest.raises(ValueError):
        chunks[0].pcm[0] = 1
    hit = [c async for c in cached.stream("Read only, please.", voice)]
    assert all(a.pcm is b.pcm for a, b in zip(chunks, hit))


async def test_key_includes_voice_speed_and_case():
    espeak = bare("espeak")
    cached = CachingEngine(espeak, 16 << 20)
    voices = {v.id: v for v in espeak.voices()}
    en, de = voices["espeak:en-us"], voices["espeak:de"]
    await pcm_of(cached, "Hello", en)
    hits, misses = counts()
    await pcm_of(cached, "Hello", en, speed=1.5)
    await pcm_of(cached, "Hello", de)
    await pcm_of(cached, "HELLO", en)  # "US" and "us" are said differently: case is kept
    assert counts() == (hits, misses + 3)
    await pcm_of(cached, "Hello", en, speed=1.5)
    assert counts() == (hits + 1, misses + 3)


async def test_a_closed_stream_is_not_stored():
    espeak = bare("espeak")
    voice = next(v for v in espeak.voices() if v.id == "espeak:en-us")
    cached = CachingEngine(espeak, 16 << 20)
    stream = cached.stream("First sentence here. Second one. Third one.", voice)
    await anext(stream)
    await stream.aclose()
    assert len(cached.cache) == 0
    hits, misses = counts()
    full = await pcm_of(cached, "First sentence here. Second one. Third one.", voice)
    assert counts() == (hits, misses + 1)
    assert len(cached.cache) == 1 and cached.cache.bytes == full.nbytes


async def test_a_failed_stream_is_not_stored(tmp_path):
    onnx = write_tiny_voice(tmp_path, name="en_US-broken-low", speakers=("a",))
    onnx.write_bytes(b"not a model")
    piper = PiperEngine([tmp_path], include_packages=False)
    cached = CachingEngine(piper, 16 << 20)
    try:
        with pytest.raises(EngineError):
            await pcm_of(cached, "hello", piper.voices()[0])
        assert len(cached.cache) == 0
    finally:
        piper.close()


async def test_long_texts_are_not_kept(monkeypatch):
    import engines.cache

    espeak = bare("espeak")
    voice = next(v for v in espeak.voices() if v.id == "espeak:en-us")
    short = await pcm_of(espeak, "Hi.", voice)
    monkeypatch.setattr(engines.cache, "MAX_ENTRY_BYTES", short.nbytes * 3)
    cached = CachingEngine(espeak, 16 << 20)
    await pcm_of(cached, "Hi.", voice)
    await pcm_of(cached, "This sentence is a good deal longer than the limit allows a phrase to be.", voice)
    assert len(cached.cache) == 1 and cached.cache.bytes < short.nbytes * 2  # only "Hi." was kept


def test_lru_is_bounded_in_bytes():
    def chunk(n: int) -> list[AudioChunk]:
        return [AudioChunk(np.zeros(n, np.int16), 16000)]

    cache = PcmCache(max_bytes=10_000)
    cache.put(("e", "v", 1.0, "a"), chunk(2000))  # 4000 bytes
    cache.put(("e", "v", 1.0, "b"), chunk(2000))
    assert cache.get(("e", "v", 1.0, "a")) is not None  # a is now the most recent
    cache.put(("e", "v", 1.0, "c"), chunk(2000))  # 12000 > 10000: b goes
    assert cache.get(("e", "v", 1.0, "b")) is None
    assert cache.get(("e", "v", 1.0, "a")) is not None and cache.get(("e", "v", 1.0, "c")) is not None
    assert cache.bytes == 8000
    cache.put(("e", "v", 1.0, "huge"), chunk(6000))  # larger than the whole cache: not kept
    assert cache.get(("e", "v", 1.0, "huge")) is None and cache.bytes == 8000
    hit = cache.get(("e", "v", 1.0, "a"))
    assert not hit[0].pcm.flags.writeable  # shared by every hit: nobody may change it
