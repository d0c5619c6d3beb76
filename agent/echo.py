"""Echo-aware listening: the agent's own voice cancelled from what a participant sends back.

A participant without echo cancellation (a speakerphone, a device that does none) sends the
agent's voice back 80-250 ms later; Silero VAD hears speech in it and the agent would
interrupt itself. We know exactly what the room played, sample by sample: `FarEnd` keeps the
room's outgoing frames by clock slot (at 16 kHz, converted once per room, only while someone
is cancelling), and each listened participant has an `EchoCanceller`: WebRTC's audio
processing module as the livekit SDK ships it (AEC3, noise suppression, high-pass filter),
fed the far end slot by slot and that participant's audio on one timeline: the capture is
counted on the room's clock from an anchor (not stamped on arrival), so network and loop
jitter do not move the delay AEC3 sees.

Whether a participant sends echo at all is measured, not assumed: `EchoPath` correlates the
level envelopes (10 ms log energies) of the far end, while it talks, and of what the
participant sends, over lags up to 600 ms. Echo shows as a clear peak at the echo path's
delay (0.75-0.95 at −6 to −20 dB; a headset, or a client with its own echo cancellation,
sends a flat level or ~0.1), with the capture's level following the far end's at a fixed loss
(within ~1 dB; another voice strays by 3-12 dB), measured per participant. A person who
starts talking within the agent's first second is ambiguous (two voices rising from silence
correlate): until the verdict such speech goes through the canceller, damped.

The VAD hears the canceller's output only for a participant with echo (or before the first
verdict, ~1.2 s into the agent's speech: the agent must not interrupt itself): on a signal
without echo, AEC3 damps the person's own speech by ~10 dB in its first seconds and Silero
misses it. The canceller runs either way, so it has converged if the verdict changes. Once
echo was found, the verdict sticks until a long stretch of the agent talking without it (a
person talking over the echo lowers the correlation too).

While the room has said nothing for longer than any echo path (`TAIL_SLOTS`), there is no
echo to cancel and the canceller passes audio through untouched (no cost for a participant
who talks to an idle agent); it picks the far end up again at the next frame the room sends.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .audio import FRAME_SAMPLES

if TYPE_CHECKING:
    from .rooms import Room

log = logging.getLogger(__name__)

RATE = 16_000  # the listener's rate (the VAD's): the canceller runs at 16 kHz
APM_SAMPLES = RATE // 100  # the APM takes exactly 10 ms per call
SLOT_SAMPLES = FRAME_SAMPLES // 3  # a 20 ms slot at 16 kHz
KEEP_SLOTS = 64  # far-end history kept per room (1.28 s): more than a listener lags behind
TAIL_SLOTS = 40  # 800 ms after the room's last frame no echo of it can still arrive
MAX_LAG_SLOTS = 50  # capture counted this far behind the clock (1 s: lost audio): re-anchor

ENV_WINDOW = 150  # 10 ms frames correlated (1.5 s)
MIN_WINDOW = 60  # a first verdict from this many (0.6 s, after ENV_LAGS of history)
ENV_LAGS = 60  # 0..600 ms of echo path delay
ENV_EVERY = 10  # frames between two estimates (100 ms)
ACTIVE_DB = 35.0  # a far-end frame louder than this (10·log10 of the mean square + 1) is speech
MIN_ACTIVE = 40  # far-end speech frames a window needs before it says anything (0.4 s)
TALK_GAP = 15  # far-end frames quieter than ACTIVE_DB but this close to speech still count as talk
FLAT_DB = 1.0  # a capture level varying less than this (standard deviation) carries no echo
ECHO_CORR = 0.7  # this correlation or more, ECHO_HITS estimates in a row at one delay: echo
ECHO_SPREAD_DB = 3.0  # and the capture's level follows the far end's within this (echo: ~0-2 dB, a voice: 3-12)
ECHO_HITS = 3  # (two voices' envelopes reach ~0.65 at some lag by chance; echo at -20 dB ~0.75-0.95)
NO_ECHO_CORR = 0.3  # less than this: no echo (between the two: no change)
FIRST_NO_ECHO_CORR = 0.45  # the first verdict: echo alone measures ≥ 0.7, so a person talking
# over a device without echo (≤ ~0.5) is let through sooner
FORGET_ESTIMATES = 100  # this many "no echo" estimates in a row (10 s of talk) undo an "echo"

# 48 → 16 kHz: a windowed-sinc low-pass (cut-off 7 kHz) applied at every third sample
_TAPS = 63
_t = np.arange(_TAPS) - (_TAPS - 1) / 2
_FIR = (np.sinc(_t * 2 * 7_000 / 48_000) * 2 * 7_000 / 48_000 * np.hamming(_TAPS)).astype(np.float32)
_FIR /= _FIR.sum()
_FIR = _FIR[::-1].copy()


def _apm_class():
    """livekit's AudioProcessingModule, or None where the installed SDK lacks it."""
    try:
        from livekit import rtc

        return rtc.AudioProcessingModule
    except (ImportError, AttributeError):
        return None


