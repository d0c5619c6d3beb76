"""The bridge's sink and a moderator's removals while lines still wait in the bridge (the agent
is unreachable: nothing listens on its port): a deleted line is never sent, and no interrupt goes
out for it; a banned sender's waiting lines go and the room is still told; a cleared chat empties
the backlog."""

from __future__ import annotations

import asyncio
import socket

from bridges.lines import ChatLine, Retract
from bridges.sink import AdminToken, SpeakSink


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_retractions_take_waiting_lines_out_of_the_backlog():
    sink = SpeakSink(f"http://127.0.0.1:{_closed_port()}", "room", AdminToken(token="t"), bridge="test")
    try:
        sink.offer(ChatLine("alice", "in flight", id="a"))
        await until(lambda: sink.backlog == 0)  # the first line left the backlog: its post is retrying
        sink.offer(ChatLine("bob", "deleted before it was sent", id="b"))
        sink.offer(ChatLine("alice", "alice again", id="c"))
        sink.offer(ChatLine("carol", "carol's line"))
        assert sink.backlog == 3

        sink.retract(Retract(id="b"))  # still here: dropped, and the room hears nothing of it
        assert sink.counts["dropped:deleted"] == 1 and sink.backlog == 2

        sink.retract(Retract(sender="alice"))  # c goes here; "a" may be in the room: an interrupt follows
        assert sink.counts["dropped:deleted"] == 2 and sink.backlog == 2  # carol's line + the interrupt

        sink.retract(Retract(id="a"))  # not waiting here (in flight): the room must be told
        sink.retract(Retract())  # the chat cleared: carol's line goes, the interrupts stay in order
        assert sink.counts["dropped:deleted"] == 3 and sink.backlog == 3
        assert sink.counts["retractions"] == 4
    finally:
        await sink.close()
    assert sink.backlog == 0
