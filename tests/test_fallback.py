"""Fallback voices: a voice whose engine cannot load or fails mid-utterance is continued by
its fallback voice, with a notice the room hears about as `engine_error`; without a
fallback the error reaches the Speaker and the next utterance still plays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engines.base import AudioChunk, EngineError, Voice
from engines.fallback import FallbackEngine, formant_fallback, voice_lookup
from engines.piper import PiperEngine
from tests.conftest import shared_engines, start_agent, stop_agent
from tests.piper_models import write_tiny_voice


def bare(name: str):
    engine = next(e for e in shared_engines() if e.name == name)
    while hasattr(engine, "inner"):
        engine = engine.inner
    return engine


class FailingAfter:
    """Fault injection around the real eSpeak NG engine: sentence number `fail_at` (0-based,
    counted over the engine's life) raises after its first chunk, as an engine crashing
    mid-utterance would. A real engine cannot be made to crash on cue."""

    name = "flaky"
    available = True
    unavailable_reason = None

    def __init__(self, fail_at: int, fallback: str | None):
        self.inner = bare("espeak")
        self.fail_at = fail_at
        self.sentences = 0
        self.fallback = fallback

    def voices(self) -> list[Voice]:
        base = next(v for v in self.inner.voices() if v.id == "espeak:en-us")
        return [dataclasses.replace(base, id="flaky:en", engine="flaky", fallback=self.fallback)]

    async def stream(self, text, voice, speed=1.0, sample_rate=None):
        real = next(v for v in self.inner.voices() if v.id == "espeak:en-us")
        async for chunk in self.inner.stream(text, real, speed):
            if any(m.kind == "sentence" for m in chunk.marks):
                self.sentences += 1
            yield chunk
            if self.sentences - 1 == self.fail_at:
                raise EngineError("synthesizer crashed")


def wrap(engine, others):
    engines = [engine, *others]
    return FallbackEngine(engine, voice_lookup(engines), formant_fallback(engines))


async def collect(stream) -> list[AudioChunk]:
    return [c async for c in stream]


async def test_mid_utterance_failure_continues_with_the_fallback_from_the_failed_sentence():
    espeak = bare("espeak")
    flaky = FailingAfter(fail_at=1, fallback="espeak:de")
    engine = wrap(flaky, [espeak])
    (voice,) = engine.voices()
    chunks = await collect(engine.stream("One two three. Four five six. Seven eight nine.", voice))
    notices = [c.notice for c in chunks if c.notice]
    assert len(notices) == 1 and "flaky:en failed (synthesizer crashed)" in notices[0] and "espeak:de" in notices[0]
    first_fallback = next(i for i, c in enumerate(chunks) if c.notice)
    spoken_by_first = [m.text for c in chunks[:first_fallback] for m in c.marks if m.kind == "sentence"]
    spoken_by_fallback = [m.text for c in chunks[first_fallback:] for m in c.marks if m.kind == "sentence"]
    assert spoken_by_first == ["One two three.", "Four five six."]  # the second one broke off
    assert spoken_by_fallback == ["Four five six.", "Seven eight nine."]  # ...so it is said again, whole
    assert sum(len(c.pcm) for c in chunks[first_fallback:]) > espeak.sample_rate  # real speech followed


async def test_a_voice_that_cannot_load_is_spoken_by_its_fallback(tmp_path):
    onnx = write_tiny_voice(tmp_path, name="en_US-broken-low", speakers=("a",))
    onnx.write_bytes(b"not a model")
    piper = PiperEngine([tmp_path], include_packages=False)
    espeak = bare("espeak")
    try:
        engine = wrap(piper, [espeak])
        (voice,) = engine.voices()
        assert voice.fallback == "espeak:en-us"  # neural voices fall back to eSpeak NG of their language
        chunks = await collect(engine.stream("Hello there. Goodbye.", voice))
        assert "could not load Piper voice" in chunks[0].notice
        assert chunks[0].sample_rate == espeak.sample_rate
        assert [m.text for c in chunks for m in c.marks if m.kind == "sentence"] == ["Hello there.", "Goodbye."]
        assert np.abs(np.concatenate([c.pcm for c in chunks]).astype(np.int32)).max() > 1000
    finally:
        piper.close()


async def test_without_a_fallback_the_error_propagates():
    engine = wrap(FailingAfter(fail_at=0, fallback=None), [])
    (voice,) = engine.voices()
    assert voice.fallback is None
    with pytest.raises(EngineError, match="synthesizer crashed"):
        await collect(engine.stream("One. Two.", voice))


async def test_room_hears_the_fallback_and_an_engine_error_event():
    flaky = FailingAfter(fail_at=0, fallback="espeak:en-us")
    engines = [wrap(flaky, shared_engines()), *shared_engines()]
    running = await start_agent(engines=engines)
    try:
        c = await running.client("fallback")
        c.send({"type": "synthesize", "id": "a", "voice": "flaky:en", "text": "First sentence. Second sentence."})
        error = await c.wait_event("error", id="a")
        finished = await c.wait_event("finished", id="a")
        assert error["code"] == "engine_error" and "espeak:en-us speaks the rest" in error["message"]
        assert finished["audio_ms"] > 1000  # both sentences were heard, not just the broken first chunk
    finally:
        await c.close()
        await stop_agent(running)


async def test_without_fallback_the_room_reports_and_plays_the_next_utterance():
    flaky = FailingAfter(fail_at=0, fallback=None)
    engines = [wrap(flaky, shared_engines()), *shared_engines()]
    running = await start_agent(engines=engines)
    try:
        c = await running.client("nofallback")
        c.send({"type": "synthesize", "id": "bad", "voice": "flaky:en", "text": "This breaks. Never heard."})
        c.send({"type": "synthesize", "id": "next", "voice": "espeak:en-us", "text": "This one plays."})
        error = await c.wait_event("error", id="bad")
        assert error["code"] == "engine_error" and "synthesizer crashed" in error["message"]
        await c.wait_event("started", id="next")
        finished = await c.wait_event("finished", id="next")
        assert finished["audio_ms"] > 300
    finally:
        await c.close()
        await stop_agent(running)