class FarEnd:
    """What one room sent, by clock slot: the reference every canceller of the room reads."""

    def __init__(self, room: "Room"):
        self.room = room
        self._raw: OrderedDict[int, np.ndarray] = OrderedDict()  # slot -> 48 kHz frame (a copy)
        self._ref: dict[int, np.ndarray] = {}  # slot -> 16 kHz, converted on first use
        self.last_slot = -(1 << 62)  # the newest slot sent
        self.users = 0  # cancellers reading: the room is tapped only while there are some

    def attach(self) -> None:
        self.users += 1
        if self.users == 1:
            self.room.add_output_tap(self._on_frame)

    def detach(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.room.remove_output_tap(self._on_frame)
            self._raw.clear()
            self._ref.clear()

    def _on_frame(self, pcm: np.ndarray, slot: int) -> None:
        self._raw[slot] = pcm.copy()  # the Speaker reuses its frame buffer
        self.last_slot = max(self.last_slot, slot)
        while len(self._raw) > KEEP_SLOTS:
            old, _ = self._raw.popitem(last=False)
            self._ref.pop(old, None)

    def slot_now(self) -> int:
        return self.room.slot_now()

    def speaking(self, slot: int) -> bool:
        """The room sent audio recently enough that its echo may still be arriving."""
        return slot - self.last_slot <= TAIL_SLOTS

    def reference(self, slot: int) -> np.ndarray | None:
        """The slot's audio at 16 kHz (SLOT_SAMPLES), or None where the room sent nothing."""
        ref = self._ref.get(slot)
        if ref is not None:
            return ref
        raw = self._raw.get(slot)
        if raw is None:
            return None
        before = self._raw.get(slot - 1)
        x = np.empty(_TAPS - 1 + FRAME_SAMPLES, np.float32)
        x[:_TAPS - 1] = 0 if before is None else before[-(_TAPS - 1):]
        x[_TAPS - 1:] = raw
        y = sliding_window_view(x, _TAPS)[::3] @ _FIR
        ref = self._ref[slot] = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return ref


def _env(pcm: np.ndarray) -> float:
    return float(10 * np.log10(np.dot(pcm, pcm.astype(np.float64)) / len(pcm) + 1.0))


class EchoPath:
    """Is the far end coming back in this participant's audio, and how late (per participant)."""

    def __init__(self) -> None:
        n = ENV_WINDOW + ENV_LAGS
        self._ref = np.zeros(n)  # far-end envelope, one value per capture frame (the newest last)
        self._cap = np.zeros(n)
        self._count = 0
        self.echo: bool | None = None  # None: no verdict yet
        self.delay_ms: int | None = None
        self.correlation = 0.0
        self._misses = 0
        self._hits = 0
        self._hit_lag = 0
        self.spread_db = float("inf")

    def add(self, ref_env: float, cap_env: float) -> None:
        self._ref[:-1] = self._ref[1:]
        self._ref[-1] = ref_env
        self._cap[:-1] = self._cap[1:]
        self._cap[-1] = cap_env
        self._count += 1
        if self._count >= ENV_LAGS + MIN_WINDOW and self._count % ENV_EVERY == 0:
            self._estimate(min(ENV_WINDOW, self._count - ENV_LAGS))

    def _estimate(self, window: int) -> None:
        cap = self._cap[-window:]
        span = window + ENV_LAGS - 1
        # only while the agent talks (pauses between its words included): the step from a
        # silent room to speech would otherwise correlate with any sound that starts later
        talking = np.convolve(self._ref > ACTIVE_DB, np.ones(2 * TALK_GAP + 1), "same")[-span:] > 0
        # row L: the far end L frames before each capture frame, and where it was talking
        refs = sliding_window_view(self._ref[-span:], window)[::-1]
        w = sliding_window_view(talking, window)[::-1].astype(np.float64)
        n = w.sum(axis=1)
        if n.max() < MIN_ACTIVE:
            return  # the agent hardly spoke in this window: nothing to learn
        safe_n = np.maximum(n, 1.0)
        rc = (refs - (refs * w).sum(axis=1, keepdims=True) / safe_n[:, None]) * w
        cc = (cap - (cap * w).sum(axis=1, keepdims=True) / safe_n[:, None]) * w
        cap_var = (cc * cc).sum(axis=1)
        denom = np.sqrt((rc * rc).sum(axis=1) * cap_var)
        # a flat capture level (silence, steady noise) carries no echo
        usable = (n >= MIN_ACTIVE) & (cap_var >= safe_n * FLAT_DB ** 2) & (denom > 0)
        corr = np.divide((rc * cc).sum(axis=1), denom, out=np.zeros(ENV_LAGS), where=usable)
        lag = int(np.argmax(corr))
        self.correlation = float(corr[lag])
        self.spread_db = self._spread(refs[lag], cap, w[lag] > 0)
        if self.correlation >= ECHO_CORR and self.spread_db <= ECHO_SPREAD_DB:
            same_delay = self._hits and abs(lag - self._hit_lag) <= 3
            self._hits, self._hit_lag = (self._hits + 1 if same_delay else 1), lag
            if self._hits >= ECHO_HITS:
                self.echo, self.delay_ms, self._misses = True, lag * 10, 0
            return
        self._hits = 0
        if self.echo is None and self.correlation < FIRST_NO_ECHO_CORR:
            self.echo = False
        elif self.correlation < NO_ECHO_CORR:
            self._misses += 1
            if self._misses >= FORGET_ESTIMATES:
                self.echo = False


    @staticmethod
    def _spread(ref: np.ndarray, cap: np.ndarray, talking: np.ndarray) -> float:
        """How far the capture's level strays from the far end's plus a constant gain, over
        the far end's louder half (median absolute deviation, dB): echo follows the far end's
        level at a fixed loss, another voice does not (the correlation alone cannot tell a
        person who starts talking after the agent from echo: both rise from silence)."""
        if talking.sum() < MIN_ACTIVE:
            return float("inf")
        loud = talking & (ref > np.median(ref[talking]))
        diff = cap[loud] - ref[loud]
        return float(np.median(np.abs(diff - np.median(diff)))) if len(diff) else float("inf")


class EchoCanceller:
    """One participant's audio (16 kHz mono int16) with the room's far end cancelled."""

    def __init__(self, far_end: FarEnd):
        apm = _apm_class()
        if apm is None:
            raise RuntimeError("the installed livekit SDK has no AudioProcessingModule")
        from livekit import rtc

        self.far_end = far_end
        self.apm = apm(echo_cancellation=True, high_pass_filter=True, noise_suppression=True)
        self._rev = rtc.AudioFrame.create(RATE, 1, APM_SAMPLES)
        self._cap = rtc.AudioFrame.create(RATE, 1, APM_SAMPLES)
        self._rev_pcm = np.frombuffer(self._rev.data, np.int16)
        self._cap_pcm = np.frombuffer(self._cap.data, np.int16)
        self._fill = 0
        self._next_slot: int | None = None  # the next far-end slot to hand the APM
        self._cap_tick: int | None = None  # the capture timeline, in 10 ms ticks of the room's clock
        self._ref_env = 0.0  # level of the far end handed over last
        self._raw = np.zeros(APM_SAMPLES, np.int16)
        self.path = EchoPath()
        self.frames = 0  # 10 ms frames processed
        self.bypassed = 0  # 10 ms frames passed through: the room had been silent
        self.passed = 0  # 10 ms frames processed, but heard as sent: no echo in them
        far_end.attach()
        self.closed = False

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Cancel the echo from `samples`; returns the processed audio that is complete
        (whole 10 ms frames: up to 10 ms waits for the next call)."""
        as_sent = self.path.echo is False  # no echo here: the VAD gets the audio at once, unframed
        out = []
        i = 0
        while i < len(samples):
            take = min(APM_SAMPLES - self._fill, len(samples) - i)
            self._cap_pcm[self._fill:self._fill + take] = samples[i:i + take]
            self._fill += take
            i += take
            if self._fill == APM_SAMPLES:
                self._fill = 0
                out.append(self._frame())
        if as_sent and self.path.echo is False:
            return samples  # (the canceller still ran: converged, should echo appear later)
        if not out:
            return np.zeros(0, np.int16)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _frame(self) -> np.ndarray:
        """One 10 ms frame (in `_cap_pcm`): returns what the VAD gets."""
        far = self.far_end
        # When this frame was captured, on the room's clock: counted in audio from an anchor,
        # not taken from when it arrived, so network and loop jitter do not move the far end
        # against it (AEC3 re-converges after every jump of the delay it sees). The anchor
        # follows the earliest arrival; lost audio or a stall re-anchors it.
        now = far.slot_now()
        tick = self._cap_tick
        if tick is None or tick < 2 * (now - MAX_LAG_SLOTS):
            tick = 2 * now
        elif tick > 2 * now + 1:
            tick = 2 * now + 1
        self._cap_tick = tick + 1
        done = tick // 2 - 1  # the far end up to the slot before it: sent, and played before the echo
        if not far.speaking(done):
            self._next_slot = None  # no echo possible: pass through, rejoin at the next talkspurt
            self.bypassed += 1
            return self._cap_pcm.copy()
        if self._next_slot is None or done - self._next_slot > MAX_LAG_SLOTS:
            self._next_slot = done
        # the far end in step with the wall clock (silence for slots the room skipped), so
        # render and capture calls stay one to one and AEC3 can follow the delay
        while self._next_slot <= done:
            ref = far.reference(self._next_slot)
            self._ref_env = 0.0 if ref is None else _env(ref)
            for half in (0, APM_SAMPLES):
                if ref is None:
                    self._rev_pcm[:] = 0
                else:
                    self._rev_pcm[:] = ref[half:half + APM_SAMPLES]
                self.apm.process_reverse_stream(self._rev)
            self._next_slot += 1
        self.path.add(self._ref_env, _env(self._cap_pcm))
        np.copyto(self._raw, self._cap_pcm)
        self.apm.process_stream(self._cap)
        self.frames += 1
        if self.path.echo is False:  # no echo in this participant's audio: the VAD hears it as sent
            self.passed += 1
            return self._raw.copy()
        return self._cap_pcm.copy()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.far_end.detach()
