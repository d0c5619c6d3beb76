"""The full loop against a real LiveKit server: join, speak, hear, interrupt.

Runs when LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are set (a dev server:
`livekit-server --config livekit.yaml`, then LIVEKIT_URL=ws://127.0.0.1:7880
LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret), skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets

import numpy as np
import pytest

URL, KEY, SECRET = (os.environ.get(v) for v in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"))
pytestmark = [
    pytest.mark.livekit,
    pytest.mark.skipif(not (URL and KEY and SECRET),
                       reason="needs a LiveKit server: set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"),
]

LONG_TEXT = ("This is a long announcement that keeps going for many seconds, so that there is plenty of time "
             "to interrupt it. It goes on and on about nothing in particular. And then some more.")


async def test_join_speak_hear_interrupt():
    from livekit import api, rtc

    from agent.rooms import RoomRegistry
    from agent.settings import Settings
    from agent.transports.livekit import TOPIC, TRANSCRIPTION_TOPIC, LiveKitTransport
    from agent.transports.livekit_cli import join_token
    from engines.registry import VoiceRegistry
    from tests.conftest import shared_engines

    room_name = f"it-{secrets.token_hex(4)}"
    settings = Settings(voice="espeak:en-us", room_grace_s=0)
    transport = LiveKitTransport(RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice)))
    await transport.join(URL, join_token(KEY, SECRET, room_name, "tts-agent"), room_name)

    user = rtc.Room()
    events: asyncio.Queue[dict] = asyncio.Queue()
    transcripts: list[str] = []
    heard: list[np.ndarray] = []
    voiced = asyncio.Event()
    new_frame = asyncio.Event()
    track_ready: asyncio.Future = asyncio.get_running_loop().create_future()

    @user.on("data_received")
    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            events.put_nowait(json.loads(packet.data))

    @user.on("track_subscribed")
    def on_track(track, publication, participant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and not track_ready.done():
            track_ready.set_result(track)

    async def on_transcription(reader, identity) -> None:
        transcripts.append(await reader.read_all())

    user.register_text_stream_handler(TRANSCRIPTION_TOPIC, lambda r, i: asyncio.ensure_future(on_transcription(r, i)))
    token = (api.AccessToken(KEY, SECRET).with_identity("listener")
             .with_grants(api.VideoGrants(room_join=True, room=room_name)).to_jwt())
    await user.connect(URL, token)
    try:
        async def next_event(kind: str, uid: str | None = None) -> dict:
            while True:
                ev = await asyncio.wait_for(events.get(), 30)
                if ev["type"] == kind and (uid is None or ev.get("id") == uid):
                    return ev

        assert (await next_event("ready"))["room"] == room_name
        track = await asyncio.wait_for(track_ready, 30)
        stream = rtc.AudioStream.from_track(track=track, sample_rate=48_000, num_channels=1)

        async def listen():
            async for ev in stream:
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16).copy()
                heard.append(pcm)
                new_frame.set()
                if np.abs(pcm.astype(np.int32)).max() > 500:
                    voiced.set()

        listener = asyncio.create_task(listen())
        await user.local_participant.publish_data(
            json.dumps({"type": "synthesize", "id": "long", "text": LONG_TEXT}), reliable=True, topic=TOPIC)
        await next_event("started", "long")
        await asyncio.wait_for(voiced.wait(), 30)  # the voice came through the SFU, Opus and all
        await user.local_participant.publish_data(json.dumps({"type": "interrupt"}), reliable=True, topic=TOPIC)
        cut = await next_event("interrupted", "long")
        assert cut["reason"] == "interrupt" and cut["played_ms"] > 0
        # after the interrupt the track falls silent: wait for a quiet half second
        mark = len(heard)

        def quiet_half_second() -> bool:
            tail = heard[mark:]
            run = 0
            for pcm in tail:
                run = run + 1 if np.abs(pcm.astype(np.int32)).max() < 500 else 0
                if run >= 50:
                    return True
            return False

        async def until_quiet():
            while not quiet_half_second():
                new_frame.clear()
                await new_frame.wait()

        await asyncio.wait_for(until_quiet(), 10)
        assert any("long announcement" in t for t in transcripts)
        listener.cancel()
        await stream.aclose()
    finally:
        await user.disconnect()
        await transport.drain(timeout=0)


async def test_worker_dispatch_state_transcriptions_and_termination():
    """What the offline stand-ins assume about the server, checked against a real one: the
    job token lets the agent set `lk.agent.state` (allowed_permissions), dispatch metadata
    arrives in Job.metadata, legacy transcription packets reach a client, SendData to a
    missing room is 503 (so the control plane asks list_rooms first), and deleting the room
    ends the job."""
    from livekit import api, rtc

    from agent.rooms import RoomRegistry
    from agent.settings import Settings
    from agent.transports.livekit import TOPIC, LiveKitTransport
    from agent.transports.livekit_cli import DispatchWorker
    from engines.registry import VoiceRegistry
    from tests.conftest import shared_engines

    room_name, agent_name = f"it-{secrets.token_hex(4)}", f"it-agent-{secrets.token_hex(3)}"
    settings = Settings(voice="espeak:en-us", room_grace_s=0)
    transport = LiveKitTransport(RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice)))
    worker = DispatchWorker(transport, URL, KEY, SECRET, agent_name=agent_name)
    run = asyncio.create_task(worker.run())
    user = rtc.Room()
    states: asyncio.Queue[str] = asyncio.Queue()
    legacy: list[str] = []
    events: asyncio.Queue[dict] = asyncio.Queue()

    @user.on("participant_attributes_changed")
    def on_attributes(changed: dict, participant) -> None:
        if "lk.agent.state" in changed:
            states.put_nowait(changed["lk.agent.state"])

    @user.on("participant_connected")
    def on_joined(participant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            states.put_nowait(participant.attributes.get("lk.agent.state", ""))

    @user.on("transcription_received")
    def on_transcription(segments, participant, publication) -> None:
        legacy.extend(s.text for s in segments if s.final)

    @user.on("data_received")
    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            events.put_nowait(json.loads(packet.data))

    async def state(expected: str) -> None:
        while (await asyncio.wait_for(states.get(), 30)) != expected:
            pass

    async def event(kind: str) -> dict:
        while True:
            ev = await asyncio.wait_for(events.get(), 30)
            if ev["type"] == kind:
                return ev

    lk = api.LiveKitAPI(URL.replace("ws", "http", 1), KEY, SECRET)
    try:
        await asyncio.wait_for(worker.registered.wait(), 30)
        await lk.room.create_room(api.CreateRoomRequest(name=room_name))
        token = (api.AccessToken(KEY, SECRET).with_identity("watcher")
                 .with_grants(api.VideoGrants(room_join=True, room=room_name)).to_jwt())
        await user.connect(URL, token)
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=agent_name, room=room_name, metadata=json.dumps({"speed": 1.5})))
        await state("listening")  # set by the agent: the job token allowed it
        assert transport.sessions[room_name].room.speaker.speed == 1.5  # the dispatch metadata
        said = json.dumps({"type": "synthesize", "id": "s", "text": "Checking the agent state."})
        await user.local_participant.publish_data(said, reliable=True, topic=TOPIC)
        await state("speaking")
        await event("finished")
        await state("listening")
        assert any("Checking the agent state." in t for t in legacy)  # the deprecated packets arrive

        with pytest.raises(api.TwirpError) as refused:
            missing = f"missing-{secrets.token_hex(4)}"
            await lk.room.send_data(api.SendDataRequest(room=missing, data=b"{}", topic=TOPIC))
        assert refused.value.status == 503  # as the control plane's stand-in answers

        session = transport.sessions[room_name]
        await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        await asyncio.wait_for(session.left.wait(), 30)
    finally:
        await user.disconnect()
        await lk.aclose()
        await worker.drain(timeout=0)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
