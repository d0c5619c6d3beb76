"""A PCM cache in front of an engine: repeated phrases (danmu's hundredth "thank you") are
served from memory, not synthesized again.

LRU, bounded in bytes of PCM, keyed by (engine, voice, speed, output rate, text with spaces normalized).
Only complete results are stored: a stream the consumer closed early or one that failed
leaves nothing behind, so a hit always plays the whole phrase. Long texts are not kept at
all (`MAX_ENTRY_BYTES`): a copy of a minute of speech per room would only churn the cache
(and the garbage collector) for a phrase unlikely to come again word for word.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import AsyncIterator

from agent import metrics

from .base import AudioChunk, Engine, EngineWrapper, Voice
from .text import normalize

CacheKey = tuple[str, str, float, int | None, str]
MAX_ENTRY_BYTES = 1 << 20  # about 11 s of 48 kHz PCM: greetings and chat lines, not readings


class PcmCache:
    """Chunks by key, least recently used evicted first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int):
        assert max_bytes >= 0
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[list[AudioChunk], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> list[AudioChunk] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: CacheKey, chunks: list[AudioChunk]) -> None:
        size = sum(c.pcm.nbytes for c in chunks)
        if size > self.max_bytes:
            return  # one phrase larger than the whole cache: keeping it would evict everything
        for c in chunks:
            c.pcm.setflags(write=False)  # shared by every later hit
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (chunks, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted


class CachingEngine(EngineWrapper):
    """Wraps an engine; everything but `stream` is the inner engine's."""

    def __init__(self, inner: Engine, max_bytes: int, cache: PcmCache | None = None):
        super().__init__(inner)
        self.cache = cache if cache is not None else PcmCache(max_bytes)

    async def stream(self, text: str, voice: Voice, speed: float = 1.0,
                     sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        key: CacheKey = (self.name, voice.id, round(float(speed), 3), sample_rate, normalize(text, fold_case=False))
        hit = self.cache.get(key)
        if hit is not None:
            metrics.CACHE.labels("hit").inc()
            for chunk in hit:
                # a fresh chunk object per hit (the Speaker may attach state); the PCM is shared, read-only
                yield AudioChunk(chunk.pcm, chunk.sample_rate, list(chunk.marks), chunk.notice)
            return
        metrics.CACHE.labels("miss").inc()
        chunks: list[AudioChunk] | None = []
        size = 0
        limit = min(MAX_ENTRY_BYTES, self.cache.max_bytes)
        async for chunk in self.inner.stream(text, voice, speed, sample_rate):
            if chunks is not None:
                size += chunk.pcm.nbytes
                if size > limit or chunk.notice:  # too long to keep, or not what this voice sounds like
                    chunks = None
                else:
                    # kept, not copied: the consumer only reads chunks, and read-only makes sure
                    chunk.pcm.setflags(write=False)
                    chunks.append(AudioChunk(chunk.pcm, chunk.sample_rate, list(chunk.marks)))
            yield chunk
        # reached only when the inner stream ended normally and the consumer read it all
        if chunks:
            self.cache.put(key, chunks)
