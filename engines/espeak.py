"""eSpeak NG through ctypes on the library and data shipped in the `espeakng-loader` wheel.

The library keeps global state and is not re-entrant, so every call runs on one dedicated
thread. Text is synthesized one sentence per job, which lets rooms take turns on that thread
and lets a cancelled utterance give the thread up within one sentence (the callback also
aborts the sentence in progress).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import soxr

from .base import AudioChunk, EngineError, Mark, Voice, synthesis_executor
from .text import split_for_synthesis

log = logging.getLogger(__name__)

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
BUFFER_MS = 200  # audio per callback: eSpeak makes 200 ms in well under 1 ms, and fewer, larger chunks cut the per-chunk cost downstream
BASE_WPM = 175


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceSpec(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, name, NUL)* then NUL
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


# The samples arrive as a bare address and are copied out with string_at: a POINTER(c_short)
# viewed through np.ctypeslib.as_array goes through ctypes.cast (a reference cycle per call)
# and a `c_short * n` type per length (a new cyclic type object): together nearly all the
# cyclic garbage of a busy agent, collected on the loop thread (see agent/gc_tuning.py)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Event))


class _Job:
    """One sentence being synthesized: where its chunks go and whether to stop."""

    __slots__ = ("loop", "queue", "cancel", "text", "emitted", "pending", "sample_rate", "out_rate", "resampler",
                 "out_emitted")

    def __init__(self, loop, queue, text: str, sample_rate: int, out_rate: int | None):
        self.loop = loop
        self.queue = queue
        self.cancel = threading.Event()
        self.text = text
        self.emitted = 0  # samples handed out so far (at the engine's rate)
        self.pending: list[tuple[int, Mark]] = [(0, Mark("sentence", text, 0))]  # (absolute sample, mark)
        self.sample_rate = sample_rate
        # Resampled here, on the engine thread (libsoxr releases the GIL), not on the event loop
        self.out_rate = out_rate if out_rate and out_rate != sample_rate else sample_rate
        self.resampler = (soxr.ResampleStream(sample_rate, self.out_rate, 1, dtype="int16")
                          if self.out_rate != sample_rate else None)
        self.out_emitted = 0  # samples handed out so far (at the output rate)

    def chunk(self, pcm: np.ndarray, marks: list[tuple[int, Mark]], last: bool = False) -> AudioChunk:
        """A chunk of the engine's `pcm` with `marks` at absolute input samples."""
        if self.resampler is not None:
            # libsoxr hands out uneven blocks (and holds some back until the last call), so
            # marks are placed by their absolute time, not scaled inside the chunk
            pcm = self.resampler.resample_chunk(pcm, last=last)
        rate = self.out_rate
        chunk = AudioChunk(pcm, rate, [Mark(m.kind, m.text, max(0, at * rate // self.sample_rate - self.out_emitted))
                                       for at, m in marks])
        self.out_emitted += len(pcm)
        return chunk


class EspeakEngine:
    name = "espeak"
    _in_use = threading.Lock()  # the library is one per process: so is a working engine

    def __init__(self) -> None:
        self._owner = EspeakEngine._in_use.acquire(blocking=False)
        self._executor = synthesis_executor(1, "espeak")
        self._lib: ctypes.CDLL | None = None
        self._reason: str | None = None
        self._voices: list[Voice] = []
        self._identifiers: dict[str, str] = {}  # voice id -> espeak identifier
        self._current: tuple[str, int] | None = None  # (identifier, rate) set in the library
        self._job: _Job | None = None
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds a pointer
        self.sample_rate = 22050
        if not self._owner:
            # a second instance would swap the library's callback under the first one's feet
            self._reason = "eSpeak NG is already in use by another engine in this process"
            log.warning(self._reason)
            return
        try:
            self._executor.submit(self._initialize).result()
        except Exception as exc:  # the engine reports itself unavailable, never crashes
            self._reason = f"eSpeak NG could not be loaded: {exc}"
            log.warning(self._reason)

    # -- Engine protocol -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._lib is not None

    @property
    def unavailable_reason(self) -> str | None:
        return self._reason

    def voices(self) -> list[Voice]:
        return list(self._voices)

    async def stream(self, text: str, voice: Voice, speed: float = 1.0,
                     sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        if self._lib is None:
            raise EngineError(self._reason or "eSpeak NG is not available")
        identifier = self._identifiers.get(voice.id)
        if identifier is None:
            raise EngineError(f"unknown eSpeak NG voice {voice.id!r}")
        rate = max(80, min(450, round(BASE_WPM * speed)))
        loop = asyncio.get_running_loop()
        for piece in split_for_synthesis(text):
            queue: asyncio.Queue = asyncio.Queue()
            job = _Job(loop, queue, piece, self.sample_rate, sample_rate)
            done = loop.run_in_executor(self._executor, self._synthesize, job, identifier, rate)
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    yield item
                await done  # surfaces an error raised on the engine thread
            finally:
                job.cancel.set()

    # -- engine thread ---------------------------------------------------------------------

    def _initialize(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceSpec))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]

        data_home = str(Path(espeakng_loader.get_data_path()).parent)
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_home.encode(), INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineError(f"espeak_Initialize failed ({rate}) with data at {data_home}")
        self.sample_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._voices, self._identifiers = self._list_voices(lib, rate)

    @staticmethod
    def _list_voices(lib, rate: int) -> tuple[list[Voice], dict[str, str]]:
        voices: list[Voice] = []
        identifiers: dict[str, str] = {}
        arr = lib.espeak_ListVoices(None)
        i = 0
        while arr[i]:
            spec = arr[i].contents
            i += 1
            # languages: first byte is a priority, then a NUL-terminated name
            language = ctypes.string_at(spec.languages + 1).decode(errors="replace").lower()
            identifier = spec.identifier.decode(errors="replace")
            if not language or identifier.startswith("mb/"):  # mbrola voices need extra data
                continue
            vid = f"espeak:{language}"
            if vid in identifiers:
                continue
            identifiers[vid] = identifier
            voices.append(
                Voice(
                    id=vid,
                    engine="espeak",
                    language=language,
                    name=spec.name.decode(errors="replace").replace("_", " "),
                    sample_rate=rate,
                    quality="formant",
                )
            )
        voices.sort(key=lambda v: v.id)
        return voices, identifiers

    def _synthesize(self, job: _Job, identifier: str, rate: int) -> None:
        lib = self._lib
        assert lib is not None
        try:
            if self._current != (identifier, rate):
                if lib.espeak_SetVoiceByName(identifier.encode()) != 0:
                    raise EngineError(f"eSpeak NG refused voice {identifier!r}")
                lib.espeak_SetParameter(PARAM_RATE, rate, 0)
                self._current = (identifier, rate)
            data = job.text.encode("utf-8")
            self._job = job
            err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if err != 0 and not job.cancel.is_set():
                raise EngineError(f"espeak_Synth failed with code {err}")
        finally:
            self._job = None
            if job.resampler is not None and not job.cancel.is_set():  # the resampler's delayed tail
                job.loop.call_soon_threadsafe(job.queue.put_nowait, job.chunk(np.zeros(0, np.int16), [], last=True))
            job.loop.call_soon_threadsafe(job.queue.put_nowait, None)

    def _on_audio(self, wav, numsamples, events) -> int:
        job = self._job
        if job is None or job.cancel.is_set():
            return 1  # abort synthesis
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            i += 1
            if ev.type == EVENT_WORD and ev.length > 0:
                start = ev.text_position - 1
                word = job.text[start : start + ev.length]
                job.pending.append((ev.audio_position * job.sample_rate // 1000, Mark("word", word, 0)))
        if numsamples <= 0:
            return 0
        # Events can run ahead of the audio they describe: attach each to the chunk it falls in.
        end = job.emitted + numsamples
        marks = [(at, m) for at, m in job.pending if at < end]
        if marks:
            job.pending = [(at, m) for at, m in job.pending if at >= end]
        pcm = np.frombuffer(ctypes.string_at(wav, numsamples * 2), np.int16)  # our copy: eSpeak reuses its buffer
        job.emitted = end
        job.loop.call_soon_threadsafe(job.queue.put_nowait, job.chunk(pcm, marks))
        return 0

    def close(self) -> None:
        global _shared
        self._executor.shutdown(wait=True, cancel_futures=True)  # no job left in the library
        if self._owner:
            self._owner = False
            self._lib = None
            if _shared is self:
                _shared = None
            EspeakEngine._in_use.release()  # a later engine may take the library over


_shared: EspeakEngine | None = None


def shared_espeak() -> EspeakEngine:
    """This process's eSpeak NG engine (made on first use): the library is process-global."""
    global _shared
    if _shared is None:
        _shared = EspeakEngine()
    return _shared
