"""LLM token streams (`final: false` + `append`): speech starts at the first phrase that can
stand alone, and whole words go out when the stream is slow, so the track does not stall."""

from __future__ import annotations

import asyncio

import pytest

from engines.text import speakable_prefix
from tests.speaker_harness import Stage


@pytest.mark.parametrize("text, clauses, words, ready", [
    ("Hello there. How", False, False, "Hello there. "),
    ("Well, let me think about this, and", True, False, "Well, let me think about this, "),
    ("Well, let me think about this, and", False, False, ""),  # audio queued: wait for the sentence
    ("Well, let", True, False, ""),  # one word before the comma: too short to stand alone
    ("I think that the", True, False, ""),
    ("I think that the", True, True, "I think that "),  # slow stream: whole words so far
    ("I", True, True, ""),  # no whole word yet
    ("我们今天，天气", True, False, "我们今天，"),
])
def test_speakable_prefix(text, clauses, words, ready):
    head, rest = speakable_prefix(text, clauses=clauses, words=words)
    assert (head, head + rest) == (ready, text)


async def test_open_utterance_starts_at_the_first_clause_then_continues():
    s = Stage()
    s.send({"type": "synthesize", "id": "r", "text": "Well, let me think about this, ", "final": False})
    await s.settle()
    assert s.engine.calls == ["Well, let me think about this, "]
    s.send({"type": "append", "id": "r", "text": "and then I will answer. The end"})
    await s.settle()
    assert s.engine.calls[1] == "and then I will answer. "  # a whole sentence, not a clause: audio is queued
    s.send({"type": "append", "id": "r", "text": " is near.", "final": True})
    await s.play_until_idle()
    assert s.engine.calls[2:] == ["The end is near."]
    assert s.of("finished", id="r")


async def test_slow_stream_speaks_the_words_it_has():
    s = Stage()
    s.send({"type": "synthesize", "id": "r", "text": "I think that the", "final": False})
    await s.settle()
    assert s.engine.calls == []  # no phrase yet, and the stream is not slow yet
    for _ in range(100):  # the speaker's slow-stream timer runs on the real loop clock
        if s.engine.calls:
            break
        await asyncio.sleep(0.05)
    assert s.engine.calls == ["I think that "]


async def test_clause_waits_for_its_sentence_while_audio_is_queued_then_goes_before_a_stall():
    s = Stage()
    first = "This first sentence is long enough to keep more than a second of audio queued up. "
    s.send({"type": "synthesize", "id": "r", "text": first, "final": False})
    await s.settle()
    s.send({"type": "append", "id": "r", "text": "Well, let me think about this, and"})
    await s.settle()
    assert s.engine.calls == [first]  # plenty queued: the clause waits, prosody intact
    for _ in range(400):  # play it out; the speaker looks again as the queue drains (real loop time)
        s.tick()
        await asyncio.sleep(0.005)
        if len(s.engine.calls) > 1:
            break
    assert s.engine.calls[1:] == ["Well, let me think about this, "]
    assert s.speaker.current is not None and s.speaker.current.buffer.available > 0  # before it ran dry
