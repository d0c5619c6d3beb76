"""Synthesizers behind one contract (`engines.base.Engine`)."""

from __future__ import annotations

import logging

from .base import AudioChunk, Engine, EngineError, Mark, Voice

log = logging.getLogger(__name__)


def default_engines(settings=None) -> list[Engine]:
    """Every engine this install can offer, neural first; unavailable ones report why."""
    from .espeak import EspeakEngine

    engines: list[Engine] = []
    try:
        from .piper import PiperEngine

        engines.append(PiperEngine(voices_dirs=list(getattr(settings, "voices_dir", []) or [])))
    except ImportError as exc:  # piper.py not present or piper-tts missing
        log.info("Piper engine not loaded: %s", exc)
    try:
        from .melo import MeloEngine

        engines.append(MeloEngine())
    except ImportError as exc:
        log.info("MeloTTS engine not loaded: %s", exc)
    engines.append(EspeakEngine())
    return engines


__all__ = ["AudioChunk", "Engine", "EngineError", "Mark", "Voice", "default_engines"]
