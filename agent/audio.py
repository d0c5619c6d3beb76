"""Audio framing: engine PCM → 48 kHz mono int16 → 20 ms frames, and the gain ramps.

Everything after this module sees only fixed 960-sample frames at 48 kHz.
"""

from __future__ import annotations

import numpy as np
import soxr

SAMPLE_RATE = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FADE_SAMPLES = SAMPLE_RATE * 8 // 1000  # 8 ms ramp to zero on interrupt: no click
_FADE_OUT = np.linspace(1.0, 0.0, FADE_SAMPLES, endpoint=False, dtype=np.float32)


class Resampler:
    """Streaming resampler to 48 kHz (or `out_rate`) mono int16 (libsoxr). Not
    `av.AudioResampler`: that one starts a thread per core for every instance, i.e. two
    threads per utterance here."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._soxr = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self._soxr is None:
            return pcm
        return self._soxr.resample_chunk(pcm)

    def flush(self) -> np.ndarray:
        if self._soxr is None:
            return np.zeros(0, np.int16)
        return self._soxr.resample_chunk(np.zeros(0, np.int16), last=True)

    def to_output_samples(self, in_samples: int) -> int:
        return in_samples * self.out_rate // self.in_rate


class PcmBuffer:
    """A FIFO of 48 kHz int16 samples: the synthesizer writes, the playout reads frames."""

    __slots__ = ("_chunks", "_offset", "available", "written")

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._offset = 0  # read position inside _chunks[0]
        self.available = 0  # samples written and not yet read
        self.written = 0  # samples written in total

    def write(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._chunks.append(pcm)
            self.available += len(pcm)
            self.written += len(pcm)

    def read_into(self, out: np.ndarray) -> int:
        """Fill `out` from the front; returns how many samples were filled (rest zeroed)."""
        want = len(out)
        filled = 0
        while filled < want and self._chunks:
            head = self._chunks[0]
            take = min(want - filled, len(head) - self._offset)
            out[filled : filled + take] = head[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset == len(head):
                self._chunks.pop(0)
                self._offset = 0
        if filled < want:
            out[filled:] = 0
        self.available -= filled
        return filled

    def read_frame(self, scratch: np.ndarray) -> tuple[np.ndarray, int]:
        """The next len(scratch) samples and how many of them are real (the rest zero): a
        view into the buffer when they lie in one written chunk (no copy), else `scratch`
        filled. Treat the result as read-only: it may be a cached phrase's PCM."""
        want = len(scratch)
        if self._chunks:
            head, offset = self._chunks[0], self._offset
            if len(head) - offset >= want:
                self._offset = offset + want
                if self._offset == len(head):
                    self._chunks.pop(0)
                    self._offset = 0
                self.available -= want
                return head[offset : offset + want], want
        return scratch, self.read_into(scratch)

    def clear(self) -> None:
        self._chunks.clear()
        self._offset = 0
        self.available = 0


def fade_out(frame: np.ndarray) -> None:
    """Ramp the frame's start to zero and silence the rest, in place."""
    n = min(FADE_SAMPLES, len(frame))
    frame[:n] = (frame[:n].astype(np.float32) * _FADE_OUT[:n]).astype(np.int16)
    frame[n:] = 0


def fade_in(frame: np.ndarray) -> None:
    """Ramp the frame's start up from zero, in place (resuming after a fade-out)."""
    n = min(FADE_SAMPLES, len(frame))
    frame[:n] = (frame[:n].astype(np.float32) * _FADE_OUT[n - 1::-1]).astype(np.int16)


def peak(frame: np.ndarray) -> int:
    return int(np.abs(frame.astype(np.int32)).max()) if len(frame) else 0
