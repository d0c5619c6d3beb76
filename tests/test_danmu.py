"""Danmu (live-chat) rules, one test per rule, on the deterministic Speaker stage."""

from __future__ import annotations

from agent.danmu import ELLIPSIS, cut_text

from .speaker_harness import Stage, chat_flood


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


RAID_RULES = {"max_queue": 10, "max_wait_s": 5, "summary": "and {n} more messages", "max_speed": 1.4}


async def test_a_raid_of_300_lines_in_10_s_is_read_with_summaries_faster_and_never_late():
    run = await chat_flood(300, 10.0, chars=100, rules=RAID_RULES)  # the room reads ~1 line a second
    s = run.stage
    # bounded backlog: never more than max_queue waiting
    assert max(n for _, n in run.backlog) == 10
    # every line is accounted for: read, or dropped with a reason
    read = [e["id"] for e in s.of("finished") if not e["id"].startswith("summary")]
    dropped = {e["id"]: e["reason"] for e in s.of("dropped")}
    assert sorted(read + list(dropped)) == sorted(run.sent_at)
    # what queue_full dropped was not silent: summaries read it out, every line counted once
    summaries = [t for t in s.engine.calls if t.startswith("and ")]
    counted = sum(int(t.split()[1]) for t in summaries)
    assert summaries and counted == list(dropped.values()).count("queue_full") > 200
    assert len(summaries) < len(read)  # now and then, not after every line
    # nothing read after its max_wait_s (a line becomes current within its wait; audio starts that tick)
    for uid in read:
        assert s.time_of("started", id=uid) - run.sent_at[uid] <= RAID_RULES["max_wait_s"] + 0.02
    # the speed rose step by step to max_speed with the backlog and came back as the queue emptied
    speeds = [sp for text, sp in zip(s.engine.calls, s.engine.speeds) if not text.startswith("and ")]
    assert speeds[0] == 1.0 and max(speeds) == 1.4
    assert all(abs(b - a) <= 0.1 + 1e-9 for a, b in zip(speeds, speeds[1:]))
    peak, last_peak = speeds.index(1.4), len(speeds) - 1 - speeds[::-1].index(1.4)
    assert speeds[:peak + 1] == sorted(speeds[:peak + 1])
    assert speeds[last_peak:] == sorted(speeds[last_peak:], reverse=True) and speeds[-1] < 1.4
    assert "expired" in dropped.values()
    # once the backlog is gone, the next line reads at the room's speed again
    chat(s, "a calm line after the raid", id="calm")
    await s.play_until_idle()
    assert s.engine.speeds[-1] == 1.0


async def test_without_the_raid_rules_the_same_flood_is_dropped_silently_at_one_speed():
    run = await chat_flood(300, 10.0, chars=100, rules={"max_queue": 10, "max_wait_s": 5})
    assert not [t for t in run.stage.engine.calls if t.startswith("and ")]
    assert set(run.stage.engine.speeds) == {1.0}


async def test_a_summary_after_a_cleared_queue_is_not_read():
    s = Stage()
    configure(s, max_queue=1, summary="and {n} more")
    for i in range(4):
        chat(s, f"line {i}", id=f"l{i}")
    assert len(s.of("dropped", reason="queue_full")) == 2
    s.send({"type": "interrupt"})
    await s.play_until_idle()
    assert not [t for t in s.engine.calls if t.startswith("and ")]
