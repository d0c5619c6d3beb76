"""LLM token streams (`final: false` + `append`): speech starts at the first phrase that can
stand alone, and whole words go out when the stream is slow, so the track does not stall."""

from __future__ import annotations

import asyncio

import pytest

from engines.text import speakable_prefix
from tests.speaker_harness import Stage


@pytest.mark.parametrize("text, slow, ready", [
    ("Hello there. How", False, "Hello there. "),
    ("Well, let me think about this, and", False, "Well, let me think about this, "),
    ("Well, let", False, ""),  # one word before the comma: too short to stand alone
    ("I think that the", False, ""),
    ("I think that the", True, "I think that "),  # slow stream: whole words so far
    ("I", True, ""),  # no whole word yet
    ("我们今天，天气", False, "我们今天，"),
])
def test_speakable_prefix(text, slow, ready):
    head, rest = speakable_prefix(text, slow=slow)
    assert (head, head + rest) == (ready, text)


async def test_open_utterance_starts_at_the_first_clause_then_continues():
    s = Stage()
    s.send({"type": "synthesize", "id": "r", "text": "Well, let me think about this, ", "final": False})
    await s.settle()
    assert s.engine.calls == ["Well, let me think about this, "]
    s.send({"type": "append", "id": "r", "text": "and then I will answer. The end"})
    await s.settle()
    assert s.engine.calls[1] == "and then I will answer. "
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
