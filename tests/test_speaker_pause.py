"""`pause` / `resume` on the Speaker, exactly: where the pause lands, what survives it, and
that a paused utterance's audio is played exactly once (fake clock, tests/speaker_harness.py)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio import FADE_SAMPLES, FRAME_SAMPLES
from agent.protocol import ProtocolError, parse_command

from .speaker_harness import SAMPLES_PER_CHAR, CountingEngine, Stage, counting_samples

TEXT = "Hi there. Four five six. Seven eight."  # first sentence: 4.5 frames, a boundary mid-frame
FIRST = len("Hi there.") * SAMPLES_PER_CHAR
TOTAL = len("Hi there.Four five six.Seven eight.") * SAMPLES_PER_CHAR


def played_audio(s: Stage) -> np.ndarray:
    return np.concatenate([f for _, f in s.frames]) if s.frames else np.zeros(0, np.int16)


async def ticks(s: Stage, n: int) -> list:
    out = []
    for _ in range(n):
        await s.settle()
        out.append(s.tick())
    return out


def test_pause_and_resume_parse_and_refuse_unknown_fields():
    assert parse_command({"type": "pause"}, max_text_chars=10).now is False
    assert parse_command({"type": "pause", "now": True}, max_text_chars=10).now is True
    assert parse_command({"type": "resume"}, max_text_chars=10).type == "resume"
    for bad in ({"type": "pause", "now": 1}, {"type": "resume", "now": True}, {"type": "pause", "at": "x"}):
        with pytest.raises(ProtocolError) as err:
            parse_command(bad, max_text_chars=10)
        assert err.value.code.value == "bad_message"


async def test_pause_lands_on_the_sentence_boundary_and_resume_goes_on_with_the_next_sentence():
    s = Stage(engine=CountingEngine())
    s.send({"type": "synthesize", "id": "u", "text": TEXT})
    await ticks(s, 2)
    s.send({"type": "pause"})
    assert not s.of("paused"), "a plain pause waits for the sentence to end"
    await ticks(s, 10)
    paused = s.of("paused")
    assert paused == [paused[0]] and paused[0]["id"] == "u" and paused[0]["reason"] == "pause"
    audio = played_audio(s)
    # exactly the first sentence, cut nowhere else: the frame holding the boundary ends in silence
    assert np.count_nonzero(audio) == FIRST
    assert np.array_equal(audio[:FIRST], counting_samples(0, FIRST)) and not audio[FIRST:].any()
    assert s.speaker.current is not None and s.speaker.current.played == FIRST
    assert s.speaker.idle, "a paused room leaves the clock"

    s.send({"type": "resume"})
    assert s.of("resumed") == [s.of("resumed")[0]] and s.of("resumed")[0]["id"] == "u"
    after = len(s.frames)
    await s.play_until_idle()
    sentences = [c["text"] for c in s.of("caption", kind="sentence")]
    assert sentences == ["Hi there.", "Four five six.", "Seven eight."]
    resumed_audio = np.concatenate([f for _, f in s.frames[after:]])
    assert np.array_equal(resumed_audio[:TOTAL - FIRST], counting_samples(FIRST, TOTAL - FIRST))
    assert s.of("finished", id="u")[0]["audio_ms"] == TOTAL * 1000 // 48_000


async def test_queue_survives_a_pause_and_lines_arriving_while_paused_wait_for_resume():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": TEXT})
    s.send({"type": "synthesize", "id": "b", "text": "Queued before."})
    await ticks(s, 1)
    s.send({"type": "pause"})
    await ticks(s, 20)
    s.send({"type": "synthesize", "id": "c", "text": "Sent while paused."})
    assert s.of("queued", id="c")
    assert all(f is None for f in await ticks(s, 50)), "nothing plays while paused"
    assert [u.id for u in s.speaker.queue] == ["b", "c"]
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert [e["id"] for e in s.of("finished")] == ["a", "b", "c"]


async def test_max_wait_s_still_expires_lines_queued_while_paused():
    s = Stage()
    s.send({"type": "configure", "danmu": {"max_wait_s": 5}})
    s.send({"type": "synthesize", "id": "a", "text": TEXT})
    await ticks(s, 1)
    s.send({"type": "pause"})
    await ticks(s, 10)
    s.send({"type": "synthesize", "id": "old", "text": "Too late to read."})
    s.clock.now += 4
    s.send({"type": "synthesize", "id": "fresh", "text": "Still in time."})
    s.clock.now += 2  # `old` waited 6 s, `fresh` 2 s
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert s.of("dropped", id="old")[0]["reason"] == "expired"
    assert [e["id"] for e in s.of("finished")] == ["a", "fresh"]


async def test_pause_now_fades_and_every_sample_is_played_exactly_once():
    s = Stage(engine=CountingEngine())
    text = "x" * 300  # 3 s, one sentence: no boundary to wait for
    total = 300 * SAMPLES_PER_CHAR
    s.send({"type": "synthesize", "id": "u", "text": text})
    await ticks(s, 10)
    pulls = s.pulls
    s.send({"type": "pause", "now": True})
    assert s.pulls == pulls + 1, "the fade leaves at once"
    assert s.discards == 0, "nothing downstream is thrown away: it is played, not lost"
    assert s.of("paused")[0]["id"] == "u"
    fade = s.tick()
    assert fade is not None and not fade[FADE_SAMPLES:].any()
    assert all(f is None for f in await ticks(s, 30))
    s.send({"type": "resume"})
    await s.play_until_idle()

    frames = [f for _, f in s.frames]
    # the fade frame carries FADE_SAMPLES of the utterance, the rest of it is silence
    heard = np.concatenate(frames[:10] + [frames[10][:FADE_SAMPLES]] + frames[11:])
    assert not heard[total:].any() and len(heard) - total < FRAME_SAMPLES
    heard = heard[:total].astype(np.int32)
    want = counting_samples(0, total).astype(np.int32)
    cut = 10 * FRAME_SAMPLES
    ramp_out = slice(cut, cut + FADE_SAMPLES)
    ramp_in = slice(cut + FADE_SAMPLES, cut + 2 * FADE_SAMPLES)
    untouched = np.ones(total, bool)
    untouched[ramp_out] = untouched[ramp_in] = False
    assert np.array_equal(heard[untouched], want[untouched]), "every sample once, in order, none lost or repeated"
    # the ramps scale the very samples they carry: down to silence, and back up
    ratio_out = heard[ramp_out] / want[ramp_out]
    ratio_in = heard[ramp_in] / want[ramp_in]
    assert ratio_out[0] > 0.99 and ratio_out[-1] < 0.01 and np.all(np.diff(ratio_out) <= 1e-3)
    assert ratio_in[0] < 0.01 and ratio_in[-1] > 0.99 and np.all(np.diff(ratio_in) >= -1e-3)
    assert s.of("finished", id="u")[0]["audio_ms"] == total * 1000 // 48_000


async def test_pause_when_idle_holds_new_lines_until_resume():
    s = Stage()
    s.send({"type": "pause"})
    assert s.of("paused")[0].get("id") is None
    s.send({"type": "synthesize", "id": "a", "text": "Hello."})
    assert all(f is None for f in await ticks(s, 20))
    assert not s.of("started")
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert s.of("finished", id="a")


async def test_interrupt_while_paused_cuts_without_a_second_fade_and_the_room_stays_paused():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": "x" * 300})
    await ticks(s, 5)
    s.send({"type": "pause", "now": True})
    s.tick()  # the fade
    s.send({"type": "interrupt", "id": "a"})
    assert s.of("interrupted", id="a") and s.discards == 0
    s.send({"type": "synthesize", "id": "b", "text": "Next."})
    assert all(f is None for f in await ticks(s, 10))
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert [e["id"] for e in s.of("started")] == ["a", "b"]


async def test_holds_stack_and_each_pause_pairs_with_one_resume():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": "x" * 300})
    await ticks(s, 5)
    s.speaker.pause(now=True, reason="barge_in")
    s.send({"type": "pause", "now": True})  # the host holds it too
    s.speaker.resume("barge_in")  # the interjection ended: the host's pause still holds
    assert [e["reason"] for e in s.of("paused")] == ["barge_in"] and not s.of("resumed")
    assert all(f is None for f in (await ticks(s, 5))[1:])
    s.send({"type": "resume"})
    s.send({"type": "resume"})  # a second resume changes nothing
    assert [e["reason"] for e in s.of("resumed")] == ["pause"]
    await s.play_until_idle()
    assert s.of("finished", id="a")


async def test_resume_before_a_plain_pause_lands_cancels_it():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": TEXT})
    await ticks(s, 1)
    s.send({"type": "pause"})
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert not s.of("paused") and not s.of("resumed") and s.of("finished", id="a")


async def test_a_pending_pause_survives_a_barge_in_that_lands_before_its_boundary():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": "x" * 300})  # one long sentence: no boundary soon
    await ticks(s, 2)
    s.send({"type": "pause"})  # waits for the sentence to end
    s.speaker.pause(now=True, reason="barge_in")  # someone coughs first
    s.speaker.resume("barge_in")  # the cough ends: the host's pause is still asked for
    assert not s.of("resumed") and s.speaker.paused
    assert all(f is None for f in (await ticks(s, 5))[1:])
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert len(s.of("paused")) == len(s.of("resumed")) == 1 and s.of("finished", id="a")


async def test_a_cut_is_the_boundary_a_pending_pause_waits_for():
    s = Stage()
    s.send({"type": "synthesize", "id": "a", "text": "x" * 300})
    s.send({"type": "synthesize", "id": "b", "text": TEXT})
    await ticks(s, 2)
    s.send({"type": "pause"})
    s.send({"type": "interrupt", "id": "a"})
    assert s.of("interrupted", id="a") and s.of("paused")
    assert all(f is None for f in (await ticks(s, 10))[1:]), "b waits for resume"
    assert not s.of("started", id="b")
    s.send({"type": "resume"})
    await s.play_until_idle()
    assert s.of("finished", id="b")
