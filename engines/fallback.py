"""Fallback voices: when a voice's engine cannot load or fails mid-utterance, the rest of the
utterance is spoken by the voice it names (`Voice.fallback`) instead of going silent.

The first chunk of the fallback carries a `notice`, which the Speaker sends to the room as
an `error` event with code `engine_error` while the audio goes on. A voice without a
fallback is passed straight through: its engine's exception reaches the Speaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import AsyncIterator, Callable

from .base import AudioChunk, Engine, EngineWrapper, Voice
from .text import split_sentences

log = logging.getLogger(__name__)

# voice id -> (engine, voice) of the fallback, or None when it is not installed
FallbackLookup = Callable[[str], "tuple[Engine, Voice] | None"]


class FallbackEngine(EngineWrapper):
    """Wraps an engine; `voices()` gains the fallback ids `default_fallback` picks."""

    def __init__(self, inner: Engine, lookup: FallbackLookup,
                 default_fallback: Callable[[Voice], str | None] = lambda voice: None):
        super().__init__(inner)
        self._lookup = lookup
        self._default_fallback = default_fallback

    def voices(self) -> list[Voice]:
        out = []
        for voice in self.inner.voices():
            if voice.fallback is None:
                fallback = self._default_fallback(voice)
                if fallback and fallback != voice.id:
                    voice = dataclasses.replace(voice, fallback=fallback)
            out.append(voice)
        return out

    async def stream(self, text: str, voice: Voice, speed: float = 1.0,
                     sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        target = self._lookup(voice.fallback) if voice.fallback else None
        if target is None:
            async for chunk in self.inner.stream(text, voice, speed, sample_rate):
                yield chunk
            return
        # Sentence by sentence, so that after a failure we know exactly which sentences were
        # spoken whole: the fallback starts again at the sentence that failed.
        sentences = split_sentences(text)
        for i, sentence in enumerate(sentences):
            stream = self.inner.stream(sentence, voice, speed, sample_rate)
            try:
                async for chunk in stream:
                    yield chunk
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                log.warning("voice %s failed (%s); %s speaks the rest", voice.id, exc, voice.fallback)
                notice = f"voice {voice.id} failed ({exc}); {voice.fallback} speaks the rest"
                async for chunk in self._speak_rest(target, " ".join(sentences[i:]), speed, sample_rate, notice):
                    yield chunk
                return
            finally:
                await stream.aclose()

    @staticmethod
    async def _speak_rest(target: tuple[Engine, Voice], text: str, speed: float, sample_rate: int | None,
                          notice: str) -> AsyncIterator[AudioChunk]:
        engine, voice = target
        stream = engine.stream(text, voice, speed, sample_rate)
        try:
            async for chunk in stream:
                if notice:
                    chunk = AudioChunk(chunk.pcm, chunk.sample_rate, chunk.marks, notice)
                    notice = ""
                yield chunk
        finally:
            await stream.aclose()


def formant_fallback(engines: list[Engine]) -> Callable[[Voice], str | None]:
    """The default policy: a neural voice falls back to the eSpeak NG voice of its language
    (exact tag, then the primary subtag: "de-de" → "espeak:de")."""

    def pick(voice: Voice) -> str | None:
        if not voice.neural:
            return None
        ids = {v.id for e in engines if e.available and e.name == "espeak" for v in e.voices()}
        tag = voice.language.lower()
        for candidate in (f"espeak:{tag}", f"espeak:{tag.split('-')[0]}"):
            if candidate in ids:
                return candidate
        return None

    return pick


def voice_lookup(engines: list[Engine]) -> FallbackLookup:
    """Resolve a fallback voice id among `engines` (the engines themselves, unwrapped by
    fallback, so a fallback never chains into another fallback)."""
    index: dict[str, tuple[Engine, Voice]] | None = None

    def lookup(voice_id: str) -> tuple[Engine, Voice] | None:
        nonlocal index
        if index is None:  # built on first use: every engine has finished loading by then
            index = {}
            for engine in engines:
                if engine.available:
                    for v in engine.voices():
                        index.setdefault(v.id, (engine, v))
        return index.get(voice_id)

    return lookup
