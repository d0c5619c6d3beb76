"""The peer under test: a Pipecat pipeline per room, SmallWebRTC transport, and a TTS service
around the very same eSpeak NG engine we use, so only the framework differs.

Run with a Python that has `pipecat-ai[webrtc]` (see bench/peer_pipecat.py):
    python -m bench.pipecat_server --port P

It speaks just enough of our room protocol over the data channel for the bench clients:
`ready` when the peer connects, `synthesize` → a `TTSSpeakFrame`, `finished` when Pipecat
reports the bot stopped speaking. Signalling is WHEP-shaped (POST an SDP offer, 201 with the
answer) so the same clients drive both servers; the bearer token is not checked (a bench
server on loopback, nothing else).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import warnings
from typing import AsyncGenerator

import aioice.ice
from aiohttp import web
from loguru import logger
from pipecat.frames.frames import BotStoppedSpeakingFrame, Frame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from engines.espeak import EspeakEngine

warnings.filterwarnings("ignore", category=DeprecationWarning)  # PipelineTask/Runner: still the documented pair
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]  # loopback only


class EspeakTTSService(TTSService):
    """Pipecat's TTS service shape around our eSpeak NG engine (sentence-streamed PCM)."""

    def __init__(self, engine: EspeakEngine, **kwargs):
        voice = next(v for v in engine.voices() if v.language.startswith("en"))
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice.id, language=None), **kwargs)
        self.engine = engine
        self.voice = voice

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        async def pcm() -> AsyncGenerator[bytes, None]:
            async for chunk in self.engine.stream(text, self.voice):
                yield chunk.pcm.tobytes()

        async for frame in self._stream_audio_frames_from_iterator(pcm(), in_sample_rate=self.engine.sample_rate,
                                                                   context_id=context_id):
            await self.stop_ttfb_metrics()
            yield frame


class RoomProtocol(FrameProcessor):
    """Our protocol's `synthesize` in, `finished` out, on the SmallWebRTC data channel."""

    def __init__(self, connection: SmallWebRTCConnection):
        super().__init__()
        self.connection = connection
        self.ids: list[str] = []

    def on_message(self, message: dict) -> TTSSpeakFrame | None:
        if message.get("type") == "synthesize":
            self.ids.append(message.get("id") or secrets.token_hex(4))
            return TTSSpeakFrame(message["text"])
        return None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStoppedSpeakingFrame) and self.ids:
            self.connection.send_app_message({"type": "finished", "id": self.ids.pop(0)})
        await self.push_frame(frame, direction)


class Rooms:
    def __init__(self) -> None:
        self.engine = EspeakEngine()
        self.sessions: dict[str, tuple[SmallWebRTCConnection, PipelineTask]] = {}

    async def whep(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        offer = await request.text()
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=offer, type="offer")
        transport = SmallWebRTCTransport(connection, TransportParams(audio_out_enabled=True,
                                                                     audio_out_sample_rate=48000))
        protocol = RoomProtocol(connection)
        tts = EspeakTTSService(self.engine)
        pipeline = Pipeline([transport.input(), protocol, tts, transport.output()])
        task = PipelineTask(pipeline, params=PipelineParams(audio_out_sample_rate=48000, enable_metrics=False),
                            idle_timeout_secs=None, enable_rtvi=False)  # RTVI: not our protocol

        @transport.event_handler("on_client_connected")
        async def on_connected(_transport, _client):
            connection.send_app_message({"type": "ready", "protocol": 1, "room": room, "voice": tts.voice.id,
                                         "voices": [tts.voice.id]})

        @transport.event_handler("on_app_message")
        async def on_message(_transport, message, _sender):
            frame = protocol.on_message(message) if isinstance(message, dict) else None
            if frame is not None:
                await task.queue_frame(frame)

        @transport.event_handler("on_client_disconnected")
        async def on_disconnected(_transport, _client):
            await task.cancel()

        session = secrets.token_urlsafe(9)
        self.sessions[session] = (connection, task)
        runner = PipelineRunner(handle_sigint=False)
        asyncio.get_running_loop().create_task(self._run(session, runner, task))
        answer = connection.get_answer()
        return web.Response(status=201, text=answer["sdp"], content_type="application/sdp",
                            headers={"Location": f"/v1/sessions/{session}"})

    async def _run(self, session: str, runner: PipelineRunner, task: PipelineTask) -> None:
        try:
            await runner.run(task)
        finally:
            self.sessions.pop(session, None)

    async def end(self, request: web.Request) -> web.Response:
        found = self.sessions.pop(request.match_info["session"], None)
        if found is None:
            return web.Response(status=404)
        connection, task = found
        await task.cancel()
        await connection.disconnect()
        return web.Response(status=200)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logger.remove()
    logger.add(lambda m: print(m, end=""), level=args.log_level)
    rooms = Rooms()
    app = web.Application()
    app.router.add_post("/v1/rooms/{room}/whep", rooms.whep)
    app.router.add_delete("/v1/sessions/{session}", rooms.end)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
