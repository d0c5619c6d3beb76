"""What a stream of received RTP packets says: which carry speech, and how late each arrived.

Both judge every framework the same way from the wire: a server that streams silence
between utterances (Pipecat) and one that sends nothing (ours) are compared on the first
packet whose decoded audio is above a speech floor.
"""

from __future__ import annotations

import av
import numpy as np

SPEECH_FLOOR_DB = -55.0  # a 20 ms packet louder than this carries speech (Opus silence decodes ~-90 dB)
LATE_S = 0.005  # the same 5 ms the agent uses for its own late-frame counter
RTP_CLOCK = 48_000
ON_TIME_PERCENTILE = 10


def packet_levels_db(payloads: list[bytes]) -> np.ndarray:
    """RMS level (dBFS) of each Opus packet, decoded in order with one real libopus decoder."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = RTP_CLOCK
    decoder.layout = "mono"
    levels = np.full(len(payloads), -120.0)
    for i, payload in enumerate(payloads):
        pcm = [_int16_units(f.to_ndarray()) for f in decoder.decode(av.Packet(payload))]
        if pcm:
            x = np.concatenate(pcm)
            rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
            levels[i] = 20 * np.log10(max(rms, 1e-9) / 32768)
    return levels


def _int16_units(pcm: np.ndarray) -> np.ndarray:
    scale = 32768.0 if np.issubdtype(pcm.dtype, np.floating) else 1.0  # libopus may decode to float
    return pcm.astype(np.float64).reshape(-1) * scale


def is_speech(levels_db: np.ndarray) -> np.ndarray:
    return levels_db > SPEECH_FLOOR_DB


def unwrap_rtp(timestamps: np.ndarray) -> np.ndarray:
    """RTP timestamps are 32-bit and start at a random value: undo wrap-around."""
    ts = np.asarray(timestamps, dtype=np.int64)
    if ts.size == 0:
        return ts
    steps = np.diff(ts)
    steps = (steps + 2**31) % 2**32 - 2**31
    return np.concatenate([[0], np.cumsum(steps)]) + ts[0]


def arrival_lateness(arrivals: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """How late each packet arrived (s) against the stream's own best case. 'On time' is the
    10th percentile of (arrival - RTP time), not the minimum: a server may send an utterance's
    first frame ahead of its slot (ours does, for TTFA), and that one frame must not make
    every later, punctual one look late."""
    if len(arrivals) == 0:
        return np.zeros(0)
    offset = np.asarray(arrivals, dtype=float) - unwrap_rtp(timestamps) / RTP_CLOCK
    return offset - np.percentile(offset, ON_TIME_PERCENTILE)


def missing_packets(timestamps: np.ndarray, frame_samples: int = 960) -> int:
    """Slots the sender skipped inside a stream (gaps in the RTP timestamp grid)."""
    ts = np.sort(unwrap_rtp(timestamps))
    if ts.size < 2:
        return 0
    expected = int((ts[-1] - ts[0]) // frame_samples) + 1
    return max(expected - len(np.unique(ts)), 0)
