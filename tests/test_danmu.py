"""Danmu (live-chat) rules, one test per rule, on the deterministic Speaker stage."""

from __future__ import annotations

from agent.danmu import ELLIPSIS, cut_text

from .speaker_harness import Stage


def configure(s: Stage, **rules) -> None:
    s.send({"type": "configure", "danmu": rules})


def chat(s: Stage, text: str, sender: str = "viewer", **extra) -> dict | None:
    return s.send({"type": "synthesize", "text": text, "from": sender, **extra})


async def test_max_queue_drops_the_oldest_normal():
    s = Stage()
    configure(s, max_queue=2)
    chat(s, "playing", id="p")
    chat(s, "first waiting", id="w1")
    chat(s, "important", id="h", priority="high")
    chat(s, "second waiting", id="w2")  # queue full (w1, h): the oldest normal goes
    assert s.of("dropped", id="w1")[0]["reason"] == "queue_full"
    assert [u.id for u in s.speaker.queue] == ["h", "w2"]


async def test_max_queue_with_only_high_queued_drops_the_newcomer():
    s = Stage()
    configure(s, max_queue=1)
    chat(s, "playing", id="p")
    chat(s, "vip", id="h", priority="high")
    chat(s, "late", id="n")
    assert s.of("dropped", id="n")[0]["reason"] == "queue_full"
    assert [u.id for u in s.speaker.queue] == ["h"]


async def test_max_chars_cuts_at_a_word_boundary_with_an_ellipsis():
    s = Stage()
    configure(s, max_chars=20)
    chat(s, "this message is far too long to be read in full", id="long")
    await s.settle()
    spoken = s.engine.calls[0]
    assert spoken.endswith(ELLIPSIS) and len(spoken) <= 20
    assert spoken == "this message is far" + ELLIPSIS
    assert cut_text("短消息不会被截断", 20) == "短消息不会被截断"
    assert cut_text("这是一条非常非常非常长的弹幕消息", 6) == "这是一条非" + ELLIPSIS


async def test_dedupe_drops_the_same_text_within_the_window_only():
    s = Stage()
    configure(s, dedupe_s=10)
    chat(s, "Thank you!", id="a")
    chat(s, "  thank   YOU! ", id="b", sender="other")
    assert s.of("dropped", id="b")[0]["reason"] == "duplicate"
    s.clock.now += 11
    chat(s, "thank you!", id="c")
    assert not s.of("dropped", id="c")


async def test_per_sender_rate_limit_per_minute():
    s = Stage()
    configure(s, per_sender_per_min=3)
    for i in range(5):
        chat(s, f"message {i}", id=f"m{i}", sender="spammer")
    chat(s, "hello", id="calm", sender="calm")
    assert [e["id"] for e in s.of("dropped", reason="rate_limited")] == ["m3", "m4"]
    s.clock.now += 60
    chat(s, "after a minute", id="later", sender="spammer")
    assert not s.of("dropped", id="later")


async def test_max_wait_expires_stale_lines():
    s = Stage()
    configure(s, max_wait_s=30)
    chat(s, "x " * 200, id="long")  # keeps the room busy
    chat(s, "stale by the time it plays", id="stale")
    await s.settle()
    s.tick()
    s.clock.now += 31
    s.send({"type": "interrupt", "id": "long"})
    assert s.of("dropped", id="stale")[0]["reason"] == "expired"
    assert not s.of("started", id="stale")


async def test_blocked_words_filter_whole_words_and_cjk():
    s = Stage()
    configure(s, blocked_words=["spam", "坏词"])
    chat(s, "buy SPAM now", id="a")
    chat(s, "这是坏词啊", id="b")
    chat(s, "spamalot is a musical", id="c")  # not the whole word
    assert {e["id"] for e in s.of("dropped", reason="filtered")} == {"a", "b"}


async def test_template_applies_to_lines_with_a_sender():
    s = Stage()
    configure(s, template="{from} says {text}")
    chat(s, "hello everyone", id="t", sender="Alice")
    s.send({"type": "synthesize", "text": "no sender here", "id": "plain"})
    await s.play_until_idle()
    assert s.engine.calls[0] == "Alice says hello everyone"
    assert s.engine.calls[1] == "no sender here"


async def test_configure_merges_and_null_turns_a_rule_off():
    s = Stage()
    configure(s, dedupe_s=10, max_chars=50)
    configure(s, dedupe_s=None)
    assert s.speaker.danmu.rules.dedupe_s is None and s.speaker.danmu.rules.max_chars == 50


async def test_flood_of_1000_keeps_the_queue_capped_in_priority_order_and_answers_ping():
    s = Stage()
    configure(s, max_queue=20)
    for i in range(1000):
        prio = "high" if i % 100 == 0 else "normal"
        chat(s, f"line {i}", id=f"l{i}", sender=f"u{i % 50}", priority=prio)
        assert len(s.speaker.queue) <= 20
    assert s.send({"type": "ping", "t": 1})["type"] == "pong"
    queued = s.speaker.queue
    assert len(queued) == 20
    # all ten high lines survive the flood, ahead of every normal one
    assert [u.id for u in queued[:9]] == [f"l{i}" for i in range(100, 1000, 100)]
    assert all(u.priority == "normal" for u in queued[9:])
    assert len(s.of("dropped", reason="queue_full")) == 1000 - 1 - 20
    await s.play_until_idle(max_ticks=20_000)
    started = [e["id"] for e in s.of("started")]
    assert started[1:10] == [f"l{i}" for i in range(100, 1000, 100)]
