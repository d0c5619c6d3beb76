"""Synthesizers behind one contract (`engines.base.Engine`)."""

from __future__ import annotations

import logging

from .base import AudioChunk, Engine, EngineError, Mark, Voice

log = logging.getLogger(__name__)

DEFAULT_CACHE_MB = 64  # about 25 minutes of 22 kHz speech


def load_engines(settings=None) -> list[Engine]:
    """The bare engines, neural first; unavailable ones report why instead of raising."""
    from .espeak import shared_espeak

    engines: list[Engine] = []
    try:
        from .piper import PiperEngine

        engines.append(PiperEngine(voices_dirs=list(getattr(settings, "voices_dir", []) or [])))
    except ImportError as exc:  # piper.py not present
        log.info("Piper engine not loaded: %s", exc)
    try:
        from .melo import MeloEngine

        engines.append(MeloEngine())
    except ImportError as exc:
        log.info("MeloTTS engine not loaded: %s", exc)
    engines.append(shared_espeak())
    return engines


def default_engines(settings=None) -> list[Engine]:
    """Every engine this install can offer, each behind one shared PCM cache and with
    neural voices falling back to the eSpeak NG voice of their language."""
    from .cache import CachingEngine, PcmCache
    from .fallback import FallbackEngine, formant_fallback, voice_lookup

    bare = load_engines(settings)
    cache = PcmCache(int(getattr(settings, "cache_mb", DEFAULT_CACHE_MB)) * 1024 * 1024)
    cached = [CachingEngine(e, cache.max_bytes, cache) for e in bare]
    lookup, policy = voice_lookup(cached), formant_fallback(bare)
    return [FallbackEngine(e, lookup, policy) for e in cached]


__all__ = ["AudioChunk", "Engine", "EngineError", "Mark", "Voice", "default_engines", "load_engines"]
