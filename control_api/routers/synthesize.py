"""`POST /v1/synthesize`: text → an audio file (WAV, Ogg Opus or MP3), streamed as it is made.

Encoded with PyAV (libavformat muxers writing into a non-seekable sink, so every header is
the streaming kind: a WAV with open-ended sizes, Ogg pages, MP3 frames). Each engine chunk
is encoded and sent as soon as it exists, so the first bytes leave long before a long text
is synthesized.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import av
import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from agent import metrics
from agent.audio import SAMPLE_RATE, Resampler
from agent.auth import Principal
from agent.runtime import Agent
from engines.base import AudioChunk
from engines.registry import UnknownVoice

from ..deps import ADMIN_REFUSALS, RATE_LIMITED, get_agent, rate_limited, require_admin
from ..models import Problem as ProblemOut, SynthesizeRequest
from ..problems import Problem

log = logging.getLogger(__name__)
router = APIRouter(tags=["synthesize"])

STALL_S = 15.0  # an engine that gives no audio this long has failed


@dataclass(frozen=True)
class FileFormat:
    container: str  # libavformat muxer
    codec: str  # libavcodec encoder
    media_type: str
    extension: str
    rate: int | None  # fixed output rate, or None: the voice's own rate
    bit_rate: int | None = None
    options: dict = field(default_factory=dict)  # encoder options
    muxer_options: dict = field(default_factory=dict)


FORMATS = {
    "wav": FileFormat("wav", "pcm_s16le", "audio/wav", "wav", None),
    # Opus runs at 48 kHz (it knows no 22.05 kHz); same encoder settings as the rooms' track
    "ogg": FileFormat("ogg", "libopus", "audio/ogg", "ogg", SAMPLE_RATE, 32_000, {"application": "voip"},
                      {"page_duration": "100000"}),  # an Ogg page per 100 ms, not per second: early bytes
    "mp3": FileFormat("mp3", "libmp3lame", "audio/mpeg", "mp3", None, 64_000),
}


class _Sink:
    """A write-only file for libavformat: no seek, so muxers write streaming headers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class AudioFileEncoder:
    """Int16 mono PCM at `rate` in, the bytes of an audio file out, as soon as the muxer has them."""

    def __init__(self, fmt: FileFormat, rate: int, bit_rate: int | None = None):
        self.rate = rate
        self._sink = _Sink()
        # flush_packets: hand every packet to the sink at once; bitexact: no encoder-version tag
        self._container = av.open(self._sink, "w", format=fmt.container,
                                  options={"flush_packets": "1", "fflags": "+bitexact", **fmt.muxer_options})
        self._stream = self._container.add_stream(fmt.codec, rate=rate, layout="mono")
        if bit_rate or fmt.bit_rate:
            self._stream.codec_context.bit_rate = bit_rate or fmt.bit_rate
        if fmt.options:
            self._stream.codec_context.options = dict(fmt.options)
        self._pts = 0
        self.samples = 0
        self.closed = False

    def encode(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.int16).reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self._pts
            self._pts += len(pcm)
            self.samples += len(pcm)
            for packet in self._stream.encode(frame):  # PyAV re-chunks to the codec's frame size
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self.close()
        return self._sink.take()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._container.close()


