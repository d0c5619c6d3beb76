"""Embedded rooms over plain WebRTC (aiortc), signalled with WHEP (`draft-ietf-wish-whep`,
the egress twin of WHIP, RFC 9725).

Each room encodes a frame to Opus once and sends the same payload to every peer from the
clock's tick (`RtpOut`): per peer only the RTP header, SRTP and one `sendto` remain. The
data channel labelled `tts` carries the room protocol. A peer that sends its microphone
(`sendrecv` audio) is listened to for barge-in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import dataclass

import aioice.ice
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from ..audio import FRAME_SAMPLES
from ..listening import Listener, Listening
from ..opus import make_encoder
from ..protocol import encode_event
from ..rooms import Room, RoomLimit, RoomRegistry
from ..settings import Settings, is_loopback
from .aiortc_fast import PacketTrack, RtpOut, fast_paths, listen_to, ntp_now, send_text

log = logging.getLogger(__name__)

DATA_CHANNEL_LABEL = "tts"
ICE_CONNECT_S = 15.0  # a session whose peer never connects is reaped after this
MAX_MEDIA_SECTIONS = 8


class OfferError(ValueError):
    """The SDP offer cannot be answered (HTTP 400)."""


def use_ice_addresses(addresses: list[str]) -> None:
    """Offer exactly these host candidates. aioice has no per-connection setting for this,
    so the agent sets it for the process once, from its settings."""
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: list(chosen)


def configure_ice(settings: Settings) -> None:
    # A peer that vanishes without a DTLS close is found by ICE consent checks: aioice's
    # default (every 5 s, 6 misses) reaps it in ~30 s. Checking every 2 s would find it in
    # ~15 s but measured +47 % CPU for idle rooms (0.058 -> 0.085 % of a core per peer).
    if settings.ice_addresses:
        use_ice_addresses(settings.ice_addresses)
    elif is_loopback(settings.host):
        use_ice_addresses(["127.0.0.1"])  # media never leaves loopback in dev


class OpusRoomSink:
    """A room's frames, encoded once, to every peer; its events to the data channels."""

    def __init__(self, room: Room, bitrate: int, application: str = "lowdelay", complexity: int = 0,
                 on_close=None):
        self.room = room
        self.outputs: dict[str, RtpOut] = {}
        self.channels: dict[str, object] = {}
        self._encoder = make_encoder(bitrate, application, complexity)
        self._next_slot = -1
        self._on_close = on_close  # the room closed: its sessions end
        self.packets = 0

    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        payload = self._encoder.encode(pcm)
        marker = slot != self._next_slot  # the first packet of a talkspurt (RFC 3551)
        self._next_slot = slot + 1
        self.packets += 1
        if self.outputs:
            timestamp, ntp = slot * FRAME_SAMPLES, ntp_now()  # RTP timestamps follow the clock slot
            for out in self.outputs.values():
                out.send(payload, timestamp, marker, ntp)

    def discard_buffered(self) -> int:
        return 0  # packets go straight to the peers; nothing waits downstream

    def send_event(self, data: bytes, to: str | None) -> None:
        if to is None:
            for channel in self.channels.values():
                _send(channel, data)
        else:
            channel = self.channels.get(to)
            if channel is not None:
                _send(channel, data)

    def close(self) -> None:
        for out in self.outputs.values():
            out.stop()
        self.outputs.clear()
        self.channels.clear()
        self._encoder.close()
        if self._on_close is not None:
            self._on_close(self.room)


def _send(channel, data: bytes) -> None:
    if channel.readyState == "open":
        try:
            send_text(channel, data)
        except Exception:  # a channel closing under us is the peer's problem, not the room's
            log.debug("data channel send failed", exc_info=True)


@dataclass
class WhepSession:
    id: str
    room: Room
    peer_id: str
    identity: str
    pc: RTCPeerConnection
    can_publish: bool
    audio: RtpOut | None = None
    listener: Listener | None = None
    listen_task: asyncio.Task | None = None  # reads the microphone where aiortc's RTP tap is off
    connect_deadline: asyncio.TimerHandle | None = None
    closed: bool = False


def check_offer(sdp: str) -> None:
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("the body is not an SDP offer (it must start with v=0)")
    sections = re.findall(r"^m=(\w+)", sdp, flags=re.M)
    if not sections:
        raise OfferError("the offer has no media section")
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise OfferError(f"the offer has {len(sections)} media sections, at most {MAX_MEDIA_SECTIONS} allowed")
    if "audio" not in sections and "application" not in sections:
        raise OfferError("the offer has neither audio nor a data channel")
    if not re.search(r"^a=fingerprint:", sdp, flags=re.M):
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint)")


