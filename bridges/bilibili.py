"""Bilibili live danmaku in, through blivedm: danmaku are chat lines; gifts, guard purchases and
super chats are `high`-priority lines with templates of their own.

blivedm (MIT, xfgryujk) parses Bilibili's raw commands into typed messages
(`DanmakuMessage.from_command(info)`, `GiftMessage`, `SuperChatMessage`, ...); this module maps
those to chat lines. It is imported lazily: only `tts-agent bridge bilibili` needs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .backoff import Backoff
from .lines import ChatLine
from .sink import SpeakSink

log = logging.getLogger("tts_agent.bridge.bilibili")

try:
    import blivedm
    from blivedm import models as _models

    _Handler = blivedm.BaseHandler
    MISSING = None
except ImportError as exc:  # the extra is not installed: the other bridges still work
    blivedm = None
    _models = None
    _Handler = object
    MISSING = exc

DANMAKU_EMOTICON = 1  # dm_type of a sticker: its "text" is the sticker's name, noise when read aloud


@dataclass(frozen=True)
class Templates:
    """Placeholders: {from}, {gift}, {num}, {price} (yuan), {text}. The room's danmu template still
    wraps the result (e.g. "{from}: {text}"), so the defaults leave the sender's name out."""

    gift: str = "送出{num}个{gift}"
    guard: str = "开通了{gift}"
    superchat: str = "{price}元醒目留言：{text}"

    def render(self, template: str, **values) -> str:
        out = template
        for key, value in values.items():
            out = out.replace("{" + key + "}", str(value))
        return out


class BilibiliChat(_Handler):
    """A blivedm handler: every message it understands becomes one call of `offer` or `reject`."""

    def __init__(self, offer: Callable[[ChatLine], None], reject: Callable[[ChatLine, str], None],
                 templates: Templates = Templates(), free_gifts: bool = False):
        if MISSING is not None:
            raise RuntimeError(f"the Bilibili bridge needs blivedm (pip install blivedm): {MISSING}")
        self.offer = offer
        self.reject = reject
        self.templates = templates
        self.free_gifts = free_gifts
        self.heartbeats = 0

    async def _on_heartbeat(self, client, message) -> None:
        if self.heartbeats == 0:
            log.info("bilibili: connected to live room %s", client.room_id)
            metrics.CONNECTIONS.labels("bilibili").inc()
        self.heartbeats += 1

    async def _on_danmaku(self, client, message) -> None:
        line = ChatLine(message.uname, message.msg)
        if message.dm_type == DANMAKU_EMOTICON:
            self.reject(line, "emoticon")
        else:
            self.offer(line)

    async def _on_gift(self, client, message) -> None:
        text = self.templates.render(self.templates.gift, **{"from": message.uname}, gift=message.gift_name,
                                     num=message.num, price=_yuan(message.total_coin), text="")
        line = ChatLine(message.uname, text, "high")
        # silver-coin gifts are free and arrive in floods; paid (gold) ones are what a streamer thanks
        if message.coin_type != "gold" and not self.free_gifts:
            self.reject(line, "free_gift")
        else:
            self.offer(line)

    async def _on_buy_guard(self, client, message) -> None:
        text = self.templates.render(self.templates.guard, **{"from": message.username}, gift=message.gift_name,
                                     num=message.num, price=_yuan(message.price * message.num), text="")
        self.offer(ChatLine(message.username, text, "high"))

    async def _on_super_chat(self, client, message) -> None:
        text = self.templates.render(self.templates.superchat, **{"from": message.uname}, gift=message.gift_name,
                                     num=1, price=message.price, text=message.message)
        self.offer(ChatLine(message.uname, text, "high"))


def _yuan(gold_coins: int) -> str:
    """Bilibili prices gold gifts in coins, 1000 to the yuan."""
    yuan = gold_coins / 1000
    return f"{yuan:g}"


class BilibiliBridge:
    def __init__(self, live_room: int, sink: SpeakSink, *, templates: Templates = Templates(),
                 free_gifts: bool = False, uid: int = 0, sessdata: str | None = None,
                 backoff: Backoff | None = None):
        if live_room <= 0:
            raise ValueError(f"not a Bilibili live room id: {live_room}")
        self.live_room = live_room
        self.sink = sink
        self.handler = BilibiliChat(sink.offer, sink.reject, templates, free_gifts)
        self.uid = uid
        self.sessdata = sessdata
        self.backoff = backoff or Backoff(2.0, 120.0)

    async def run(self) -> None:
        """Read the live room until cancelled. blivedm reconnects its websocket by itself; when its
        client stops for good (room lookup failed, TLS error) a new one starts after a backoff."""
        import aiohttp

        # a logged-in cookie (SESSDATA) is what makes Bilibili send real user names
        cookies = {"SESSDATA": self.sessdata} if self.sessdata else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), cookies=cookies) as session:
            while True:
                client = blivedm.BLiveClient(self.live_room, uid=self.uid, session=session)
                client.add_handler(self.handler)
                self.handler.heartbeats = 0
                log.info("bilibili: connecting to live room %d", self.live_room)
                client.start()
                try:
                    await client.join()
                finally:
                    await client.stop_and_close()
                if self.handler.heartbeats:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                log.warning("bilibili: client for live room %d stopped; restarting in %.1f s", self.live_room, delay)
                await asyncio.sleep(delay)
