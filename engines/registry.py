"""All voices of all engines, and the choice of a voice for a voice id or a language tag."""

from __future__ import annotations

import logging

from .base import Engine, Voice

log = logging.getLogger(__name__)


class UnknownVoice(LookupError):
    pass


def _lang_matches(voice_lang: str, tag: str) -> bool:
    voice_lang, tag = voice_lang.lower().replace("_", "-"), tag.lower().replace("_", "-")
    return voice_lang == tag or voice_lang.startswith(tag + "-")


# Languages whose usual tag differs from the eSpeak NG voice name.
_ALIASES = {"zh": "cmn", "zh-cn": "cmn", "zh-hans": "cmn", "zh-tw": "cmn", "zh-hk": "yue", "en": "en-us"}


class VoiceRegistry:
    def __init__(self, engines: list[Engine], default_voice: str | None = None):
        self.engines: dict[str, Engine] = {e.name: e for e in engines}
        self._voices: dict[str, Voice] = {}
        for engine in engines:
            if engine.available:
                for v in engine.voices():
                    self._voices.setdefault(v.id, v)
        self.default_voice = self.resolve(default_voice) if default_voice else self._best_for("en")

    def voices(self, language: str | None = None) -> list[Voice]:
        out = list(self._voices.values())
        if language:
            out = [v for v in out if _lang_matches(v.language, language)
                   or _lang_matches(v.language, _ALIASES.get(language.lower(), language))]
        return out

    def engine_for(self, voice: Voice) -> Engine:
        return self.engines[voice.engine]

    def get(self, voice_id: str) -> Voice | None:
        return self._voices.get(voice_id)

    def resolve(self, ref: str | None) -> Voice:
        """A voice id, or a language tag meaning the best installed voice for it."""
        if ref is None:
            if self.default_voice is None:
                raise UnknownVoice("no voice is installed")
            return self.default_voice
        voice = self._voices.get(ref)
        if voice is not None:
            return voice
        if ":" not in ref:
            best = self._best_for(ref)
            if best is not None:
                return best
        raise UnknownVoice(f"no voice {ref!r}; see GET /v1/voices")

    def _best_for(self, tag: str) -> Voice | None:
        candidates = self.voices(tag)
        if not candidates:
            return None
        alias = _ALIASES.get(tag.lower(), tag).lower()
        # neural before formant, then an exact language match, then a stable order
        return min(candidates, key=lambda v: (not v.neural, v.language not in (tag.lower(), alias), v.id))
