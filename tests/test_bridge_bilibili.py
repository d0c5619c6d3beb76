"""Bilibili live danmaku: Bilibili cannot be reached from here, so raw commands as Bilibili
sends them (the documented DANMU_MSG / SEND_GIFT / GUARD_BUY / SUPER_CHAT_MESSAGE shapes) go
through blivedm's own dispatch and message classes (`BaseHandler.handle` →
`DanmakuMessage.from_command`, ...) into our handler; what comes out is checked as `synthesize`
bodies, and once against the real agent (gift lines are `high` and jump the queue).
"""

from __future__ import annotations

import pytest

blivedm = pytest.importorskip("blivedm")

from bridges.bilibili import BilibiliChat, Templates  # noqa: E402
from bridges.lines import ChatLine  # noqa: E402
from bridges.sink import AdminToken, SpeakSink  # noqa: E402
from tests.conftest import start_agent, stop_agent  # noqa: E402


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

    def offer(self, line: ChatLine) -> None:
        self.offered.append(line)

    def reject(self, line: ChatLine, reason: str) -> None:
        self.rejected.append((line, reason))


@pytest.fixture
async def live_client():
    # an unstarted client: blivedm passes it to handlers; nothing here touches the network
    client = blivedm.BLiveClient(21452505)
    yield client
    await client.close()


async def test_danmaku_become_normal_lines_with_the_sender(live_client):
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject)
    await chat.handle(live_client, danmu_msg("观众甲", "主播晚上好"))
    await chat.handle(live_client, danmu_msg("viewer2", "hello", suffix=":4:0:2:2:2:0"))  # cmd with parameters
    assert [line.synthesize_body() for line in got.offered] == [
        {"text": "主播晚上好", "from": "观众甲"}, {"text": "hello", "from": "viewer2"}]


async def test_a_sticker_is_not_read(live_client):
    got = Collected()
    await BilibiliChat(got.offer, got.reject).handle(live_client, danmu_msg("观众甲", "[dog]", dm_type=1))
    assert got.offered == [] and got.rejected == [(ChatLine("观众甲", "[dog]"), "emoticon")]


async def test_gifts_guards_and_super_chats_are_high_priority_with_their_templates(live_client):
    got = Collected()
    chat = BilibiliChat(got.offer, got.reject)
    await chat.handle(live_client, send_gift("观众乙", "牛哇牛哇", 5, 100))
    await chat.handle(live_client, guard_buy("观众丁"))
    await chat.handle(live_client, super_chat("观众丙", "主播加油", 30))
    await chat.handle(live_client, send_gift("观众戊", "辣条", 10, 100, coin_type="silver"))  # free: not read
    assert [line.synthesize_body() for line in got.offered] == [
        {"text": "送出5个牛哇牛哇", "from": "观众乙", "priority": "high"},
        {"text": "开通了舰长", "from": "观众丁", "priority": "high"},
        {"text": "30元醒目留言：主播加油", "from": "观众丙", "priority": "high"},
    ]
    assert [(line.sender, reason) for line, reason in got.rejected] == [("观众戊", "free_gift")]


async def test_templates_are_configurable(live_client):
    got = Collected()
    templates = Templates(gift="{from} sent {num} {gift} worth {price} yuan", superchat="{from} paid {price}: {text}")
    chat = BilibiliChat(got.offer, got.reject, templates, free_gifts=True)
    await chat.handle(live_client, send_gift("amy", "辣条", 10, 100, coin_type="silver"))
    await chat.handle(live_client, super_chat("bo", "great stream", 50))
    assert [line.text for line in got.offered] == ["amy sent 10 辣条 worth 1 yuan", "bo paid 50: great stream"]


async def test_a_gift_jumps_ahead_of_queued_danmaku_in_a_real_room(live_client):
    running = await start_agent()
    peer = await running.client("bili-room")
    sink = SpeakSink(running.base_url, "bili-room", AdminToken(api_key="devkey", api_secret="secret"),
                     bridge="bilibili")
    chat = BilibiliChat(sink.offer, sink.reject)
    try:
        await chat.handle(live_client, danmu_msg("amy", "hello one, this line plays first"))
        await chat.handle(live_client, danmu_msg("bo", "hello two"))
        await chat.handle(live_client, send_gift("cy", "flowers", 3, 1000))
        await sink.drain()
        assert sink.counts["spoken"] == 3, sink.counts
        queued = [e["id"] for e in peer.events_of("queued")]
        assert len(queued) == 3  # in the order they were posted: amy, bo, cy's gift
        for uid in queued:
            await peer.wait_event("finished", id=uid, timeout=30)
        started = [e["id"] for e in peer.events_of("started")]
        assert started == [queued[0], queued[2], queued[1]]
    finally:
        await sink.close()
        await peer.close()
        await stop_agent(running)
