"""The engine contract: what every synthesizer gives the Speaker.

An engine turns (text, voice, speed) into an async stream of int16 mono PCM chunks at the
engine's own rate. Blocking synthesis runs off the event loop and stops promptly when the
consumer stops iterating (the async generator is closed or its task cancelled).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Protocol, runtime_checkable

import numpy as np


log = logging.getLogger(__name__)

SYNTHESIS_NICENESS = 10  # where SCHED_IDLE is refused: synthesis threads run this much nicer


def _lower_priority() -> None:
    """Make the calling thread yield the core to the event loop, at once (Linux: SCHED_IDLE).

    Synthesis runs up to 1.5 s ahead of playout, so it can wait a few ms; a frame cannot.
    Merely nicer threads still got whole scheduler ticks (4 ms at HZ=250) in the middle of
    a clock tick: measured at 150 rooms, 0.1 % of ticks stalled 4 ms, each stall making
    the next few ticks' frames late. A SCHED_IDLE thread is preempted the moment the loop
    wakes and only runs on what the loop leaves (stall gone: p99.9 of a tick's off-CPU
    time 4.0 ms → 0.24 ms). Moving oneself to SCHED_IDLE or raising one's niceness needs
    no privilege."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread, on Linux
        return
    except (AttributeError, OSError) as exc:
        log.debug("synthesis thread cannot be SCHED_IDLE: %s", exc)
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SYNTHESIS_NICENESS))
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox forbids it: only scheduling suffers
        log.debug("synthesis thread keeps its priority: %s", exc)


def synthesis_executor(workers: int, name: str) -> ThreadPoolExecutor:
    """The thread pool an engine synthesizes on: its threads yield to the frame loop."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=_lower_priority)


class EngineError(Exception):
    """A synthesizer failed; the Speaker reports it as `engine_error`."""


@dataclass(frozen=True, slots=True)
class Voice:
    id: str  # "engine:name", unique across engines
    engine: str
    language: str  # BCP-47-ish tag, lower case: "en-us", "cmn", "es-419"
    name: str
    sample_rate: int
    quality: str | None = None  # "neural" engines rank before "formant" ones
    speakers: int | None = None
    neural: bool = False
    fallback: str | None = None  # voice id spoken if this one's engine fails

    def public(self) -> dict:
        out = {
            "id": self.id,
            "engine": self.engine,
            "language": self.language,
            "name": self.name,
            "sample_rate": self.sample_rate,
        }
        if self.quality is not None:
            out["quality"] = self.quality
        if self.speakers is not None:
            out["speakers"] = self.speakers
        return out


@dataclass(frozen=True, slots=True)
class Mark:
    """A sentence or word that starts at `sample` (offset in the chunk's own samples)."""

    kind: Literal["sentence", "word"]
    text: str
    sample: int


@dataclass(slots=True)
class AudioChunk:
    pcm: np.ndarray  # int16, mono
    sample_rate: int
    marks: list[Mark] = field(default_factory=list)
    # Something the client should be told while the audio goes on (e.g. a fallback voice
    # took over after the first engine failed); the Speaker sends it as `engine_error`.
    notice: str | None = None


@runtime_checkable
class Engine(Protocol):
    name: str

    @property
    def available(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str | None: ...

    def voices(self) -> list[Voice]: ...

    def stream(self, text: str, voice: Voice, speed: float = 1.0,
               sample_rate: int | None = None) -> AsyncIterator[AudioChunk]:
        """Chunks of `text` spoken in `voice`. `sample_rate` is the rate the consumer wants:
        an engine may deliver it, resampling on its own threads rather than the event loop's,
        or ignore it. Every chunk says its own rate either way."""
        ...


def resample(pcm: np.ndarray, rate_in: int, rate_out: int | None) -> np.ndarray:
    """Whole-piece int16 resampling (libsoxr, releases the GIL): for engine threads."""
    if not rate_out or rate_out == rate_in or not len(pcm):
        return pcm
    import soxr

    return soxr.resample(pcm, rate_in, rate_out)


class EngineWrapper:
    """An engine in front of another (cache, fallback): the same voices and availability,
    and anything else (origin(), warm(), close()) passed through to the inner engine."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name

    @property
    def available(self) -> bool:
        return self.inner.available

    @property
    def unavailable_reason(self) -> str | None:
        return self.inner.unavailable_reason

    def voices(self) -> list[Voice]:
        return self.inner.voices()

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)
