"""A cheap load peer: WHEP in, the `tts` data channel, and RTP arrivals counted at the wire.

`agent.client.RoomClient` also feeds every packet to aiortc's jitter buffer and decoder,
which costs the load process more CPU than the server spends sending. A load peer only
needs (arrival time, RTP timestamp) per packet, so its tap swallows the packet there.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from agent.client import tap_rtp


class Listener:
    def __init__(self, http: httpx.AsyncClient, room: str, token: str):
        self.http = http
        self.room = room
        self.token = token
        self.pc = RTCPeerConnection()
        self.channel = None
        self.location: str | None = None
        self.arrivals = array("d")  # perf_counter at arrival
        self.timestamps = array("q")  # RTP timestamp
        self.events: dict[str, int] = {}  # event type -> count
        self.ready = asyncio.get_running_loop().create_future()
        self.speak_text: str | None = None  # when set: re-queued on every `finished`
        self._speak_n = 0

    async def connect(self) -> None:
        pc = self.pc
        pc.addTransceiver("audio", direction="recvonly")
        self.channel = pc.createDataChannel("tts")
        self.channel.on("message", self._on_message)

        @pc.on("track")
        def on_track(track) -> None:
            arrivals, timestamps = self.arrivals, self.timestamps

            def count_only(packet) -> None:  # no jitter buffer, no decode: the load stays cheap
                arrivals.append(time.perf_counter())
                timestamps.append(packet.timestamp)

            tap_rtp(pc, track, count_only, forward=False)

        await pc.setLocalDescription(await pc.createOffer())
        resp = await self.http.post(f"/v1/rooms/{self.room}/whep", content=pc.localDescription.sdp,
                                    headers={"Content-Type": "application/sdp",
                                             "Authorization": f"Bearer {self.token}"})
        if resp.status_code != 201:
            raise RuntimeError(f"WHEP answered {resp.status_code}: {resp.text[:200]}")
        self.location = resp.headers["location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
        await asyncio.wait_for(self.ready, 30)

    def _on_message(self, message) -> None:
        ev = json.loads(message)
        kind = ev.get("type", "?")
        self.events[kind] = self.events.get(kind, 0) + 1
        if kind == "ready" and not self.ready.done():
            self.ready.set_result(ev)
        elif kind == "finished" and self.speak_text is not None:
            self.speak(self.speak_text)

    def speak(self, text: str) -> None:
        """Speak `text` now and again each time it finishes (continuous speech)."""
        self.speak_text = text
        self._speak_n += 1
        self.channel.send(json.dumps({"type": "synthesize", "id": f"load-{self._speak_n}", "text": text}))

    def stop_speaking(self) -> None:
        self.speak_text = None
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps({"type": "interrupt"}))

    async def close(self) -> None:
        if self.location:
            try:
                await self.http.delete(self.location, headers={"Authorization": f"Bearer {self.token}"})
            except httpx.HTTPError:
                pass
        await self.pc.close()


async def connect_listeners(http: httpx.AsyncClient, rooms: list[str], token_for,
                            parallel: int = 8) -> list[Listener]:
    """One listener per room, `parallel` handshakes at a time (DTLS is CPU-heavy on both ends)."""
    gate = asyncio.Semaphore(parallel)

    async def one(room: str) -> Listener:
        async with gate:
            listener = Listener(http, room, token_for(room))
            await listener.connect()
            return listener

    return list(await asyncio.gather(*(one(r) for r in rooms)))