def _opus_only() -> list:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class WebRTCTransport:
    """Embedded rooms: WHEP sessions in, Opus and data channel events out."""

    def __init__(self, rooms: RoomRegistry, settings: Settings, listening: Listening | None = None):
        self.rooms = rooms
        self.settings = settings
        self.sessions: dict[str, WhepSession] = {}
        self._ending: set[asyncio.Task] = set()  # sessions being ended in the background
        self.listening = listening if listening is not None else Listening()  # barge-in: decodes nothing while off
        configure_ice(settings)
        fast_paths()  # probe aiortc once, at start: one log line says which fast paths are on

    def _make_sink(self, room: Room) -> OpusRoomSink:
        s = self.settings
        return OpusRoomSink(room, s.opus_bitrate, s.opus_application, s.opus_complexity, on_close=self._room_closed)

    def _room_closed(self, room: Room) -> None:
        # a room closed under its peers (it failed, or the agent is shutting down): end their sessions
        for session in [s for s in self.sessions.values() if s.room is room]:
            self._end_soon(session)

    async def answer(self, room_name: str, offer_sdp: str, identity: str, *, can_publish: bool = True) -> WhepSession:
        check_offer(offer_sdp)
        room = self.rooms.open(room_name, self._make_sink)
        session_id = secrets.token_urlsafe(12)
        peer_id = f"{identity}#{session_id[:6]}"
        pc = RTCPeerConnection()
        session = WhepSession(session_id, room, peer_id, identity, pc, can_publish)
        try:
            room.add_peer(peer_id, {"id": peer_id, "identity": identity, "transport": "webrtc"},
                          disconnect=lambda: self._end_soon(session))
        except Exception:
            await pc.close()
            if not room.peers:
                self.rooms.close_room(room)
            raise
        self.sessions[session_id] = session
        try:
            await self._negotiate(session, offer_sdp)
        except Exception as exc:
            await self.end(session_id)
            if isinstance(exc, (OfferError, RoomLimit)):
                raise
            raise OfferError(f"cannot answer this offer: {exc}") from None
        session.connect_deadline = asyncio.get_running_loop().call_later(
            ICE_CONNECT_S, lambda: self._expire_unconnected(session))
        return session

    def _end_soon(self, session: WhepSession) -> None:
        if not session.closed:
            task = asyncio.ensure_future(self.end(session.id))
            self._ending.add(task)  # close_all waits for it: the peer hears the DTLS close
            task.add_done_callback(self._ending.discard)

    def _expire_unconnected(self, session: WhepSession) -> None:
        if not session.closed and session.pc.connectionState != "connected":
            log.info("peer never connected", extra={"room": session.room.name, "peer": session.peer_id})
            self._end_soon(session)

    async def _negotiate(self, session: WhepSession, offer_sdp: str) -> None:
        pc = session.pc
        sink: OpusRoomSink = session.room.sink  # type: ignore[assignment]

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            if channel.label != DATA_CHANNEL_LABEL:
                return
            sink.channels[session.peer_id] = channel

            @channel.on("message")
            def on_message(message) -> None:
                reply = session.room.receive(message, session.peer_id, can_publish=session.can_publish)
                if reply is not None:
                    _send(channel, encode_event(reply))

            if channel.readyState == "open":
                _send(channel, encode_event(session.room.ready_event()))
            else:
                channel.on("open", lambda: _send(channel, encode_event(session.room.ready_event())))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(session.id)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                self._listen(session, track)

        if re.search(r"^m=audio", offer_sdp, flags=re.M):
            # Created before the offer is applied, so it takes the first audio section and
            # only Opus is negotiated. sendrecv: the answer becomes sendonly for a recvonly
            # offer, and sendrecv when the client also sends its microphone (barge-in).
            track = PacketTrack()
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            transceiver.setCodecPreferences(_opus_only())
            session.audio = RtpOut(transceiver.sender, track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if session.audio is not None:
            sink.outputs[session.peer_id] = session.audio

    def _listen(self, session: WhepSession, track) -> None:
        """The microphone a WHEP peer sends (`sendrecv` audio), for barge-in."""
        receiver = next((t.receiver for t in session.pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is None or session.closed:
            return
        self._stop_listening(session)  # a second audio section: the newest one is heard
        listener = session.listener = self.listening.listen(session.room, session.peer_id)
        session.listen_task = listen_to(receiver, track, listener.feed_opus, listener.feed_pcm)

    def _stop_listening(self, session: WhepSession) -> None:
        if session.listen_task is not None:
            session.listen_task.cancel()
            session.listen_task = None
        if session.listener is not None:
            self.listening.remove(session.listener)
            session.listener = None

    async def end(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None or session.closed:
            return False
        session.closed = True
        if session.connect_deadline is not None:
            session.connect_deadline.cancel()
        sink = session.room.sink
        if isinstance(sink, OpusRoomSink):
            sink.outputs.pop(session.peer_id, None)
            sink.channels.pop(session.peer_id, None)
        if session.audio is not None:
            session.audio.stop()
        self._stop_listening(session)
        session.room.remove_peer(session.peer_id)
        log.info("peer left", extra={"room": session.room.name, "peer": session.peer_id})
        await session.pc.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(sid) for sid in list(self.sessions)), *self._ending, return_exceptions=True)

