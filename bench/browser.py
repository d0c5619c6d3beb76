"""A real Chromium listener in a room: the web demo's /demo/listen page, headless, playing
the room's audio, and what its WebRTC stack says it did to it (`getStats()`, inbound-rtp
audio). `concealedSamples / totalSamplesReceived` is the share of played samples Chromium
had to invent because a packet was late or missing: the glitches a person hears.

The page is not changed for this: an init script keeps every RTCPeerConnection the page
creates, so its stats can be read from outside.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # the page plays the room without a click
    "--allow-loopback-in-peer-connection",  # the agent offers only 127.0.0.1 candidates
]
CONNECT_TIMEOUT_MS = 30_000

KEEP_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  const kept = (window.__benchPeerConnections = []);
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); kept.push(this); }
  };
})();
"""

# The counters of the page's current peer connection (a reconnect starts a new one: `connects` tells)
INBOUND_AUDIO = """
async () => {
  const out = {totalSamplesReceived: 0, concealedSamples: 0, silentConcealedSamples: 0, concealmentEvents: 0,
               packetsReceived: 0, packetsLost: 0, jitterBufferDelay: 0, jitterBufferEmittedCount: 0,
               connects: window.listen ? window.listen.connects : 0};
  const pcs = window.__benchPeerConnections || [];
  const pc = pcs[pcs.length - 1];
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") for (const k of Object.keys(out)) if (k in s) out[k] += s[k];
  });
  return out;
}
"""


def chromium_missing() -> str | None:
    """Why no Chromium listener can run here, or None."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


class ChromiumListener:
    """One headless Chromium on /demo/listen?room=…, connected and playing."""

    def __init__(self, room: str):
        self.room = room
        self._playwright = None
        self._browser = None
        self.page = None

    @classmethod
    async def open(cls, base_url: str, room: str, token: str) -> "ChromiumListener":
        from playwright.async_api import async_playwright

        ear = cls(room)
        ear._playwright = await async_playwright().start()
        try:
            ear._browser = await ear._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            ear.page = await (await ear._browser.new_context()).new_page()
            await ear.page.add_init_script(KEEP_PEER_CONNECTIONS)
            await ear.page.goto(f"{base_url}/demo/listen?room={room}&token={token}&captions=0")
            await ear.page.wait_for_function("window.listen && window.listen.state === 'connected'",
                                             timeout=CONNECT_TIMEOUT_MS)
        except BaseException:
            await ear.close()
            raise
        return ear

    async def inbound_audio(self) -> dict:
        """Chromium's inbound-rtp audio counters now (cumulative)."""
        return await self.page.evaluate(INBOUND_AUDIO)

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None
