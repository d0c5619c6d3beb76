"""The Speaker, exactly: priorities, preemption, interrupts, fades, played positions,
captions and streaming input, on a fake clock with a fake sink (tests/speaker_harness.py)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio import FADE_SAMPLES, FRAME_SAMPLES, SAMPLE_RATE
from agent.protocol import ProtocolError

from .speaker_harness import AMPLITUDE, SAMPLES_PER_CHAR, Stage, frames_for


async def test_plays_in_priority_order_fifo_within_a_priority():
    s = Stage()
    s.send({"type": "synthesize", "id": "n1", "text": "first normal"})
    await s.settle()
    s.tick()
    for uid, prio in [("n2", "normal"), ("h1", "high"), ("n3", "normal"), ("h2", "high")]:
        s.send({"type": "synthesize", "id": uid, "text": f"utterance {uid}", "priority": prio})
    await s.play_until_idle()
    assert [e["id"] for e in s.of("started")] == ["n1", "h1", "h2", "n2", "n3"]
    assert [e["id"] for e in s.of("finished")] == ["n1", "h1", "h2", "n2", "n3"]
    # queued positions: utterances that will play before each one
    assert {e["id"]: e["position"] for e in s.of("queued")} == {"n1": 0, "n2": 1, "h1": 1, "n3": 3, "h2": 2}


async def test_critical_preempts_with_a_fade_and_plays_at_once():
    s = Stage()
    s.send({"type": "synthesize", "id": "n", "text": "a normal utterance that is long enough to be cut"})
    await s.settle()
    for _ in range(5):
        s.tick()
    s.send({"type": "synthesize", "id": "c", "text": "critical", "priority": "critical"})
    assert s.of("interrupted", id="n")[0]["reason"] == "preempted"
    fade = s.tick()
    assert fade is not None and np.all(fade[FADE_SAMPLES:] == 0)
    await s.play_until_idle()
    assert [e["id"] for e in s.of("started")] == ["n", "c"]
    assert not s.of("finished", id="n")


async def test_interrupt_fades_monotonically_then_nothing_of_the_utterance():
    s = Stage()
    s.send({"type": "synthesize", "id": "u", "text": "x" * 400})  # 4 s of tone
    await s.settle()
    for _ in range(10):
        assert s.tick() is not None
    pulls = s.pulls
    s.send({"type": "interrupt"})
    assert s.pulls == pulls + 1, "the fade must be asked to leave now, not at the next tick"
    assert s.discards == 1, "audio queued downstream of the room is stale once cut"
    fade = s.tick()
    # the ramp: peak per 1 ms window falls monotonically to zero, the rest is silence
    windows = np.abs(fade[:FADE_SAMPLES].astype(np.int32)).reshape(-1, 48).max(axis=1)
    assert windows[0] > AMPLITUDE * 0.9
    assert np.all(np.diff(windows) <= 0) and windows[-1] < AMPLITUDE * 0.2
    assert np.all(fade[FADE_SAMPLES:] == 0)
    # nothing of the interrupted utterance afterwards, although 1.5 s was buffered
    for _ in range(20):
        await s.settle()
        assert s.tick() is None
    interrupted = s.of("interrupted", id="u")[0]
    assert interrupted["reason"] == "interrupt"
    assert interrupted["played_ms"] == 11 * 20  # 10 frames + the faded one, from frames sent


async def test_interrupt_by_id_removes_a_queued_one_and_unknown_id_is_an_error():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": "playing now"})
    s.send({"type": "synthesize", "id": "b", "text": "waiting"})
    s.send({"type": "synthesize", "id": "c", "text": "also waiting"})
    await s.settle()
    s.tick()
    s.send({"type": "interrupt", "id": "b"})
    assert s.of("interrupted", id="b")[0]["played_ms"] == 0
    with pytest.raises(ProtocolError) as err:
        s.send({"type": "interrupt", "id": "zzz"})
    assert err.value.code.value == "unknown_utterance"
    await s.play_until_idle()
    assert [e["id"] for e in s.of("finished")] == ["a", "c"]


async def test_interrupt_from_cancels_every_utterance_of_that_sender_only():
    s = Stage()
    s.send({"type": "synthesize", "id": "a1", "text": "playing now", "from": "alice"})
    s.send({"type": "synthesize", "id": "b1", "text": "from bob", "from": "bob"})
    s.send({"type": "synthesize", "id": "a2", "text": "alice again", "from": "alice"})
    s.send({"type": "synthesize", "id": "n", "text": "nobody's"})
    await s.settle()
    s.tick()
    s.send({"type": "interrupt", "from": "alice"})
    assert {e["id"]: e["played_ms"] > 0 for e in s.of("interrupted")} == {"a1": True, "a2": False}
    s.send({"type": "interrupt", "from": "nobody"})  # nothing of theirs: not an error, nothing changes
    await s.play_until_idle()
    assert [e["id"] for e in s.of("finished")] == ["b1", "n"]
    with pytest.raises(ProtocolError) as err:
        s.send({"type": "interrupt", "id": "b1", "from": "bob"})
    assert err.value.code.value == "bad_message"


async def test_interrupt_without_id_drops_the_queue():
    s = Stage()
    for uid in "abc":
        s.send({"type": "synthesize", "id": uid, "text": "some words here"})
    await s.settle()
    s.tick()
    s.send({"type": "interrupt"})
    assert {e["id"] for e in s.of("interrupted")} == {"a", "b", "c"}
    assert s.speaker.queue == [] and s.speaker.current is None


async def test_finished_audio_ms_counts_frames_sent():
    s = Stage()
    text = "exactly measured"
    s.send({"type": "synthesize", "id": "m", "text": text})
    await s.play_until_idle()
    sent = len(s.frames)
    assert sent == frames_for(text)
    assert s.of("finished", id="m")[0]["audio_ms"] == len(text) * SAMPLES_PER_CHAR * 1000 // SAMPLE_RATE
    assert s.tick_of("finished", id="m") == s.frames[-1][0], "finished goes out with the last frame"


async def test_captions_go_out_in_the_tick_of_their_first_frame_never_earlier():
    s = Stage()
    text = "One two three. Four five."
    s.send({"type": "synthesize", "id": "cap", "text": text})
    await s.play_until_idle()
    captions = s.of("caption", id="cap")
    assert [c["text"] for c in captions] == ["One two three.", "One", "two", "three.", "Four five.", "Four", "five."]
    assert [c["kind"] for c in captions] == ["sentence", "word", "word", "word", "sentence", "word", "word"]
    first_tick = s.frames[0][0]
    for tick, ev in s.events:
        if ev["type"] != "caption":
            continue
        sample = ev["offset_ms"] * SAMPLE_RATE // 1000
        expected_tick = first_tick + sample // FRAME_SAMPLES
        assert tick == expected_tick, (ev["text"], tick, expected_tick)


async def test_interrupted_utterance_sends_no_caption_past_the_cut():
    s = Stage()
    s.send({"type": "synthesize", "id": "u", "text": "word " * 100})
    await s.settle()
    for _ in range(3):
        s.tick()
    s.send({"type": "interrupt"})
    cut_tick = s.tick_no
    await s.play_until_idle()
    assert all(t <= cut_tick for t, e in s.events if e["type"] == "caption")


async def test_streaming_input_starts_before_final_and_flushes_on_final():
    s = Stage()
    s.send({"type": "synthesize", "id": "llm", "text": "Hello there. And then", "final": False})
    await s.settle()
    s.tick()
    assert s.of("started", id="llm"), "speech starts at the first complete sentence"
    assert s.engine.calls == ["Hello there. "]
    s.send({"type": "append", "id": "llm", "text": " some more. Done"})
    await s.settle()
    s.send({"type": "append", "id": "llm", "text": " now.", "final": True})
    await s.play_until_idle()
    assert "".join(s.engine.calls).split() == "Hello there. And then some more. Done now.".split()
    assert s.of("finished", id="llm")
    with pytest.raises(ProtocolError):
        s.send({"type": "append", "id": "llm", "text": "too late"})


async def test_duplicate_ids_are_refused():
    s = Stage()
    s.send({"type": "synthesize", "id": "dup", "text": "one"})
    with pytest.raises(ProtocolError) as err:
        s.send({"type": "synthesize", "id": "dup", "text": "two"})
    assert err.value.code.value == "duplicate_id"


async def test_ducking_ramps_without_steps():
    s = Stage()
    s.send({"type": "synthesize", "id": "d", "text": "x" * 300})
    await s.settle()
    s.tick()
    s.speaker.set_gain(10 ** (-12 / 20))
    ducked = [s.tick() for _ in range(8)]
    # level at the end of each frame (the gain ramps inside the frame)
    ends = [int(np.abs(f[-48:].astype(np.int32)).max()) for f in ducked]
    # settles 12 dB down, each frame at most 3 dB below the one before
    assert ends[-1] == pytest.approx(AMPLITUDE * 10 ** (-12 / 20), rel=0.02)
    for a, b in zip([AMPLITUDE] + ends, ends):
        assert 20 * np.log10(a / b) <= 3.0 + 0.05
    # within a frame the gain is a ramp: neighbouring samples never jump by a step
    env = np.abs(ducked[0].astype(np.int32))
    assert np.all(np.abs(np.diff(env[::48])) < AMPLITUDE * 0.05)


async def test_configure_bad_voice_changes_nothing():
    s = Stage()
    before = s.speaker.voice
    with pytest.raises(ProtocolError) as err:
        s.send({"type": "configure", "voice": "nope:none", "speed": 1.5})
    assert err.value.code.value == "unknown_voice"
    assert s.speaker.voice is before and s.speaker.speed == 1.0
