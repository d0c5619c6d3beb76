"""The one module that touches aiortc's (and aioice's) private internals, behind a probe.

Three fast paths, each with aiortc's public path as the fallback:

- RTP out (`RtpOut`): aiortc sends through a task per sender (a packet handed to the track
  wakes it; it wraps the packet, serializes header extensions and awaits three layers of
  coroutines down to the UDP socket): at hundreds of rooms a fifth of the agent's CPU and a
  task switch per packet. The direct path builds the RTP header once per peer (with aiortc's
  own serializer: negotiated payload type and `mid`), then per packet patches sequence and
  timestamp, protects with the DTLS transport's SRTP session and `sendto`s on aioice's
  nominated pair; it keeps the sender's counters right for RTCP sender reports and skips
  reports while a room is silent. Public path: packets through `PacketTrack` and aiortc's
  own sender.
- Data channel out (`send_text`): `RTCDataChannel.send` schedules a task per message that
  awaits four layers of coroutines none of which suspends; the fast path runs aiortc's own
  SCTP send coroutine to completion at once (when nothing waits in aiortc's queues, so
  order holds). Public path: `channel.send`.
- Microphone in (`listen_to`, barge-in): the fast path replaces the receiver's RTP handler
  so Opus payloads go straight to the listener, which drops them undecoded while barge-in
  is off. Public path: read the track (`recv()`, aiortc decodes) and feed PCM.

`probe()` builds real aiortc objects once (no network), checks every private attribute and
call shape used, and logs one line; whatever differs (another aiortc or aioice version)
turns that fast path off for the process. `PRIVATE` names everything this module touches.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import logging
import random
import struct
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..audio import SAMPLE_RATE

log = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_NTP_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_SEQ_TS = struct.Struct("!HI")

# Every private name used, by fast path: (where, attribute, parameters of a call, or None)
PRIVATE: dict[str, list[tuple[str, str, tuple[str, ...] | None]]] = {
    "rtp": [
        ("sender", "_send_rtcp", ("packets",)),
        ("sender", "send", ("parameters",)),
        ("sender", "_ssrc", None),
        ("sender", "_RTCRtpSender__ntp_timestamp", None),
        ("sender", "_RTCRtpSender__rtp_timestamp", None),
        ("sender", "_RTCRtpSender__octet_count", None),
        ("sender", "_RTCRtpSender__packet_count", None),
        ("dtls", "_state", None),
        ("dtls", "_tx_srtp", None),
        ("ice", "_connection", None),
        ("connection", "_nominated", None),
        ("pair", "protocol", None),
        ("pair", "remote_addr", None),
    ],
    "sctp": [
        ("sctp", "_association_state", None),
        ("sctp", "_data_channel_queue", None),
        ("sctp", "_reconfig_queue", None),
        ("sctp", "_remote_max_message_size", None),
        ("sctp", "_send", ("stream_id", "pp_id", "user_data", "expiry", "max_retransmits", "ordered")),
    ],
    "rtp_tap": [
        ("receiver", "_handle_rtp_packet", ("packet", "arrival_time_ms")),
    ],
}


@dataclass(frozen=True)
class FastPaths:
    rtp: bool
    sctp: bool
    rtp_tap: bool
    missing: dict[str, list[str]] = field(default_factory=dict)


_probed: FastPaths | None = None


def fast_paths() -> FastPaths:
    """What this aiortc allows, probed on first use and then remembered for the process."""
    global _probed
    if _probed is None:
        _probed = probe()
    return _probed


def reset_probe() -> None:
    """Forget the probe (tests that change what it finds)."""
    global _probed
    _probed = None


def _objects() -> dict[str, object]:
    from aioice.ice import CandidatePair, StunProtocol
    from aioice.candidate import Candidate
    from aiortc import (RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver,
                        RTCSctpTransport)

    ice = RTCIceTransport(RTCIceGatherer())
    dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
    remote = Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
    objects: dict[str, object] = {
        "ice": ice, "dtls": dtls, "sender": RTCRtpSender("audio", dtls), "receiver": RTCRtpReceiver("audio", dtls),
        "sctp": RTCSctpTransport(dtls), "pair": CandidatePair(StunProtocol(None), remote),
    }
    objects["connection"] = getattr(ice, "_connection", None)
    return objects


def _check(obj: object, attr: str, params: tuple[str, ...] | None) -> bool:
    if obj is None or not hasattr(obj, attr):
        return False
    if params is None:
        return True
    fn = getattr(obj, attr)
    if not inspect.iscoroutinefunction(fn):
        return False
    names = tuple(inspect.signature(fn).parameters)
    return names[:len(params)] == params


def probe() -> FastPaths:
    """Check every private name and call shape in `PRIVATE` on real aiortc objects; one log line."""
    import aioice
    import aiortc

    try:
        objects = _objects()
    except Exception as exc:  # aiortc's constructors changed: nothing private can be trusted
        log.warning("aiortc fast paths off (cannot build aiortc objects to probe: %s); using aiortc's public API", exc)
        return FastPaths(False, False, False, {"all": [str(exc)]})
    missing = {path: [f"{where}.{attr}" for where, attr, params in names
                      if not _check(objects.get(where), attr, params)]
               for path, names in PRIVATE.items()}
    missing = {path: names for path, names in missing.items() if names}
    found = FastPaths(rtp="rtp" not in missing, sctp="sctp" not in missing, rtp_tap="rtp_tap" not in missing,
                      missing=missing)
    versions = f"aiortc {aiortc.__version__}, aioice {getattr(aioice, '__version__', '?')}"
    if missing:
        off = "; ".join(f"{path} off (missing {', '.join(names)})" for path, names in missing.items())
        log.warning("aiortc fast paths: %s; using aiortc's public API there (%s)", off, versions)
    else:
        log.info("aiortc fast paths on: RTP out, data channel out, microphone in (%s)", versions)
    return found


# -- RTP out -------------------------------------------------------------------------------

def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what RTCP sender reports carry)."""
    return int((time.time() + _NTP_OFFSET) * (1 << 32))


