"""MeloTTS (torch), an optional engine.

Available only where `melo` is importable and at least one checkpoint folder is configured
(a folder with MeloTTS's `config.json` and `checkpoint.pth`, e.g. a copy of
myshell-ai/MeloTTS-English). Nothing is downloaded: MeloTTS's own default fetches weights
from the Hugging Face hub, which this engine never asks it to do.

    TTS_AGENT_MELO_CHECKPOINTS="EN=/models/MeloTTS-English;ZH=/models/MeloTTS-Chinese"

Importing this module never imports torch or melo; that happens on the first synthesis.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from .base import AudioChunk, EngineError, Mark, Voice, resample, synthesis_executor
from .text import split_for_synthesis

log = logging.getLogger(__name__)

CHECKPOINTS_ENV = "TTS_AGENT_MELO_CHECKPOINTS"
INSTALL_HINT = ("pip install '.[melo]' git+https://github.com/myshell-ai/MeloTTS "
                "(the PyPI sdist is broken: myshell-ai/MeloTTS#41)")

# MeloTTS speaker names → language tags (BR is British English; JP/KR are not ISO codes)
_SPEAKER_LANGUAGE = {
    "EN-US": "en-us", "EN-BR": "en-gb", "EN_INDIA": "en-in", "EN-AU": "en-au", "EN-DEFAULT": "en",
    "EN-NEWEST": "en-us", "ZH": "zh", "JP": "ja", "KR": "ko", "ES": "es", "FR": "fr",
}


def parse_checkpoints(spec: str) -> dict[str, Path]:
    """"EN=/a;ZH=/b" → {"EN": Path("/a"), "ZH": Path("/b")}; raises ValueError on a bad entry."""
    out: dict[str, Path] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        language, sep, folder = entry.partition("=")
        if not sep or not language.strip() or not folder.strip():
            raise ValueError(f"bad MeloTTS checkpoint entry {entry!r}: expected LANGUAGE=/path/to/folder")
        out[language.strip().upper()] = Path(folder.strip()).expanduser()
    return out


class MeloEngine:
    name = "melo"

    def __init__(self, checkpoints: dict[str, Path] | None = None, device: str = "cpu"):
        self.device = device
        self._reason: str | None = None
        self._voices: list[Voice] = []
        self._speakers: dict[str, tuple[str, int]] = {}  # voice id -> (language key, speaker id)
        self._folders: dict[str, Path] = {}
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        # torch already runs its own thread pool: one synthesis at a time keeps it from
        # fighting a second one (and the frame clock) for the cores.
        self._executor: ThreadPoolExecutor | None = None
        if importlib.util.find_spec("melo") is None:
            self._reason = f"MeloTTS is not installed: {INSTALL_HINT}"
            return
        try:
            if checkpoints is None:
                checkpoints = parse_checkpoints(os.environ.get(CHECKPOINTS_ENV, ""))
        except ValueError as exc:
            self._reason = f"{CHECKPOINTS_ENV}: {exc}"
            return
        if not checkpoints:
            self._reason = (f"no MeloTTS checkpoint configured: set {CHECKPOINTS_ENV}=EN=/path/to/folder "
                            "(a folder with config.json and checkpoint.pth)")
            return
        problems = []
        for language, folder in checkpoints.items():
            try:
                self._add(language, folder)
            except (OSError, ValueError, KeyError) as exc:
                problems.append(f"{language} at {folder}: {exc}")
        if not self._voices:
            self._reason = "no usable MeloTTS checkpoint: " + "; ".join(problems)
            return
        for problem in problems:
            log.warning("MeloTTS checkpoint skipped: %s", problem)
        self._executor = synthesis_executor(1, "melo")

    def _add(self, language: str, folder: Path) -> None:
        for needed in ("config.json", "checkpoint.pth"):
            if not (folder / needed).is_file():
                raise ValueError(f"{needed} missing")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        rate = int(config["data"]["sampling_rate"])
        self._folders[language] = folder
        for speaker, sid in sorted(config["data"]["spk2id"].items(), key=lambda kv: kv[1]):
            vid = f"melo:{speaker}"
            tag = _SPEAKER_LANGUAGE.get(speaker.upper(), speaker.lower().replace("_", "-"))
            self._voices.append(Voice(id=vid, engine=self.name, language=tag, name=f"MeloTTS {speaker}",
                                      sample_rate=rate, neural=True))
            self._speakers[vid] = (language, int(sid))

    @property
    def available(self) -> bool:
        return self._reason is None

    @property
    def unavailable_reason(self) -> str | None:
        return self._reason

    def voices(self) -> list[Voice]:
        return list(self._voices)

    def origin(self, voice: Voice) -> str:
        language, _ = self._speakers.get(voice.id, ("", 0))
        return f"folder {self._folders[language]}" if language in self._folders else ""

    async def stream(self, text: str, voice: Voice, speed: float = 1.0,
                     sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        if self._executor is None:
            raise EngineError(self._reason or "MeloTTS is not available")
        if voice.id not in self._speakers:
            raise EngineError(f"unknown MeloTTS voice {voice.id!r}")
        language, speaker_id = self._speakers[voice.id]
        loop = asyncio.get_running_loop()
        for piece in split_for_synthesis(text):  # the consumer closing us stops between pieces
            pcm = await loop.run_in_executor(self._executor, self._synthesize, language, speaker_id, piece, speed)
            if pcm.size:  # resampled here: a sentence at a time, rarely enough not to matter
                rate = sample_rate or voice.sample_rate
                yield AudioChunk(resample(pcm, voice.sample_rate, rate), rate, [Mark("sentence", piece, 0)])

    def _model(self, language: str) -> Any:
        with self._lock:
            model = self._models.get(language)
            if model is None:
                try:
                    from melo.api import TTS
                except Exception as exc:  # melo's own imports (torch, mecab, ...) can fail
                    raise EngineError(f"MeloTTS could not be imported: {exc}") from exc
                folder = self._folders[language]
                model = TTS(language=language, device=self.device, use_hf=False,
                            config_path=str(folder / "config.json"), ckpt_path=str(folder / "checkpoint.pth"))
                self._models[language] = model
            return model

    def _synthesize(self, language: str, speaker_id: int, text: str, speed: float) -> np.ndarray:
        model = self._model(language)
        try:
            audio = model.tts_to_file(text, speaker_id, output_path=None, speed=speed, quiet=True)
        except Exception as exc:
            raise EngineError(f"MeloTTS failed: {exc}") from exc
        return (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