class RateMatch:
    """Engine chunks → PCM at the file's rate. Chunks normally come at the voice's rate; a
    fallback voice of another engine may change it mid-stream."""

    def __init__(self, out_rate: int):
        self.out_rate = out_rate
        self._in_rate: int | None = None
        self._resampler: Resampler | None = None

    def push(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        head = np.zeros(0, np.int16)
        if rate != self._in_rate:
            head = self.flush()
            self._in_rate = rate
            self._resampler = None if rate == self.out_rate else Resampler(rate, self.out_rate)
        out = pcm if self._resampler is None else self._resampler.push(pcm)
        return np.concatenate((head, out)) if len(head) else out

    def flush(self) -> np.ndarray:
        return self._resampler.flush() if self._resampler is not None else np.zeros(0, np.int16)


async def _next_chunk(stream: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    try:
        return await asyncio.wait_for(anext(stream), STALL_S)
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        raise TimeoutError(f"the engine produced no audio for {STALL_S:.0f} s") from None


async def _render(stream: AsyncIterator[AudioChunk], first: AudioChunk | None, encoder: AudioFileEncoder,
                  rate_match: RateMatch, engine_name: str, synth_s: float) -> AsyncIterator[bytes]:
    """The response body: encoded bytes after every chunk, then the encoder's tail."""
    started = time.perf_counter()
    chunks = 0
    try:
        chunk = first
        while chunk is not None:
            chunks += 1
            data = encoder.encode(rate_match.push(chunk.pcm, chunk.sample_rate))
            if data:
                yield data
            t0 = time.perf_counter()
            chunk = await _next_chunk(stream)
            synth_s += time.perf_counter() - t0
        data = encoder.encode(rate_match.flush()) + encoder.finish()
        if data:
            yield data
        audio_s = encoder.samples / encoder.rate
        if audio_s > 0:
            metrics.SYNTH_RTF.labels(engine_name).observe(synth_s / audio_s)
        log.info("synthesized to a file", extra={"engine": engine_name, "chunks": chunks,
                                                 "audio_ms": round(audio_s * 1000),
                                                 "elapsed_ms": round((time.perf_counter() - started) * 1000)})
    except Exception as exc:
        # the status line is long gone: cutting the body short is how the client learns
        log.warning("synthesis to a file failed after %d chunks: %s", chunks, exc,
                    extra={"engine": engine_name})
        raise
    finally:
        encoder.close()
        await stream.aclose()


_AUDIO_CONTENT = {fmt.media_type: {"schema": {"type": "string", "format": "binary"}} for fmt in FORMATS.values()}


@router.post(
    "/v1/synthesize",
    response_class=StreamingResponse,
    dependencies=[Depends(rate_limited)],
    responses={
        200: {"content": _AUDIO_CONTENT, "description": "the audio file, streamed as it is synthesized"},
        422: {"model": ProblemOut, "description": "`bad_message`, `text_too_long` or `unknown_voice`"},
        503: {"model": ProblemOut, "description": "`engine_error`: the engine failed before any audio"},
    } | ADMIN_REFUSALS | RATE_LIMITED,
)
async def synthesize(body: SynthesizeRequest, agent: Agent = Depends(get_agent),
                     principal: Principal = Depends(require_admin)) -> StreamingResponse:
    """Render text to an audio file (`wav`, `ogg` Opus or `mp3`), e.g. to pre-render prompts.
    The body is streamed as chunks are synthesized."""
    limit = agent.settings.max_text_chars
    if len(body.text) > limit:
        msg = f"text has {len(body.text)} characters, at most {limit} allowed"
        raise Problem(422, f"text: {msg}", code="text_too_long", errors=[{"loc": ["body", "text"], "msg": msg}])
    try:
        voice = agent.voices.resolve(body.voice)
    except UnknownVoice as exc:
        raise Problem(422, str(exc), code="unknown_voice", errors=[{"loc": ["body", "voice"], "msg": str(exc)}]) from None
    engine = agent.voices.engine_for(voice)
    fmt = FORMATS[body.format]
    stream = engine.stream(body.text, voice, body.speed or agent.settings.speed)
    # The first chunk is awaited before the status line: an engine failing at once is a 503.
    t0 = time.perf_counter()
    try:
        first = await _next_chunk(stream)
    except Exception as exc:
        await stream.aclose()
        log.warning("synthesis to a file failed: %s", exc, extra={"engine": engine.name, "voice": voice.id})
        raise Problem(503, f"{engine.name} failed: {exc}", code="engine_error", headers={"Retry-After": "5"}) from None
    synth_s = time.perf_counter() - t0
    bit_rate = agent.settings.opus_bitrate if body.format == "ogg" else None
    encoder = AudioFileEncoder(fmt, fmt.rate or voice.sample_rate, bit_rate)
    rate_match = RateMatch(encoder.rate)
    return StreamingResponse(
        _render(stream, first, encoder, rate_match, engine.name, synth_s),
        media_type=fmt.media_type,
        headers={"Content-Disposition": f'attachment; filename="speech.{fmt.extension}"',
                 "X-Voice": voice.id, "Cache-Control": "no-store"},
    )
