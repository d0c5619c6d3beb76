"""Bilibili live danmaku in: danmaku are chat lines; gifts, guard purchases and super chats are
`high`-priority lines with templates of their own; a deleted super chat and a user the room's
admins block are moderator removals.

Our own client (`bilibili_packets` is the packet layer): look the room up over HTTP (its long
id, a key and the message servers), open the websocket, authenticate, send a heartbeat every
30 s, read commands, and reconnect forever with a backoff. blivedm, used before, pins
`brotli==1.0.9`, had one release (2023), and reads no zlib bodies.

Command shapes (DANMU_MSG's positional `info`, SEND_GIFT, GUARD_BUY, SUPER_CHAT_MESSAGE,
SUPER_CHAT_MESSAGE_DELETE, ROOM_BLOCK_MSG) follow the community's public descriptions;
Bilibili documents none of this, and it cannot be reached from the development machine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .backoff import Backoff
from .bilibili_packets import Op, PacketError, auth_packet, commands, decode, heartbeat_packet
from .lines import ChatLine, Retract
from .sink import SpeakSink

log = logging.getLogger("tts_agent.bridge.bilibili")

ROOM_INIT_URL = "https://api.live.bilibili.com/room/v1/Room/room_init"
DANMU_INFO_URL = "https://api.live.bilibili.com/xlive/web-room/v1/index/getDanmuInfo"
DEFAULT_SERVER = "wss://broadcastlv.chat.bilibili.com:443/sub"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
HEARTBEAT_S = 30.0
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


def superchat_id(sc_id) -> str:
    """The utterance id of a super chat, so SUPER_CHAT_MESSAGE_DELETE can name it."""
    return f"bili-sc-{sc_id}"


class BilibiliChat:
    """Bilibili's commands ({"cmd": ..., "info"/"data": ...}) to calls of offer, reject and retract."""

    def __init__(self, offer: Callable[[ChatLine], None], reject: Callable[[ChatLine, str], None],
                 templates: Templates = Templates(), free_gifts: bool = False,
                 retract: Callable[[Retract], None] = lambda r: None):
        self.offer, self.reject, self.retract = offer, reject, retract
        self.templates = templates
        self.free_gifts = free_gifts
        self.unknown: set[str] = set()

    def handle(self, command: dict) -> None:
        # "DANMU_MSG:4:0:2:2:2:0": since 2019 a command may carry parameters after a colon
        cmd = str(command.get("cmd", "")).split(":", 1)[0]
        handler = self._HANDLERS.get(cmd)
        if handler is None:
            self.unknown.add(cmd)
            return
        try:
            handler(self, command)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # one odd command (a changed shape) costs that command, not the connection
            log.debug("bilibili: cannot read a %s command (%s: %s)", cmd, type(exc).__name__, exc)

    def _danmaku(self, command: dict) -> None:
        info = command["info"]
        line = ChatLine(str(info[2][1]), str(info[1]))
        if info[0][12] == DANMAKU_EMOTICON:
            self.reject(line, "emoticon")
        else:
            self.offer(line)

    def _gift(self, command: dict) -> None:
        d = command["data"]
        t = self.templates
        text = t.render(t.gift, **{"from": d["uname"]}, gift=d["giftName"], num=d["num"],
                        price=_yuan(d["total_coin"]), text="")
        line = ChatLine(d["uname"], text, "high")
        # silver-coin gifts are free and arrive in floods; paid (gold) ones are what a streamer thanks
        if d.get("coin_type") != "gold" and not self.free_gifts:
            self.reject(line, "free_gift")
        else:
            self.offer(line)

    def _guard(self, command: dict) -> None:
        d = command["data"]
        t = self.templates
        text = t.render(t.guard, **{"from": d["username"]}, gift=d["gift_name"], num=d["num"],
                        price=_yuan(d["price"] * d["num"]), text="")
        self.offer(ChatLine(d["username"], text, "high"))

    def _super_chat(self, command: dict) -> None:
        d = command["data"]
        t = self.templates
        uname = d["user_info"]["uname"]
        gift = (d.get("gift") or {}).get("gift_name", "醒目留言")
        text = t.render(t.superchat, **{"from": uname}, gift=gift, num=1, price=d["price"], text=d["message"])
        self.offer(ChatLine(uname, text, "high", superchat_id(d["id"]) if "id" in d else None))

    def _super_chat_deleted(self, command: dict) -> None:
        for sc in command["data"]["ids"]:
            self.retract(Retract(id=superchat_id(sc)))

    def _blocked(self, command: dict) -> None:
        # a room admin blocked (muted) a user: what they said and is still waiting goes too
        data = command.get("data") or {}
        name = data.get("uname") or command.get("uname")
        if name:
            self.retract(Retract(sender=str(name)))

    _HANDLERS = {"DANMU_MSG": _danmaku, "SEND_GIFT": _gift, "GUARD_BUY": _guard,
                 "SUPER_CHAT_MESSAGE": _super_chat, "SUPER_CHAT_MESSAGE_DELETE": _super_chat_deleted,
                 "ROOM_BLOCK_MSG": _blocked}


def _yuan(gold_coins: int) -> str:
    """Bilibili prices gold gifts in coins, 1000 to the yuan."""
    return f"{gold_coins / 1000:g}"


