"""Listening without a network: real Silero VAD, real eSpeak NG speech, real Opus, a real
Room and Speaker; the LiveKit path through real `livekit.rtc` audio objects.

The room's sink records what a transport would send (no peers are needed to see events
and the Speaker's gain); everything between the audio in and the Speaker is the real code.
"""

from __future__ import annotations

import asyncio
import json

import av
import numpy as np
import pytest

from agent.listening import DUCK_GAIN, HANGOVER_MS, Listening, SpeechGate
from agent.protocol import BargeIn
from agent.rooms import RoomRegistry
from agent.settings import Settings
from agent.vad import CHUNK_MS, CHUNK_SAMPLES, VadStream
from bench.barge_in import espeak_speech, noise, resample, tone
from engines.registry import VoiceRegistry
from tests.conftest import shared_engines

LONG_TEXT = " ".join(["The agent keeps talking about the weather for quite a while."] * 10)
FRAME_48K = 960  # 20 ms, what a WebRTC or LiveKit frame carries
PAUSE = np.zeros(48_000 * 6 // 10, np.int16)  # longer than the hangover: a turn ends


class RecordingSink:
    """The transport's part: frames and events a room sends, kept for the test to read."""

    def __init__(self, room):
        self.events: list[dict] = []
        self.frames = 0
        self.changed = asyncio.Event()

    def send_frame(self, pcm, slot):
        self.frames += 1

    def send_event(self, data, to):
        self.events.append(json.loads(data))
        self.changed.set()

    def discard_buffered(self):
        return 0

    def close(self):
        pass

    def of(self, type_: str, **match) -> list[dict]:
        return [e for e in self.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]

    async def wait(self, type_: str, timeout: float = 10, **match) -> dict:
        async def poll():
            while not self.of(type_, **match):
                self.changed.clear()
                await self.changed.wait()
            return self.of(type_, **match)[0]

        return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def registry():
    settings = Settings(room_grace_s=0)
    reg = RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice))
    yield reg
    await reg.close_all()


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """A recorded sentence (eSpeak NG) at 48 kHz with 300 ms of silence before and after."""
    return asyncio.run(espeak_speech(shared_engines(), "Wait, stop please, I have a question about that."))


def feed(listener, pcm: np.ndarray, rate: int = 48_000, block: int = FRAME_48K) -> None:
    for i in range(0, len(pcm) - block + 1, block):
        listener.feed_pcm(pcm[i:i + block], rate)


def barge(mode: str, **kw) -> BargeIn:
    return BargeIn(mode=mode, **kw)


# -- the VAD -------------------------------------------------------------------------------


def probabilities(pcm16k: np.ndarray) -> np.ndarray:
    vad = VadStream()
    return np.array([vad.probability(pcm16k[i:i + CHUNK_SAMPLES])
                     for i in range(0, len(pcm16k) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)])


def test_vad_tells_speech_from_silence_tone_and_noise(sentence):
    speech = probabilities(resample(sentence, 48_000, 16_000))
    assert speech.max() > 0.9 and (speech > 0.5).mean() > 0.4
    for name, sig in [("silence", np.zeros(16_000 * 2, np.int16)), ("tone", tone(440, -12, 2.0, 16_000)),
                      ("low noise", noise(-45, 2.0, 16_000)), ("loud noise", noise(-15, 2.0, 16_000))]:
        assert probabilities(sig).max() < 0.5, name


def test_vad_streams_keep_their_own_state(sentence):
    pcm = resample(sentence, 48_000, 16_000)
    a, b = VadStream(), VadStream()
    chunk = lambda i: pcm[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES]  # noqa: E731
    pa = [a.probability(chunk(i)) for i in range(30)]
    # another stream running in between changes nothing in a fresh one's answers
    for _ in range(10):
        b.probability(np.zeros(CHUNK_SAMPLES, np.int16))
    fresh = VadStream()
    assert [fresh.probability(chunk(i)) for i in range(30)] == pytest.approx(pa, abs=1e-6)
    assert a.calls == 30 and b.calls == 10


def test_vad_rejects_a_chunk_of_the_wrong_size():
    vad = VadStream()
    with pytest.raises(ValueError, match="512 samples"):
        vad.probability(np.zeros(480, np.int16))
    assert vad.calls == 0


