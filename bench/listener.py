"""A cheap load peer: the public client (agent/client.py) with nothing decoded, only
(arrival time, RTP timestamp) kept per packet and events counted, that can speak continuously.
"""

from __future__ import annotations

import asyncio

import httpx

from agent.client import RoomClient


class Listener(RoomClient):
    # one peer is one peer: not the dataclass's field-by-field equality (list.remove in the soak)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, http: httpx.AsyncClient, room: str, token: str):
        super().__init__(str(http.base_url), room, token, http=http, decode=False, keep_payloads=False,
                         keep_events=False, on_event=self._requeue)
        self.speak_text: str | None = None  # when set: queued again on every `finished`
        self._speak_n = 0

    def _requeue(self, ev: dict) -> None:
        if ev.get("type") == "finished" and self.speak_text is not None:
            self.speak(self.speak_text)

    def speak(self, text: str) -> None:
        """Speak `text` now and again each time it finishes (continuous speech)."""
        self.speak_text = text
        self._speak_n += 1
        self.send({"type": "synthesize", "id": f"load-{self._speak_n}", "text": text})

    def stop_speaking(self) -> None:
        self.speak_text = None
        if self.channel is not None and self.channel.readyState == "open":
            self.send({"type": "interrupt"})


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