class AuthRefused(ConnectionError):
    """The message server refused our auth packet (a stale key): look the room up again."""


class BilibiliBridge:
    def __init__(self, live_room: int, sink: SpeakSink, *, templates: Templates = Templates(),
                 free_gifts: bool = False, uid: int = 0, sessdata: str | None = None,
                 backoff: Backoff | None = None, server: str | None = None):
        """`server`: a message server's websocket URL to use as is, without the HTTP room lookup
        (and without a key); for tests and for a room id that is already the long one."""
        if live_room <= 0:
            raise ValueError(f"not a Bilibili live room id: {live_room}")
        self.live_room = live_room
        self.sink = sink
        self.chat = BilibiliChat(sink.offer, sink.reject, templates, free_gifts, sink.retract)
        self.uid = uid
        self.sessdata = sessdata
        self.backoff = backoff or Backoff(2.0, 120.0)
        self.server = server
        self.connections = 0  # authenticated connections; tests wait on it growing
        self.popularity: int | None = None  # from the last heartbeat reply
        self.heartbeat_replies = 0
        self.bad_frames = 0

    async def run(self) -> None:
        """Read the live room until cancelled, reconnecting whenever the connection ends."""
        import aiohttp

        # a logged-in cookie (SESSDATA) is what makes Bilibili send real user names
        cookies = {"SESSDATA": self.sessdata} if self.sessdata else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), cookies=cookies,
                                         headers={"User-Agent": USER_AGENT}) as http:
            lookup: tuple[int, str | None, list[str]] | None = None
            attempt = 0
            while True:
                if lookup is None:
                    lookup = await self._lookup(http)
                room_id, key, servers = lookup
                url = servers[attempt % len(servers)]
                before = self.connections
                try:
                    await self._read(http, url, room_id, key)
                    reason = "closed by the server"
                except AuthRefused as exc:
                    lookup, reason = None, str(exc)  # a fresh key next time
                except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as exc:
                    reason = str(exc) or type(exc).__name__
                if self.connections > before:
                    self.backoff.reset()
                    attempt = 0
                else:
                    attempt += 1
                delay = self.backoff.next_delay()
                log.warning("bilibili: live room %d: %s; reconnecting in %.1f s", self.live_room, reason, delay)
                await asyncio.sleep(delay)

    async def _lookup(self, http) -> tuple[int, str | None, list[str]]:
        """(the long room id, the auth key, message server URLs); without the HTTP API the room id
        as given, no key, and the default server (which accepts that, with fewer details)."""
        if self.server is not None:
            return self.live_room, None, [self.server]
        try:
            async with http.get(ROOM_INIT_URL, params={"id": self.live_room}) as resp:
                body = await resp.json(content_type=None)
            room_id = int(body["data"]["room_id"]) if body.get("code") == 0 else self.live_room
            async with http.get(DANMU_INFO_URL, params={"id": room_id, "type": 0}) as resp:
                body = await resp.json(content_type=None)
            if body.get("code") != 0:
                raise ValueError(f"getDanmuInfo answered code {body.get('code')}: {body.get('message')}")
            data = body["data"]
            servers = [f"wss://{h['host']}:{h.get('wss_port', 443)}/sub" for h in data.get("host_list") or []]
            return room_id, data.get("token"), servers or [DEFAULT_SERVER]
        except Exception as exc:  # noqa: BLE001 - any failure of the web API: the default server still works
            log.warning("bilibili: room lookup failed (%s); using the default server without a key", exc)
            return self.live_room, None, [DEFAULT_SERVER]

    async def _read(self, http, url: str, room_id: int, key: str | None) -> None:
        import aiohttp

        async with http.ws_connect(url, receive_timeout=HEARTBEAT_S + 10, heartbeat=None) as ws:
            await ws.send_bytes(auth_packet(room_id, key, self.uid))
            authed = False
            beat: asyncio.Task | None = None
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        continue
                    try:
                        packets = decode(msg.data)
                    except PacketError as exc:
                        self.bad_frames += 1
                        log.debug("bilibili: a frame that is not a packet run: %s", exc)
                        continue
                    for packet in packets:
                        if packet.op == Op.AUTH_REPLY and not authed:
                            try:
                                code = packet.json().get("code")
                            except ValueError:  # PacketError too
                                code = None
                            if code != 0:
                                raise AuthRefused(f"auth refused (code {code})")
                            authed = True
                            self.connections += 1
                            metrics.CONNECTIONS.labels(self.sink.bridge).inc()
                            log.info("bilibili: connected to live room %d", room_id)
                            beat = asyncio.create_task(self._heartbeats(ws))
                        elif packet.op == Op.HEARTBEAT_REPLY:
                            self.popularity = packet.popularity
                            self.heartbeat_replies += 1
                        elif packet.op == Op.MESSAGE:
                            try:
                                for command in commands([packet]):
                                    self.chat.handle(command)
                            except (PacketError, ValueError) as exc:
                                log.debug("bilibili: a message that is not a JSON command: %s", exc)
            finally:
                if beat is not None:
                    beat.cancel()

    async def _heartbeats(self, ws) -> None:
        try:
            while not ws.closed:
                await ws.send_bytes(heartbeat_packet())
                await asyncio.sleep(HEARTBEAT_S)
        except (ConnectionError, OSError):  # the reader sees the connection end and reconnects
            pass
