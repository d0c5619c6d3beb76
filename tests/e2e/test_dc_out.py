"""`send_text` (agent.transports.aiortc_fast) between two real aiortc peers on loopback: every
message arrives, in order, also past SCTP's congestion window and mixed with aiortc's own
`channel.send`; and it falls back to `channel.send` where aiortc's internals are missing."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import RTCSctpTransport

from agent.transports import aiortc_fast
from agent.transports.aiortc_fast import send_text

pytestmark = pytest.mark.e2e


@pytest.fixture
async def pair():
    """(sending channel, messages received at the other end), connected; closed afterwards."""
    local, remote = RTCPeerConnection(), RTCPeerConnection()
    channel = local.createDataChannel("tts")
    received: list[str] = []
    opened = asyncio.Event()
    channel.on("open", opened.set)

    @remote.on("datachannel")
    def on_channel(ch) -> None:
        ch.on("message", received.append)

    await local.setLocalDescription(await local.createOffer())
    await remote.setRemoteDescription(local.localDescription)
    await remote.setLocalDescription(await remote.createAnswer())
    await local.setRemoteDescription(remote.localDescription)
    await asyncio.wait_for(opened.wait(), 10)
    yield channel, received
    await asyncio.gather(local.close(), remote.close())


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_burst_past_the_congestion_window_arrives_whole_and_in_order(pair):
    channel, received = pair
    sctp = channel.transport
    # 1 KiB each: 300 KiB is far more than the initial congestion window, so most of the
    # burst waits in aiortc's outbound queue and leaves as acknowledgements come back
    sent = [f"{i:04d}" + "x" * 1020 for i in range(300)]
    for message in sent[:100]:
        send_text(channel, message)
    assert sctp._outbound_queue, "the burst should exceed the congestion window"
    for i, message in enumerate(sent[100:]):
        if i % 7 == 3:
            channel.send(message)  # aiortc's own path: what follows queues behind it
        else:
            send_text(channel, message)
    await _until(lambda: len(received) >= len(sent))
    assert received == sent


async def test_caption_sized_messages_keep_order_with_channel_send(pair):
    channel, received = pair
    sent = []
    for i in range(50):
        message = f'{{"type":"caption","n":{i}}}'
        if i % 2:
            send_text(channel, message)
        else:
            channel.send(message)
        sent.append(message)
        if i % 10 == 0:
            await asyncio.sleep(0)
    await _until(lambda: len(received) >= len(sent))
    assert received == sent


async def test_a_message_over_the_peers_limit_is_refused_like_channel_send(pair):
    channel, received = pair
    limit = channel.transport._remote_max_message_size
    assert limit, "aiortc announces a maximum message size"
    with pytest.raises(ValueError):
        send_text(channel, "x" * (limit + 1))
    send_text(channel, "after")
    await _until(lambda: received)
    assert received == ["after"]


async def test_without_aiortcs_internals_it_goes_through_channel_send(pair, monkeypatch):
    channel, received = pair
    # as aiortc would be with the SCTP queue renamed: the real probe runs and finds it missing
    monkeypatch.setitem(aiortc_fast.PRIVATE, "sctp", [("sctp", "_data_channel_queue_renamed", None)])
    aiortc_fast.reset_probe()
    try:
        assert aiortc_fast.fast_paths().sctp is False
        calls = []
        original = channel.send
        monkeypatch.setattr(channel, "send", lambda data: (calls.append(data), original(data)))
        send_text(channel, b"fallback")
        await _until(lambda: received)
        assert received == ["fallback"] and calls == ["fallback"]
    finally:
        aiortc_fast.reset_probe()
