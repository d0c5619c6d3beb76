"""A Python client for embedded rooms: WHEP signalling, the `tts` data channel, and the
agent's Opus packets as they arrive (before aiortc's jitter buffer), for tests, benchmarks
and bots.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from .room_names import room_path


def tap_rtp(pc: RTCPeerConnection, track, on_packet, *, forward: bool = True) -> None:
    """Call `on_packet(rtp_packet)` as each RTP packet of `track` arrives, before aiortc's
    ~80 ms jitter buffer. With forward=False the packet goes no further (nothing decoded)."""
    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
    original = receiver._handle_rtp_packet

    async def tapped(packet, arrival_time_ms):
        on_packet(packet)
        if forward:
            await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = tapped


@dataclass(slots=True)
class ReceivedPacket:
    arrival: float  # time.perf_counter() when the RTP packet reached the client
    timestamp: int  # RTP timestamp
    sequence: int
    payload: bytes
    marker: int = 0
    payload_type: int = 0
    ssrc: int = 0


@dataclass
class RoomClient:
    """One peer of a room. For many cheap peers (load generators), `decode=False` swallows each
    packet at the tap (no jitter buffer, no decoder: aiortc's decode costs a load process more
    CPU than the server spends sending), `keep_payloads=False` keeps only arrival times and RTP
    timestamps, and `keep_events=False` only counts events by type."""

    base_url: str
    room: str
    token: str
    send_audio: MediaStreamTrack | None = None  # a microphone track (barge-in)
    packets: list[ReceivedPacket] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    http: httpx.AsyncClient | None = None  # shared with other clients (then not closed here)
    decode: bool = True
    keep_payloads: bool = True
    keep_events: bool = True
    on_event: Callable[[dict], None] | None = None  # called with every event as it arrives

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.channel = None
        self.location: str | None = None
        self.arrivals = array("d")  # perf_counter at each packet's arrival (every packet, always kept)
        self.timestamps = array("q")  # its RTP timestamp
        self.event_counts: dict[str, int] = {}
        self._event_waiters: list[tuple[callable, asyncio.Future]] = []
        self._packet_waiters: list[tuple[callable, asyncio.Future]] = []
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._own_http = self.http is None
        self._http = self.http if self.http is not None else httpx.AsyncClient(base_url=self.base_url, timeout=20)

    async def connect(self) -> dict:
        """WHEP offer → answer; returns the `ready` event."""
        pc = self.pc
        if self.send_audio is not None:
            pc.addTransceiver(self.send_audio, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        self.channel = pc.createDataChannel("tts")
        self.channel.on("message", self._on_message)

        @pc.on("track")
        def on_track(track) -> None:
            if self.keep_payloads:
                on_packet = lambda packet: self._on_packet(ReceivedPacket(  # noqa: E731
                    time.perf_counter(), packet.timestamp, packet.sequence_number, packet.payload,
                    packet.marker, packet.payload_type, packet.ssrc))
            else:
                arrivals, timestamps = self.arrivals, self.timestamps

                def on_packet(packet) -> None:  # no object per packet: a load peer stays cheap
                    arrivals.append(time.perf_counter())
                    timestamps.append(packet.timestamp)
            tap_rtp(pc, track, on_packet, forward=self.decode)
            if self.decode:
                asyncio.ensure_future(self._drain(track))

        await pc.setLocalDescription(await pc.createOffer())
        resp = await self._http.post(
            f"/v1/rooms/{room_path(self.room)}/whep",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"},
        )
        if resp.status_code != 201:
            raise RuntimeError(f"WHEP answered {resp.status_code}: {resp.text[:500]}")
        self.location = resp.headers["location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
        return await asyncio.wait_for(self.ready, 30)

    async def _drain(self, track) -> None:
        # Keep aiortc's decoder side consuming so its queues stay small.
        try:
            while True:
                await track.recv()
        except Exception:
            pass

    def _on_message(self, message) -> None:
        ev = json.loads(message)
        ev["_arrival"] = time.perf_counter()
        kind = ev.get("type", "?")
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        if self.keep_events:
            self.events.append(ev)
        if kind == "ready" and not self.ready.done():
            self.ready.set_result(ev)
        if self.on_event is not None:
            self.on_event(ev)
        for pred, fut in list(self._event_waiters):
            if not fut.done() and pred(ev):
                fut.set_result(ev)
                self._event_waiters.remove((pred, fut))

    def _on_packet(self, packet: ReceivedPacket) -> None:
        self.arrivals.append(packet.arrival)
        self.timestamps.append(packet.timestamp)
        self.packets.append(packet)
        for pred, fut in list(self._packet_waiters):
            if not fut.done() and pred(packet):
                fut.set_result(packet)
                self._packet_waiters.remove((pred, fut))

    def send(self, message: dict | str) -> float:
        """Send a protocol message; returns the perf_counter time it was sent."""
        data = message if isinstance(message, str) else json.dumps(message)
        self.channel.send(data)
        return time.perf_counter()

    async def wait_event(self, type_: str, timeout: float = 20, **match) -> dict:
        def pred(ev: dict) -> bool:
            return ev.get("type") == type_ and all(ev.get(k) == v for k, v in match.items())

        for ev in self.events:
            if pred(ev):
                return ev
        fut = asyncio.get_running_loop().create_future()
        self._event_waiters.append((pred, fut))
        return await asyncio.wait_for(fut, timeout)

    async def wait_packet(self, after: float, timeout: float = 20) -> ReceivedPacket:
        """The first packet arriving after perf_counter time `after`."""
        for p in self.packets:
            if p.arrival > after:
                return p
        fut = asyncio.get_running_loop().create_future()
        self._packet_waiters.append((lambda p: p.arrival > after, fut))
        return await asyncio.wait_for(fut, timeout)

    def events_of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == type_]

    async def close(self) -> None:
        if self.location:
            try:
                await self._http.delete(self.location, headers={"Authorization": f"Bearer {self.token}"})
            except httpx.HTTPError:
                pass
        if self._own_http:
            await self._http.aclose()
        await self.pc.close()


def decode_opus(payloads: list[bytes]) -> np.ndarray:
    """Decode Opus payloads to 48 kHz mono int16 (real libopus, through PyAV)."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48000
    decoder.layout = "mono"
    out = []
    for payload in payloads:
        for frame in decoder.decode(av.Packet(payload)):
            pcm = frame.to_ndarray()
            if pcm.dtype != np.int16:
                pcm = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
            out.append(pcm.reshape(-1) if pcm.shape[0] == 1 else pcm[0])
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def rms_db(pcm: np.ndarray) -> float:
    if len(pcm) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / 32768)