# -- the onset/offset gate -----------------------------------------------------------------


def run_gate(ps, threshold=0.5, min_speech_ms=250, gate=None):
    gate = gate or SpeechGate()
    return [gate.update(p, threshold, min_speech_ms) for p in ps], gate


def test_gate_needs_min_speech_ms_of_speech():
    need = -(-250 // CHUNK_MS)  # 8 chunks of 32 ms
    out, gate = run_gate([0.9] * need)
    assert out[:-1] == [None] * (need - 1) and out[-1] == "started" and gate.talking
    out, _ = run_gate([0.9] * (need - 1) + [0.1] + [0.9] * (need - 1))
    assert "started" not in out  # a silent chunk starts the count again
    out, _ = run_gate([0.9] * 4 + [0.45] * 3 + [0.9] * 4)
    assert out[-1] == "started"  # undecided chunks (between the thresholds) neither count nor reset
    assert run_gate([0.9], min_speech_ms=0)[0] == ["started"]


def test_gate_threshold_and_hangover():
    out, _ = run_gate([0.6] * 20, threshold=0.7)
    assert "started" not in out
    hang = HANGOVER_MS // CHUNK_MS
    out, gate = run_gate([0.9] * 8 + [0.05] * (hang - 1) + [0.9] + [0.05] * hang)
    assert out.count("started") == 1 and out.count("stopped") == 1 and out[-1] == "stopped"
    assert not gate.talking


# -- a listener in a real room -------------------------------------------------------------


async def test_off_decodes_nothing(registry, sentence):
    room = registry.open("quiet", RecordingSink)
    listening = Listening()
    listener = listening.listen(room, "alice")
    feed(listener, sentence)
    opus = encode_opus(sentence)
    for payload in opus:
        listener.feed_opus(payload)
    s = listening.totals()
    assert s.packets_in == len(sentence) // FRAME_48K + len(opus) == s.packets_dropped
    assert (s.decoders_created, s.resamplers_created, s.vad_calls, s.samples_16k) == (0, 0, 0, 0)
    assert not room.sink.of("user_speech")


async def test_interrupt_mode_stops_the_speaker_and_clears_the_queue(registry, sentence):
    room = registry.open("talk", RecordingSink)
    room.speaker.barge_in = barge("interrupt")
    room.receive({"type": "synthesize", "id": "long", "text": LONG_TEXT, "voice": "espeak:en-us"}, "bot")
    room.receive({"type": "synthesize", "id": "next", "text": "Queued after it."}, "bot")
    await room.sink.wait("started", id="long")
    listener = Listening().listen(room, "alice")
    feed(listener, np.concatenate([sentence, PAUSE]))
    kinds = [(e["type"], e.get("id"), e.get("reason"), e.get("state")) for e in room.sink.events
             if e["type"] in ("user_speech", "interrupted")]
    assert kinds == [("user_speech", None, None, "started"), ("interrupted", "next", "barge_in", None),
                     ("interrupted", "long", "barge_in", None), ("user_speech", None, None, "stopped")]
    assert room.sink.of("user_speech")[0]["participant"] == "alice"
    # pause first, then confirmed: the turn interrupts, and the hold it took is released
    held = [(e["type"], e.get("id"), e["reason"]) for e in room.sink.events if e["type"] in ("paused", "resumed")]
    assert held == [("paused", "long", "barge_in"), ("resumed", None, "barge_in")]
    assert room.sink.of("user_speech", state="stopped")[0]["kind"] == "turn"
    assert room.speaker.idle
    assert listener.stats.onsets == 1 and listener.stats.resamplers_created == 1


class PcmSink(RecordingSink):
    """Keeps every frame's samples too, and where each event fell among them."""

    def __init__(self, room):
        super().__init__(room)
        self.pcm: list[np.ndarray] = []
        self.frame_at: dict[int, int] = {}  # event index -> frames sent before it

    def send_frame(self, pcm, slot):
        super().send_frame(pcm, slot)
        self.pcm.append(pcm.copy())

    def send_event(self, data, to):
        self.frame_at[len(self.events)] = len(self.pcm)
        super().send_event(data, to)


async def feed_paced(listener, pcm: np.ndarray) -> None:
    """As a microphone sends it: a 20 ms block every 20 ms, so the agent plays meanwhile."""
    for i in range(0, len(pcm) - FRAME_48K + 1, FRAME_48K):
        listener.feed_pcm(pcm[i:i + FRAME_48K], 48_000)
        await asyncio.sleep(FRAME_48K / 48_000)


SHORT_TEXT = "The agent says a few words about the weather, about the wind and the rain, and then it stops."


async def played_undisturbed(registry) -> np.ndarray:
    room = registry.open("reference", PcmSink)
    room.receive({"type": "synthesize", "id": "ref", "text": SHORT_TEXT, "voice": "espeak:en-us"}, "bot")
    finished = await room.sink.wait("finished", id="ref")
    return np.concatenate(room.sink.pcm), finished["audio_ms"]


@pytest.mark.parametrize("word", ["Yes.", "Okay."])  # ~400 ms of speech each
async def test_an_interjection_pauses_and_resumes_and_every_sample_is_played_once(registry, word):
    from agent.audio import FADE_SAMPLES

    reference, reference_ms = await played_undisturbed(registry)
    interjection = await espeak_speech(shared_engines(), word, voice="espeak:en-029")  # another voice
    room = registry.open("nod", PcmSink)
    room.speaker.barge_in = barge("interrupt")
    room.receive({"type": "synthesize", "id": "u", "text": SHORT_TEXT, "voice": "espeak:en-us"}, "bot")
    await room.sink.wait("started", id="u")
    # the microphone sends its room's noise first: what the echo canceller needs to find that
    # this participant sends no echo back (a headset), before the interjection
    lead_in = noise(-50, 1.6)
    await feed_paced(Listening().listen(room, "alice"), np.concatenate([lead_in, interjection, PAUSE]))
    await room.sink.wait("finished", id="u")

    sink = room.sink
    seq = [(e["type"], e.get("id"), e.get("reason"), e.get("state"), e.get("kind")) for e in sink.events
           if e["type"] in ("paused", "resumed", "user_speech", "interrupted")]
    assert seq == [("user_speech", None, None, "started", None), ("paused", "u", "barge_in", None, None),
                   ("user_speech", None, None, "stopped", "interjection"), ("resumed", "u", "barge_in", None, None)]
    # the frame after `paused` is the fade: FADE_SAMPLES of the utterance, then silence
    fade_index = sink.frame_at[next(i for i, e in enumerate(sink.events) if e["type"] == "paused")]
    frames = sink.pcm
    # (the fade's own samples may be a quiet gap between words: only the silence after it is certain)
    assert not frames[fade_index][FADE_SAMPLES:].any()
    heard = np.concatenate(frames[:fade_index] + [frames[fade_index][:FADE_SAMPLES]] + frames[fade_index + 1:])
    # as many samples as the undisturbed play, in the same order: none lost, none twice
    # (the last frame of each is padded with silence: compare what it carries)
    heard, ref = np.trim_zeros(heard, "b"), np.trim_zeros(reference, "b")
    assert len(heard) == len(ref)
    cut = fade_index * FRAME_48K
    same = np.ones(len(ref), bool)
    same[cut:cut + 2 * FADE_SAMPLES] = False  # the fade out and the fade back in
    assert np.array_equal(heard[same], ref[same])
    assert sink.of("finished", id="u")[0]["audio_ms"] == reference_ms


async def test_confirm_ms_within_min_speech_ms_interrupts_at_once(registry, sentence):
    room = registry.open("direct", RecordingSink)
    room.receive({"type": "configure", "barge_in": {"mode": "interrupt", "confirm_ms": 0}}, "bot")
    room.receive({"type": "synthesize", "id": "long", "text": LONG_TEXT, "voice": "espeak:en-us"}, "bot")
    await room.sink.wait("started", id="long")
    feed(Listening().listen(room, "alice"), np.concatenate([sentence, PAUSE]))
    assert room.sink.of("interrupted", id="long", reason="barge_in")
    assert not room.sink.of("paused") and not room.sink.of("resumed")


async def test_interrupt_without_clearing_the_queue(registry, sentence):
    room = registry.open("keep", RecordingSink)
    room.speaker.barge_in = barge("interrupt", clear_queue=False)
    room.receive({"type": "synthesize", "id": "long", "text": LONG_TEXT, "voice": "espeak:en-us"}, "bot")
    room.receive({"type": "synthesize", "id": "next", "text": "Queued after it."}, "bot")
    await room.sink.wait("started", id="long")
    feed(Listening().listen(room, "alice"), sentence)
    assert [e["id"] for e in room.sink.of("interrupted")] == ["long"]
    assert room.speaker.current is not None and room.speaker.current.id == "next"


async def test_duck_mode_lowers_the_gain_while_someone_talks(registry, sentence):
    room = registry.open("duck", RecordingSink)
    room.speaker.barge_in = barge("duck")
    listening = Listening()
    alice, bob = listening.listen(room, "alice"), listening.listen(room, "bob")
    head, tail = sentence[: len(sentence) // 2], sentence[len(sentence) // 2:]
    feed(alice, head)
    assert room.speaker.target_gain == pytest.approx(DUCK_GAIN)
    feed(bob, np.concatenate([sentence, PAUSE]))  # bob talks too, and stops
    assert [e["participant"] for e in room.sink.of("user_speech", state="stopped")] == ["bob"]
    assert room.speaker.target_gain == pytest.approx(DUCK_GAIN)  # alice is still talking
    feed(alice, np.concatenate([tail, PAUSE]))
    assert room.speaker.target_gain == 1.0
    assert not room.sink.of("interrupted")


async def test_turning_barge_in_off_mid_turn_ends_it_and_frees_the_decoders(registry, sentence):
    room = registry.open("switch", RecordingSink)
    room.speaker.barge_in = barge("duck")
    listener = Listening().listen(room, "alice")
    opus = encode_opus(sentence)
    for payload in opus[: len(opus) // 2]:
        listener.feed_opus(payload)
    assert listener.gate.talking and room.speaker.target_gain < 1
    room.receive({"type": "configure", "barge_in": {"mode": "off"}}, "bot")
    calls = listener.stats.vad_calls
    for payload in opus[len(opus) // 2:]:
        listener.feed_opus(payload)
    assert room.sink.of("user_speech", state="stopped") and room.speaker.target_gain == 1.0
    assert listener.stats.vad_calls == calls and listener._decoder is None and listener._vad is None
    assert listener.stats.decoders_created == 1


async def test_min_speech_ms_of_the_room_applies(registry, sentence):
    room = registry.open("strict", RecordingSink)
    room.speaker.barge_in = barge("interrupt", min_speech_ms=5000)  # longer than the sentence
    listener = Listening().listen(room, "alice")
    feed(listener, sentence)
    assert listener.stats.vad_calls > 0 and not room.sink.of("user_speech")
    room.receive({"type": "configure", "barge_in": {"mode": "interrupt", "min_speech_ms": 250}}, "bot")
    feed(listener, np.concatenate([sentence, PAUSE]))
    assert len(room.sink.of("user_speech", state="started")) == 1


async def test_bad_input_is_refused_and_changes_nothing(registry, sentence):
    room = registry.open("bad", RecordingSink)
    room.speaker.barge_in = barge("interrupt")
    listener = Listening().listen(room, "alice")
    with pytest.raises(ValueError, match="mono int16"):
        listener.feed_pcm(np.zeros(960, np.float32), 48_000)
    with pytest.raises(ValueError, match="mono int16"):
        listener.feed_pcm(np.zeros((2, 960), np.int16), 48_000)
    with pytest.raises(ValueError, match="positive sample rate"):
        listener.feed_pcm(np.zeros(960, np.int16), 0)
    assert listener.stats.packets_in == 0 and listener._resampler is None
    listener.feed_opus(b"\xff\xfe not opus at all")
    assert listener.stats.decode_errors == 1
    for payload in encode_opus(sentence):  # the stream goes on after a bad packet
        listener.feed_opus(payload)
    assert listener.stats.onsets == 1


async def test_leaving_ends_the_turn(registry, sentence):
    room = registry.open("leave", RecordingSink)
    room.speaker.barge_in = barge("duck")
    listening = Listening()
    listener = listening.listen(room, "alice")
    feed(listener, sentence[: len(sentence) // 2])
    listening.remove(listener)
    assert room.sink.of("user_speech", state="stopped") and room.speaker.target_gain == 1.0
    assert ("leave", "alice") not in listening.listeners and listening.totals().onsets == 1


async def test_one_identity_in_two_rooms_is_two_listeners(registry, sentence):
    # LiveKit identities are unique per room only
    listening = Listening()
    a, b = registry.open("a", RecordingSink), registry.open("b", RecordingSink)
    a.speaker.barge_in = barge("duck")
    in_a, in_b = listening.listen(a, "alice"), listening.listen(b, "alice")
    feed(in_a, sentence)
    feed(in_b, sentence)  # b's barge-in is off
    assert set(listening.listeners) == {("a", "alice"), ("b", "alice")}
    assert a.sink.of("user_speech") and not b.sink.of("user_speech")
    assert in_b.stats.vad_calls == 0 and a.speaker.target_gain < 1 and b.speaker.target_gain == 1


async def test_listeners_start_no_threads(registry, sentence):
    # one decoder and resampler per listened participant: they must not bring thread pools
    import os

    room = registry.open("threads", RecordingSink)
    room.speaker.barge_in = barge("duck")
    listening = Listening()
    opus = encode_opus(sentence)
    VadStream()  # the shared model is loaded once per process; not what this counts
    listeners = [listening.listen(room, f"p{k}") for k in range(4)]  # (may start the loop's executor)
    before = len(os.listdir("/proc/self/task"))
    for payload in opus[:40]:
        for listener in listeners:
            listener.feed_opus(payload)
    assert all(l.stats.vad_calls > 0 for l in listeners)
    assert len(os.listdir("/proc/self/task")) == before


def encode_opus(pcm48k: np.ndarray) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48_000, "mono", "s16", 32_000
    enc.options = {"application": "voip", "frame_duration": "20"}
    enc.open()
    out = []
    for i in range(0, len(pcm48k) - FRAME_48K + 1, FRAME_48K):
        frame = av.AudioFrame.from_ndarray(pcm48k[i:i + FRAME_48K].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


# -- LiveKit: frames through real SDK objects ----------------------------------------------


@pytest.mark.parametrize("rate", [48_000, 16_000])
async def test_livekit_audio_stream_frames_drive_the_listener(registry, sentence, rate):
    """A participant's microphone as the LiveKit transport sees it: an `AudioSource`-backed
    `LocalAudioTrack` read through `rtc.AudioStream` (offline: no server can run here, and
    the local track is the one SDK object that carries frames without one)."""
    from livekit import rtc

    room = registry.open(f"lk{rate}", RecordingSink)
    room.speaker.barge_in = barge("interrupt")
    room.receive({"type": "synthesize", "id": "long", "text": LONG_TEXT, "voice": "espeak:en-us"}, "bot")
    await room.sink.wait("started", id="long")
    listener = Listening().listen(room, "alice")

    source = rtc.AudioSource(48_000, 1, queue_size_ms=1000)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    stream = rtc.AudioStream.from_track(track=track, sample_rate=rate, num_channels=1)
    pcm = np.concatenate([sentence, PAUSE])
    pcm = pcm[: len(pcm) // 480 * 480]  # whole 10 ms frames
    expected = len(pcm) * rate // 48_000

    async def capture():
        for i in range(0, len(pcm), 480):
            frame = rtc.AudioFrame.create(48_000, 1, 480)
            np.frombuffer(frame.data, np.int16)[:] = pcm[i:i + 480]
            await source.capture_frame(frame)

    async def read():
        got = 0
        async for ev in stream:
            listener.feed_pcm(ev.frame.data, ev.frame.sample_rate)
            got += ev.frame.samples_per_channel
            if got >= expected - rate // 10:  # the stream may hold back its last few ms
                return

    try:
        await asyncio.wait_for(asyncio.gather(capture(), read()), 30)
    finally:
        await stream.aclose()
        await source.aclose()
    assert [e["state"] for e in room.sink.of("user_speech")] == ["started", "stopped"]
    assert room.sink.of("interrupted", id="long", reason="barge_in")
    assert listener.stats.resamplers_created == (0 if rate == 16_000 else 1)


async def test_a_room_nobody_listens_to_any_more_is_not_kept_alive_by_listening(registry):
    import gc
    import weakref

    listening = Listening()
    room = registry.open("gone", RecordingSink)
    listener = listening.listen(room, "alice")
    ref = weakref.ref(room)
    listening.remove(listener)
    await registry.close_all()
    del room, listener
    gc.collect()
    assert ref() is None, "a closed room whose listeners left is freed"