class PacketTrack(MediaStreamTrack):
    """An audio track whose `recv()` hands out already-encoded Opus packets: the public path
    through aiortc's sender. On the direct path nothing is pushed and the sender's task
    sleeps in `recv()` for the whole session."""

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


_COUNTERS = tuple(f"_RTCRtpSender__{name}" for name in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count"))


class RtpOut:
    """One peer's outgoing audio: direct when aiortc and the peer's transports allow it,
    else through `track` and aiortc's sender."""

    __slots__ = ("sender", "track", "direct", "_header", "_seq", "_ts0", "_dtls", "_connected", "_protect",
                 "_pairs", "_pair", "_stun", "_sendto", "_addr", "_counters", "_packets", "_octets", "_reported",
                 "__weakref__")

    def __init__(self, sender: RTCRtpSender, track: PacketTrack):
        self.sender = sender
        self.track = track
        self._header = bytearray()
        self._seq = random.getrandbits(16)
        self._ts0 = random.getrandbits(32)
        self._packets = 0
        self._octets = 0
        self._reported = 0  # packets sent when the last sender report went out
        if not fast_paths().rtp:
            self.direct: bool | None = False  # aiortc's own sender from the start
            return
        # None until aiortc starts the sender (DTLS is up by then): frames before that are
        # dropped, as no peer could hear them. Then True (direct) or False (aiortc's sender).
        self.direct = None
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
        from aioice.ice import StunProtocol
        from aiortc.rtcdtlstransport import State as DtlsState
        from aiortc.rtp import HeaderExtensionsMap, RtpPacket

        sender = self.sender
        try:
            dtls = sender.transport
            connection = dtls.transport._connection
            pair = connection._nominated.get(1)
            if dtls._tx_srtp is None or pair is None or type(pair.protocol) is not StunProtocol:
                self.direct = False
                log.info("peer audio through aiortc's sender (relayed or unconnected ICE pair)")
                return
            template = RtpPacket(payload_type=parameters.codecs[0].payloadType, ssrc=sender._ssrc)
            template.extensions.mid = parameters.muxId
            extensions = HeaderExtensionsMap()
            extensions.configure(parameters)
            self._header = bytearray(template.serialize(extensions))
            self._dtls = dtls
            self._connected = DtlsState.CONNECTED
            self._protect = dtls._tx_srtp.protect
            self._pairs = connection._nominated
            self._stun = StunProtocol
            self._use_pair(pair)
            self._counters = sender.__dict__
            self.direct = True
        except AttributeError as exc:  # passed the probe, yet differs: stay on aiortc's sender
            self.direct = False
            log.warning("peer audio through aiortc's sender (no direct path: %s)", exc)

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
        if type(pair.protocol) is not self._stun:
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
        if self._dtls._state is not self._connected:
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


# -- data channel out ----------------------------------------------------------------------

def send_text(channel, data: bytes | str) -> None:
    """`channel.send(data)` as a text message, for an open channel; may raise what `send`
    raises. `data` is UTF-8 (bytes) or str: an event is encoded once for every peer."""
    sctp = channel.transport
    if data and fast_paths().sctp and channel.id is not None and not channel.maxPacketLifeTime:
        from aiortc.rtcsctptransport import WEBRTC_STRING, RTCSctpTransport

        if (sctp._association_state is RTCSctpTransport.State.ESTABLISHED and not sctp._data_channel_queue
                and not sctp._reconfig_queue):
            payload = data if isinstance(data, bytes) else data.encode()
            limit = sctp._remote_max_message_size
            if limit and len(payload) > limit:
                raise ValueError(f"Cannot send message of {len(payload)} bytes, the remote party "
                                 f"only supports messages up to {limit} bytes")
            _run(sctp._send(channel.id, WEBRTC_STRING, payload, None, channel.maxRetransmits, channel.ordered))
            return
    channel.send(data.decode() if isinstance(data, bytes) else data)  # str: a text message


def _run(coro) -> None:
    """Step a coroutine now; should it ever wait on a future, carry on when that is done
    (a minimal Task: an asyncio future's `__await__` returns its result on the next send)."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:  # what the flush task would have raised unobserved: the peer is going away
        log.debug("data channel send failed", exc_info=True)
        return
    if waiting is None:  # a bare yield (asyncio.sleep(0))
        asyncio.get_running_loop().call_soon(_run, coro)
    else:
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(lambda _: _run(coro))


# -- microphone in (barge-in) --------------------------------------------------------------

class RtpTap:
    """Stands in for `RTCRtpReceiver._handle_rtp_packet`: Opus payloads go to `feed_opus`
    (the listener drops them undecoded while barge-in is off). Nothing reaches aiortc's
    jitter buffer and decoder thread. Lost: aiortc's RTCP receiver reports and NACKs for
    this one incoming stream, which an Opus microphone does without."""

    def __init__(self, feed_opus):
        self.feed_opus = feed_opus
        self._last_seq: int | None = None

    async def __call__(self, packet, arrival_time_ms: int) -> None:
        seq = packet.sequence_number
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return  # duplicate or late: the decoder has moved on
        self._last_seq = seq
        if packet.payload:
            self.feed_opus(packet.payload)


def listen_to(receiver, track, feed_opus, feed_pcm) -> asyncio.Task | None:
    """Hand a remote audio track's audio to a listener: Opus payloads to `feed_opus` on the
    fast path (returns None), else a task reading decoded frames into `feed_pcm(pcm, rate)`."""
    if fast_paths().rtp_tap:
        receiver._handle_rtp_packet = RtpTap(feed_opus)
        return None
    return asyncio.ensure_future(_read_frames(track, feed_pcm))


async def _read_frames(track, feed_pcm) -> None:
    # aiortc's decoder gives interleaved s16 (stereo for Opus); the listener takes mono
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = frame.to_ndarray().reshape(-1)
        channels = len(frame.layout.channels)
        if channels > 1:
            pcm = pcm.reshape(-1, channels)[:, 0].copy()
        feed_pcm(np.ascontiguousarray(pcm, dtype=np.int16), frame.sample_rate)
