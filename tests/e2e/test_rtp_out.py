"""The agent's own RTP sending (`agent.transports.aiortc_fast`), checked at a real aiortc peer:
the direct path builds headers itself, so the wire format is asserted field by field."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from agent.client import decode_opus, rms_db
from agent.transports.aiortc_fast import RtpOut

pytestmark = pytest.mark.e2e

TEXT = "One short sentence. And then another one after a pause."


def _answer_ssrc_and_pt(sdp: str) -> tuple[int, int]:
    ssrc = int(re.search(r"^a=ssrc:(\d+) ", sdp, re.M).group(1))
    pt = int(re.search(r"^a=rtpmap:(\d+) opus/48000", sdp, re.M | re.I).group(1))
    return ssrc, pt


async def _speak_twice(c) -> None:
    """Two utterances with an idle gap between them; returns once every packet has arrived."""
    expected = 0
    for uid in ("a", "b"):
        c.send({"type": "synthesize", "id": uid, "text": TEXT})
        finished = await c.wait_event("finished", id=uid)
        expected += -(-finished["audio_ms"] // 20)
    while len(c.packets) < expected:
        await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)


async def test_direct_rtp_is_well_formed(running_agent, clients):
    c = await clients("rtp-direct")
    session = next(iter(running_agent.agent.webrtc.sessions.values()))
    assert session.audio is not None and session.audio.direct is True, "loopback peers take the direct path"
    await _speak_twice(c)
    ssrc, pt = _answer_ssrc_and_pt(c.pc.remoteDescription.sdp)
    packets = c.packets
    assert {p.ssrc for p in packets} == {ssrc}
    assert {p.payload_type for p in packets} == {pt}
    # sequence numbers without a gap across both utterances (and the idle time between them)
    seqs = [p.sequence for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:])), seqs
    # timestamps advance one 20 ms frame per packet inside a talkspurt; the marker bit opens one
    steps = [(b.timestamp - a.timestamp) % 2**32 for a, b in zip(packets, packets[1:])]
    talkspurts = [i + 1 for i, s in enumerate(steps) if s != 960]
    assert packets[0].marker == 1
    assert [i for i, p in enumerate(packets) if p.marker][1:] == talkspurts
    assert rms_db(decode_opus([p.payload for p in packets])) > -40


def test_marker_bit_opens_each_talkspurt():
    from agent.transports.webrtc import OpusRoomSink

    class Out:
        def __init__(self):
            self.sent = []

        def send(self, payload, timestamp, marker, ntp):
            self.sent.append((timestamp // 960, marker))

        def stop(self):
            pass

    sink = OpusRoomSink(room=None, bitrate=32000)
    out = sink.outputs["peer"] = Out()
    for slot in (10, 11, 12, 20, 21):
        sink.send_frame(np.zeros(960, np.int16), slot)
    assert out.sent == [(10, True), (11, False), (12, False), (20, True), (21, False)]


async def test_direct_rtp_feeds_the_rtcp_sender_reports(running_agent, clients):
    c = await clients("rtp-sr")
    await _speak_twice(c)
    sent = 0
    for _ in range(50):  # aiortc sends a report every 0.5-1.5 s: poll its stats for one
        stats = await c.pc.getStats()
        sent = max((s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"), default=0)
        if sent >= len(c.packets):
            break
        await asyncio.sleep(0.1)
    assert sent == len(c.packets), "the sender report counts every packet sent"


async def test_peers_without_a_direct_path_hear_speech_through_aiortc(running_agent, clients, monkeypatch):
    def no_direct(self, parameters) -> None:  # as on another aiortc version or a relayed ICE pair
        self.direct = False

    monkeypatch.setattr(RtpOut, "_go_direct", no_direct)
    c = await clients("rtp-fallback")
    session = next(iter(running_agent.agent.webrtc.sessions.values()))
    assert session.audio.direct is False
    c.send({"type": "synthesize", "id": "x", "text": TEXT})
    finished = await c.wait_event("finished", id="x")
    expected = -(-finished["audio_ms"] // 20)
    while len(c.packets) < expected:
        await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)
    assert rms_db(decode_opus([p.payload for p in c.packets])) > -40


async def test_sender_reports_pause_while_the_room_is_silent():
    class Sender:  # the two methods RtpOut wraps
        def __init__(self):
            self.reports = []

        async def send(self, parameters):
            pass

        async def _send_rtcp(self, packets):
            self.reports.append(packets)

    sender = Sender()
    out = RtpOut(sender, track=None)
    out.direct = True
    await sender._send_rtcp(["SR 1"])
    assert sender.reports == [], "nothing sent yet: nothing to report"
    out._packets = 5  # as after five packets
    await sender._send_rtcp(["SR 2"])
    await sender._send_rtcp(["SR 3"])  # silent since the last report
    assert sender.reports == [["SR 2"]]
    out.direct = None  # stopped: the BYE goes out whatever was sent
    await sender._send_rtcp(["BYE"])
    assert sender.reports == [["SR 2"], ["BYE"]]


async def test_audio_follows_a_pair_nominated_after_media_started(running_agent, clients):
    """A controlling browser may nominate another candidate pair once media flows (Chromium
    did, intermittently, in the demo test): the direct path must follow it, not go silent."""
    import copy

    c = await clients("rtp-renominate")
    session = next(iter(running_agent.agent.webrtc.sessions.values()))
    nominated = session.audio._pairs
    nominated[1] = copy.copy(nominated[1])  # what aioice does on a new nomination: a new pair object
    c.send({"type": "synthesize", "id": "x", "text": TEXT})
    finished = await c.wait_event("finished", id="x")
    expected = -(-finished["audio_ms"] // 20)
    while len(c.packets) < expected:
        await c.wait_packet(c.packets[-1].arrival if c.packets else 0.0, timeout=5)
    assert session.audio.direct is True and session.audio._pair is nominated[1]
