"""Echo cancellation, offline: the room's far end (what it sent, by clock slot) against a
participant's audio that carries it back delayed, damped and noisy. Real eSpeak NG speech,
real Silero VAD, WebRTC's audio processing module from the livekit SDK.

The room is a stand-in with a stepped clock (one 20 ms slot per 20 ms of audio fed), as
the Speaker's tests use a fake clock: the canceller's only link to time is the slot number."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent.echo import SLOT_SAMPLES, EchoCanceller, FarEnd
from agent.listening import SpeechGate
from agent.vad import CHUNK_SAMPLES, VadStream
from bench.barge_in import SteppedRoom, espeak_speech, noise, resample
from tests.conftest import shared_engines

AGENT_TEXT = ("The agent reads a long story about the sea, the wind and the boats, and about the people "
              "who live by the water. It goes on and on, with more to say.")


class StandInRoom(SteppedRoom):
    """What a FarEnd uses of a Room, on a clock the test steps (the bench's offline room), and a
    way to send a frame through its output taps."""

    def send(self, frame48k: np.ndarray) -> None:
        for tap in self.output_taps:
            tap(frame48k, self.clock.slot)


@pytest.fixture(scope="module")
def agent_voice() -> np.ndarray:
    return asyncio.run(espeak_speech(shared_engines(), AGENT_TEXT))  # 48 kHz


@pytest.fixture(scope="module")
def person() -> np.ndarray:
    pcm = asyncio.run(espeak_speech(shared_engines(), "Hold on, please, I have a question about that.",
                                    voice="espeak:en-029"))
    return resample(pcm, 48_000, 16_000)


def play(agent48k: np.ndarray, delay_ms: int, gain_db: float, near16k: np.ndarray | None = None,
         near_at_s: float = 0.0, cancel: bool = True):
    """The room sends `agent48k` slot by slot; the participant sends it back `delay_ms` later
    at `gain_db` with noise at -50 dBFS (plus `near16k` from `near_at_s`). Returns the speech
    onsets/offsets the VAD saw (seconds) and the canceller."""
    room = StandInRoom()
    far = FarEnd(room)
    canceller = EchoCanceller(far) if cancel else None
    ref16 = resample(agent48k, 48_000, 16_000).astype(np.float64)
    d = delay_ms * 16
    n = len(ref16) + d
    mic = noise(-50, n / 16_000, 16_000).astype(np.float64)
    mic[d:] += ref16 * 10 ** (gain_db / 20)
    if near16k is not None:
        a = int(near_at_s * 16_000)
        mic[a:a + len(near16k)] += near16k[: n - a]
    mic = np.clip(mic, -32768, 32767).astype(np.int16)
    vad, gate = VadStream(), SpeechGate()
    out, events = [], []
    for k in range(n // SLOT_SAMPLES):
        frame = agent48k[k * 960:(k + 1) * 960]
        if len(frame) == 960:
            room.send(frame)
        room.clock.slot += 1
        chunk = mic[k * SLOT_SAMPLES:(k + 1) * SLOT_SAMPLES]
        out.append(canceller.process(chunk) if canceller else chunk)
    heard = np.concatenate(out)
    for i in range(0, len(heard) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        change = gate.update(vad.probability(heard[i:i + CHUNK_SAMPLES]), 0.5, 250)
        if change:
            events.append((round(i / 16_000, 2), change))
    return events, canceller


@pytest.mark.parametrize("delay_ms,gain_db", [(80, -6), (150, -10), (250, -20)])
def test_the_agents_own_voice_coming_back_starts_no_turn(agent_voice, delay_ms, gain_db):
    raw, _ = play(agent_voice, delay_ms, gain_db, cancel=False)
    assert raw, "without the canceller the echo is heard as speech (the problem this solves)"
    events, canceller = play(agent_voice, delay_ms, gain_db)
    assert events == []
    assert canceller.path.echo is True
    assert abs(canceller.path.delay_ms - delay_ms) <= 30, canceller.path.delay_ms  # estimated per participant
    assert canceller.frames > 0


@pytest.mark.parametrize("gain_db", [-10, -20])
def test_a_person_talking_over_the_echo_is_heard(agent_voice, person, gain_db):
    events, canceller = play(agent_voice, 150, gain_db, near16k=person, near_at_s=4.0)
    assert [e for _, e in events][:1] == ["started"], events
    assert 4.0 < events[0][0] < 4.0 + 0.3 + 0.5, events  # the clip's 300 ms lead-in, then speech
    assert canceller.path.echo is True


def test_without_echo_the_persons_speech_passes_untouched(agent_voice, person):
    # a headset or a client that cancels its own echo: nothing of the agent comes back
    events, canceller = play(agent_voice, 150, -120, near16k=person, near_at_s=2.5)
    assert [e for _, e in events][:1] == ["started"], events
    assert canceller.path.echo is False and canceller.passed > 0


def test_a_silent_room_costs_no_processing(person):
    room = StandInRoom()
    canceller = EchoCanceller(FarEnd(room))
    assert room.output_taps, "cancelling taps the room's output"
    out = canceller.process(np.concatenate([person, np.zeros(160 * 7, np.int16)]))
    assert canceller.frames == 0 and canceller.bypassed == len(out) // 160
    assert np.array_equal(out, np.concatenate([person, np.zeros(160 * 7, np.int16)])[: len(out)])
    canceller.close()
    assert room.output_taps == [], "the last canceller unhooks the room"


def test_far_end_is_the_sent_frame_at_16_khz():
    room = StandInRoom()
    far = FarEnd(room)
    far.attach()
    t = np.arange(960 * 3) / 48_000
    for k, f in enumerate((1000, 1000, 7900)):
        room.send((8000 * np.sin(2 * np.pi * f * t[k * 960:(k + 1) * 960])).astype(np.int16))
        room.clock.slot += 1
    first, second, high = (far.reference(1000 + k) for k in range(3))
    assert len(second) == SLOT_SAMPLES and far.reference(2000) is None
    assert np.sqrt(np.mean(second.astype(float) ** 2)) == pytest.approx(8000 / np.sqrt(2), rel=0.03)
    assert np.abs(high[30:]).max() < 8000 * 0.1  # above 8 kHz's Nyquist: filtered, not aliased
