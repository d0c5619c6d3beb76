"""A room's Opus packets to one aiortc peer, sent from the frame clock's tick itself.

aiortc sends through a task per sender: a packet handed to the track wakes that task, which
wraps it in an `RtpPacket`, serializes its header extensions, and awaits three layers of
coroutines down to the UDP socket. With hundreds of rooms that was a fifth of the agent's
CPU and a task switch per packet, and it let the packet leave whenever the loop got round
to it. `RtpOut` does the same work synchronously: the RTP header is built once per peer
(by aiortc's own serializer, so it carries the negotiated payload type and `mid`), and per
packet only the sequence number and timestamp are patched in before SRTP protection and
`sendto` on the nominated ICE pair.

It reaches into aiortc: the DTLS transport's SRTP session, aioice's nominated pair, and
the sender's counters that its RTCP sender reports carry (reports are skipped while the
room is silent: nothing new to report, and an idle room should cost next to nothing). Every one of them is checked
when the peer connects; where any is missing (another aiortc version, a TURN-relayed pair)
the peer falls back to aiortc's own sender through `PacketTrack`, so audio still flows.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import random
import struct
import time
from collections import deque

import av
from aioice.ice import StunProtocol
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from ..audio import SAMPLE_RATE

log = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_NTP_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_SEQ_TS = struct.Struct("!HI")
# RTCRtpSender's private counters, which its RTCP task puts in every sender report
_COUNTERS = tuple(f"_RTCRtpSender__{name}" for name in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count"))


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what RTCP sender reports carry)."""
    return int((time.time() + _NTP_OFFSET) * (1 << 32))


class PacketTrack(MediaStreamTrack):
    """An audio track whose `recv()` hands out already-encoded Opus packets: the fallback
    path through aiortc's sender. On the direct path nothing is pushed and the sender's
    task sleeps in `recv()` for the whole session."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._packets: deque[av.Packet] = deque(maxlen=4)  # a stuck sender never grows memory
        self._waiter: asyncio.Future | None = None

    def push(self, packet: av.Packet) -> None:
        self._packets.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> av.Packet:
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._packets.popleft()

    def stop(self) -> None:
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class RtpOut:
    """One peer's outgoing audio: direct when its transports allow it, else via `track`."""

    __slots__ = ("sender", "track", "direct", "_header", "_seq", "_ts0", "_dtls", "_protect", "_pairs", "_pair",
                 "_sendto", "_addr", "_counters", "_packets", "_octets", "_reported", "__weakref__")

    def __init__(self, sender: RTCRtpSender, track: PacketTrack):
        self.sender = sender
        self.track = track
        # None until aiortc starts the sender (DTLS is up by then): frames before that are
        # dropped, as no peer could hear them. Then True (direct) or False (aiortc's sender).
        self.direct: bool | None = None
        self._header = bytearray()
        self._seq = random.getrandbits(16)
        self._ts0 = random.getrandbits(32)
        self._packets = 0
        self._octets = 0
        self._reported = 0  # packets sent when the last sender report went out
        start = sender.send
        send_rtcp = sender._send_rtcp

        async def send_report(packets) -> None:
            # aiortc reports about every second even with nothing sent; an idle room's peers
            # (most of them, most of the time) need no report until it speaks again
            if self.direct and self._packets == self._reported:
                return
            self._reported = self._packets
            await send_rtcp(packets)

        sender._send_rtcp = send_report

        async def send(parameters) -> None:  # aiortc calls this once the DTLS handshake is done
            await start(parameters)
            self._go_direct(parameters)

        sender.send = send

    def _go_direct(self, parameters) -> None:
        sender = self.sender
        try:
            dtls = sender.transport
            connection = dtls.transport._connection
            pair = connection._nominated.get(1)
            missing = [name for name in _COUNTERS if not hasattr(sender, name)]
            if missing or dtls._tx_srtp is None or pair is None or type(pair.protocol) is not StunProtocol:
                self.direct = False
                log.info("peer audio through aiortc's sender (no direct path: %s)",
                         missing or "relayed or unconnected ICE pair")
                return
            template = RtpPacket(payload_type=parameters.codecs[0].payloadType, ssrc=sender._ssrc)
            template.extensions.mid = parameters.muxId
            extensions = HeaderExtensionsMap()
            extensions.configure(parameters)
            self._header = bytearray(template.serialize(extensions))
            self._dtls = dtls
            self._protect = dtls._tx_srtp.protect
            self._pairs = connection._nominated
            self._use_pair(pair)
            self._counters = sender.__dict__
            self.direct = True
        except AttributeError as exc:  # another aiortc: stay on its own sender
            self.direct = False
            log.info("peer audio through aiortc's sender (no direct path: %s)", exc)

    def _use_pair(self, pair) -> None:
        self._pair = pair
        self._sendto = pair.protocol.transport.sendto
        self._addr = pair.remote_addr

    def _repair(self) -> bool:
        """The nominated pair changed (a controlling browser may nominate another pair after
        media started): follow it, or hand the peer to aiortc's sender. False: drop this one."""
        pair = self._pairs.get(1)
        if pair is None:
            return False  # closing: the session ends on its own
        if type(pair.protocol) is not StunProtocol:
            self.direct = False
            return False
        self._use_pair(pair)
        return True

    def send(self, payload: bytes, timestamp: int, marker: bool, ntp: int) -> None:
        """One Opus packet with RTP timestamp `timestamp` (48 kHz units from the clock's epoch)."""
        if not self.direct:
            if self.direct is None:
                return
            packet = av.Packet(payload)
            packet.pts = timestamp
            packet.time_base = _TIME_BASE
            self.track.push(packet)
            return
        if self._dtls._state is not DtlsState.CONNECTED:
            return  # closing: the session ends on its own
        if self._pairs.get(1) is not self._pair and not self._repair():
            return
        header = self._header
        header[1] = (header[1] & 0x7F) | (marker << 7)
        rtp_timestamp = (self._ts0 + timestamp) & 0xFFFFFFFF
        _SEQ_TS.pack_into(header, 2, self._seq, rtp_timestamp)
        try:
            self._sendto(self._protect(bytes(header) + payload), self._addr)
        except Exception:  # a transport closing under us: the session's own close follows
            log.debug("direct RTP send failed", exc_info=True)
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self._packets += 1
        self._octets += len(payload)
        counters = self._counters  # what the next RTCP sender report says
        counters[_COUNTERS[0]] = ntp
        counters[_COUNTERS[1]] = rtp_timestamp
        counters[_COUNTERS[2]] = self._octets
        counters[_COUNTERS[3]] = self._packets

    def stop(self) -> None:
        self.direct = None  # nothing more goes out
        self.track.stop()
