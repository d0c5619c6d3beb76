"""Bilibili live danmaku: Bilibili cannot be reached from here. Raw commands as Bilibili sends
them (the DANMU_MSG / SEND_GIFT / GUARD_BUY / SUPER_CHAT_MESSAGE shapes of the community's public
descriptions) go through our handler; packets are built byte for byte per the public protocol
description (16-byte header; JSON, zlib and brotli bodies; several commands per frame; heartbeat
replies with the popularity) and parsed back into those commands; a websocket double of the
message server (auth, heartbeat replies, compressed frames, a dropped connection) feeds the bridge,
which posts to the real agent.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib

import brotli
import pytest
from aiohttp import WSMsgType, web

from bridges.backoff import Backoff
from bridges.bilibili import BilibiliBridge, BilibiliChat, Templates, superchat_id
from bridges.bilibili_packets import PacketError, commands, decode
from bridges.lines import ChatLine, Retract
from bridges.sink import AdminToken, SpeakSink
from tests.conftest import start_agent, stop_agent


def danmu_msg(uname: str, text: str, *, uid: int = 12345, dm_type: int = 0, suffix: str = "") -> dict:
    """A DANMU_MSG command: `info` is a positional array (info[0] display, [1] text, [2] user, [3] medal,
    [4] user level, [5] titles, [7] guard level)."""
    emoticon = {"emoticon_unique": "official_13", "url": "https://i0.hdslb.com/x.png", "width": 183, "height": 60}
    return {"cmd": "DANMU_MSG" + suffix, "info": [
        [0, 1, 25, 16777215, 1700000000000, 1234567890, 0, "a1b2c3d4", 0, 0, 0, "", dm_type,
         emoticon if dm_type == 1 else "{}", "{}", {"mode": 0, "show_player_type": 0, "extra": "{}"}],
        text,
        [uid, uname, 0, 0, 0, 10000, 1, ""],
        [12, "粉丝团", "主播", 21452505, 1725515, "", 0],
        [15, 0, 6406234, ">50000"],
        ["", ""],
        0, 0, None,
        {"ts": 1700000000, "ct": "A1B2C3D4"},
        0, 0, None, None, 0, 105,
    ]}


def send_gift(uname: str, gift: str, num: int, price: int, coin_type: str = "gold") -> dict:
    return {"cmd": "SEND_GIFT", "data": {
        "giftName": gift, "num": num, "uname": uname, "face": "https://i0.hdslb.com/face.jpg", "guard_level": 0,
        "uid": 222, "timestamp": 1700000001, "giftId": 31036, "giftType": 0, "action": "投喂", "price": price,
        "rnd": "1700000001123", "coin_type": coin_type, "total_coin": price * num, "tid": "1700000001120100001"}}


def guard_buy(username: str) -> dict:
    return {"cmd": "GUARD_BUY", "data": {
        "uid": 444, "username": username, "guard_level": 3, "num": 1, "price": 198000, "gift_id": 10003,
        "gift_name": "舰长", "start_time": 1700000003, "end_time": 1700000003}}


def super_chat(uname: str, message: str, price: int) -> dict:
    return {"cmd": "SUPER_CHAT_MESSAGE", "data": {
        "price": price, "message": message, "message_trans": "", "start_time": 1700000002, "end_time": 1700000062,
        "time": 60, "id": 4567, "gift": {"gift_id": 12000, "gift_name": "醒目留言", "num": 1}, "uid": 333,
        "user_info": {"uname": uname, "face": "https://i0.hdslb.com/face.jpg", "guard_level": 3, "user_level": 20,
                      "is_main_vip": 0, "is_vip": 0, "is_svip": 0, "manager": 0, "title": "0", "level_color": "#61c05a"},
        "background_bottom_color": "#2A60B2", "background_color": "#EDF5FF", "background_icon": "",
        "background_image": "https://i0.hdslb.com/bg.png", "background_price_color": "#7497CD"}}


class Collected:
    def __init__(self):
        self.offered: list[ChatLine] = []
        self.rejected: list[tuple[ChatLine, str]] = []
        self.retracted: list[Retract] = []

    def retract(self, what: Retract) -> None:
        self.retracted.append(what)

    def offer(self, line: ChatLine) -> None:
        self.offered.append(line)

    def reject(self, line: ChatLine, reason: str) -> None:
        self.rejected.append((line, reason))


async def test_danmaku_become_normal_lines_with_the_sender():
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject)
    chat.handle(danmu_msg("观众甲", "主播晚上好"))
    chat.handle(danmu_msg("viewer2", "hello", suffix=":4:0:2:2:2:0"))  # cmd with parameters
    assert [line.synthesize_body() for line in got.offered] == [
        {"text": "主播晚上好", "from": "观众甲"}, {"text": "hello", "from": "viewer2"}]


async def test_a_sticker_is_not_read():
    got = Collected()
    BilibiliChat(got.offer, got.reject).handle(danmu_msg("观众甲", "[dog]", dm_type=1))
    assert got.offered == [] and got.rejected == [(ChatLine("观众甲", "[dog]"), "emoticon")]


async def test_gifts_guards_and_super_chats_are_high_priority_with_their_templates():
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject)
    chat.handle(send_gift("观众乙", "牛哇牛哇", 5, 100))
    chat.handle(guard_buy("观众丁"))
    chat.handle(super_chat("观众丙", "主播加油", 30))
    chat.handle(send_gift("观众戊", "辣条", 10, 100, coin_type="silver"))  # free: not read
    assert [line.synthesize_body() for line in got.offered] == [
        {"text": "送出5个牛哇牛哇", "from": "观众乙", "priority": "high"},
        {"text": "开通了舰长", "from": "观众丁", "priority": "high"},
        {"text": "30元醒目留言：主播加油", "from": "观众丙", "priority": "high", "id": "bili-sc-4567"},
    ]
    assert [(line.sender, reason) for line, reason in got.rejected] == [("观众戊", "free_gift")]


async def test_templates_are_configurable():
    got = Collected()
    templates = Templates(gift="{from} sent {num} {gift} worth {price} yuan", superchat="{from} paid {price}: {text}")
    chat = BilibiliChat(got.offer, got.reject, templates, free_gifts=True)
    chat.handle(send_gift("amy", "辣条", 10, 100, coin_type="silver"))
    chat.handle(super_chat("bo", "great stream", 50))
    assert [line.text for line in got.offered] == ["amy sent 10 辣条 worth 1 yuan", "bo paid 50: great stream"]


async def test_moderation_a_deleted_super_chat_and_a_blocked_user_are_retracted():
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject, retract=got.retract)
    chat.handle({"cmd": "SUPER_CHAT_MESSAGE_DELETE", "data": {"ids": [4567, 4568]}, "roomid": 21452505})
    chat.handle({"cmd": "ROOM_BLOCK_MSG", "data": {"dmscore": 30, "operator": 1, "uid": 555, "uname": "捣乱的人"},
                 "uid": "555", "uname": "捣乱的人"})
    chat.handle({"cmd": "SEND_GIFT", "data": {"giftName": "broken"}})  # a changed shape: that command only
    chat.handle({"cmd": "INTERACT_WORD", "data": {}})  # entries, ranks, ...: not chat
    assert got.retracted == [Retract(id=superchat_id(4567)), Retract(id=superchat_id(4568)),
                             Retract(sender="捣乱的人")]
    assert got.offered == [] and "INTERACT_WORD" in chat.unknown


# -- packets, byte for byte as the public protocol description lays them out ---------------------

def packet(op: int, ver: int, body: bytes, *, length: int | None = None) -> bytes:
    """u32 length, u16 header length 16, u16 protocol version, u32 operation, u32 sequence 1, body."""
    return struct.pack(">IHHII", 16 + len(body) if length is None else length, 16, ver, op, 1) + body


def message(command: dict, ver: int = 0) -> bytes:
    return packet(5, ver, json.dumps(command, ensure_ascii=False).encode())


def test_plain_zlib_and_brotli_frames_with_several_commands_parse_into_their_commands():
    cmds = [danmu_msg("观众甲", "第一条"), danmu_msg("观众乙", "第二条"), send_gift("观众丙", "小花花", 2, 100)]
    plain = message(cmds[0])
    zlibbed = packet(5, 2, zlib.compress(b"".join(message(c) for c in cmds)))
    brotlied = packet(5, 3, brotli.compress(b"".join(message(c) for c in cmds)))
    assert list(commands(decode(plain))) == cmds[:1]
    assert list(commands(decode(zlibbed))) == cmds
    assert list(commands(decode(brotlied))) == cmds
    # a frame may carry a compressed run and a plain packet back to back
    assert list(commands(decode(brotlied + plain))) == cmds + cmds[:1]
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject)
    for command in commands(decode(zlibbed)):
        chat.handle(command)
    assert [(line.sender, line.text, line.priority) for line in got.offered] == [
        ("观众甲", "第一条", "normal"), ("观众乙", "第二条", "normal"), ("观众丙", "送出2个小花花", "high")]


def test_heartbeat_reply_is_the_popularity_even_with_the_echo_after_it():
    reply = packet(3, 1, (123456).to_bytes(4, "big"))
    assert [p.popularity for p in decode(reply)] == [123456]
    # the live server states a length of 20 and appends the body of our heartbeat after it
    echoed = packet(3, 1, (7).to_bytes(4, "big"), length=20) + b"[object Object]"
    assert [(p.op, p.popularity) for p in decode(echoed)] == [(3, 7)]
    assert decode(packet(8, 1, b'{"code":0}'))[0].json() == {"code": 0}


def test_broken_frames_are_refused_not_guessed():
    with pytest.raises(PacketError):
        decode(b"\x00\x00\x00\x20\x00\x10")  # shorter than a header
    with pytest.raises(PacketError):
        decode(packet(5, 0, b"{}", length=999))  # states more than the frame holds
    with pytest.raises(PacketError):
        decode(packet(5, 2, b"not zlib at all"))
    with pytest.raises(PacketError):
        decode(packet(5, 3, b"not brotli either"))
    bomb = packet(5, 2, zlib.compress(b" " * (9 << 20)))  # 9 MiB of spaces in ~9 KiB
    with pytest.raises(PacketError):
        decode(bomb)


# -- the bridge against a message server double, into the real agent -----------------------------

class MessageServerDouble:
    """The websocket end of Bilibili's message server as described publicly: the first frame must
    be an auth packet (op 7) for the room, answered with op 8 {"code": 0}; each heartbeat (op 2)
    is answered with op 3 and the popularity; pushed frames go to every authenticated client."""

    def __init__(self, room_id: int, popularity: int = 4321):
        self.room_id, self.popularity = room_id, popularity
        self.sockets: list[web.WebSocketResponse] = []
        self.auths: list[dict] = []
        self.heartbeats = 0
        self.authed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/sub", self._sub)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no public getter
        self.url = f"ws://127.0.0.1:{port}/sub"

    async def close(self) -> None:
        await self.kick()
        await self._runner.cleanup()

    async def wait_authed(self, count: int) -> None:
        async with asyncio.timeout(15):
            async with self.authed:
                await self.authed.wait_for(lambda: len(self.auths) >= count)

    async def push(self, frame: bytes) -> None:
        for ws in list(self.sockets):
            await ws.send_bytes(frame)

    async def kick(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    async def _sub(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        (auth,) = decode(first.data)
        body = auth.json()
        if auth.op != 7 or body.get("roomid") != self.room_id:
            await ws.send_bytes(packet(8, 1, b'{"code":-101}'))
            await ws.close()
            return ws
        await ws.send_bytes(packet(8, 1, b'{"code":0}'))
        self.sockets.append(ws)
        async with self.authed:
            self.auths.append(body)
            self.authed.notify_all()
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and decode(msg.data)[0].op == 2:
                self.heartbeats += 1
                await ws.send_bytes(packet(3, 1, self.popularity.to_bytes(4, "big"), length=20) + b"[object Object]")
        self.sockets.remove(ws)
        return ws


async def test_the_bridge_reads_compressed_frames_follows_moderation_and_reconnects():
    room = 21452505
    server = MessageServerDouble(room)
    await server.start()
    running = await start_agent()
    peer = await running.client("bili-room")
    sink = SpeakSink(running.base_url, "bili-room", AdminToken(api_key="devkey", api_secret="secret"),
                     bridge="bilibili")
    bridge = BilibiliBridge(room, sink, server=server.url, backoff=Backoff(0.1, 0.5))
    task = asyncio.create_task(bridge.run())
    sink.start()
    try:
        await server.wait_authed(1)
        assert server.auths[0] == {"uid": 0, "roomid": room, "protover": 3, "platform": "web", "type": 2}
        long = "hello one, this line plays first and keeps the room busy for a good while. " * 3
        await server.push(packet(5, 3, brotli.compress(
            message(danmu_msg("amy", long)) + message(danmu_msg("bo", "hello two")))))
        await server.push(packet(5, 2, zlib.compress(
            message(send_gift("cy", "flowers", 3, 1000)) + message(super_chat("dee", "delete me", 30))
            + message(danmu_msg("eve", "spam one")) + message(danmu_msg("eve", "spam two")))))
        queued = [e["id"] for e in await _queued_after(peer, 6)]
        assert queued[3] == superchat_id(4567) and len(queued) == 6
        await server.push(message({"cmd": "SUPER_CHAT_MESSAGE_DELETE", "data": {"ids": [4567]}}))
        await server.push(message({"cmd": "ROOM_BLOCK_MSG", "data": {"uid": 9, "uname": "eve"}, "uname": "eve"}))
        await peer.wait_event("interrupted", id=superchat_id(4567), timeout=20)
        for uid in queued[4:]:
            await peer.wait_event("interrupted", id=uid, timeout=20)
        for uid in (queued[0], queued[1], queued[2]):
            await peer.wait_event("finished", id=uid, timeout=60)
        started = [e["id"] for e in peer.events_of("started")]
        assert started == [queued[0], queued[2], queued[1]]  # the paid gift went ahead of bo's danmaku
        assert bridge.popularity == 4321 and server.heartbeats >= 1

        await server.kick()  # the server drops us: the bridge comes back by itself
        await server.wait_authed(2)
        await server.push(message(danmu_msg("fay", "back again")))
        await peer.wait_event("finished", id=(await _queued_after(peer, 7))[6]["id"], timeout=30)
        assert bridge.connections == 2 and sink.counts["spoken"] == 7 and not peer.events_of("error")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        await peer.close()
        await stop_agent(running)
        await server.close()


async def _queued_after(peer, n: int) -> list[dict]:
    async with asyncio.timeout(20):
        while len(peer.events_of("queued")) < n:
            await asyncio.sleep(0.02)
    return peer.events_of("queued")
