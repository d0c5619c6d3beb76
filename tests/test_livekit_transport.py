"""The LiveKit transport offline, with the real SDK objects.

No LiveKit server can run here, so two things stand in for it, and only those: the
`rtc.Room` is real but never connected (its events are emitted the way the SDK emits them
on a packet from the server), and the publish path is a `CapturedPublisher` that records
what would go to the server. Everything else is real: the Speaker and eSpeak NG, the
`rtc.AudioSource` and `LocalAudioTrack`, read back through `rtc.AudioStream.from_track`.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from livekit import api as lkapi
from livekit import rtc
from livekit.api.access_token import Claims
from livekit.rtc._proto import participant_pb2

from agent.rooms import RoomRegistry
from agent.settings import Settings
from agent.transports.livekit import (
    ATTR_FINAL,
    ATTR_SEGMENT_ID,
    ATTR_TRACK_ID,
    TOPIC,
    TRANSCRIPTION_TOPIC,
    LiveKitTransport,
)
from engines.registry import VoiceRegistry
from tests.conftest import shared_engines

TRACK_SID = "TR_agentvoice"


class NotAllowed(Exception):
    """What livekit-server answers an update of one's own attributes without the grant."""


class CapturedPublisher:
    """Stands in for the LiveKit server's side of `local_participant` (cannot run here).

    With `claims` (the verified join token), it refuses `set_attributes` as livekit-server
    does without `canUpdateOwnMetadata` (pkg/rtc/participant.go: RequestResponse NOT_ALLOWED,
    "does not have permission to update own metadata")."""

    def __init__(self, room: rtc.Room, claims: Claims | None = None):
        self.claims = claims
        self.tracks: list[rtc.LocalAudioTrack] = []
        self.data: list[tuple[dict, str, list[str]]] = []  # (event, topic, destinations)
        self.texts: list[tuple[str, str, dict]] = []
        self.transcriptions: list[rtc.Transcription] = []  # legacy transcription packets
        self.attributes: dict[str, str] = {}  # the participant's attributes, as others see them
        self.states: list[str] = []  # every lk.agent.state the server accepted, in order
        self.refused: list[dict] = []
        self.sent: list[tuple[str, str]] = []  # ("event", type) and ("state", value) in send order
        self.subscriptions: list[tuple[str, bool]] = []  # (publication sid, subscribe?)
        self.changed = asyncio.Event()
        if claims is not None:
            self.attributes.update(claims.attributes or {})  # a participant joins with its token's

    async def publish_track(self, track: rtc.LocalAudioTrack) -> str:
        self.tracks.append(track)
        return TRACK_SID

    async def publish_data(self, payload: bytes, *, topic: str, destination_identities: list[str]) -> None:
        self.data.append((json.loads(payload), topic, list(destination_identities)))
        self.sent.append(("event", self.data[-1][0].get("type")))
        self.changed.set()

    async def publish_text(self, text: str, *, topic: str, attributes: dict[str, str]) -> None:
        self.texts.append((text, topic, dict(attributes)))
        self.changed.set()

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        self.transcriptions.append(transcription)
        self.changed.set()

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        if self.claims is not None and not self.claims.video.can_update_own_metadata:
            self.refused.append(dict(attributes))
            self.changed.set()
            raise NotAllowed("does not have permission to update own metadata")
        self.attributes.update(attributes)
        if "lk.agent.state" in attributes:
            self.states.append(attributes["lk.agent.state"])
            self.sent.append(("state", attributes["lk.agent.state"]))
        self.changed.set()

    def set_subscribed(self, publication: rtc.RemoteTrackPublication, subscribed: bool) -> None:
        self.subscriptions.append((publication.sid, subscribed))

    def events(self, type_: str | None = None, to: list[str] | None = None) -> list[dict]:
        return [ev for ev, _, dest in self.data if (type_ is None or ev["type"] == type_) and (to is None or dest == to)]

    async def wait_for(self, predicate, timeout: float = 20.0):
        async def poll():
            while True:
                found = predicate()
                if found:
                    return found
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(poll(), timeout)


def participant(identity: str) -> rtc.RemoteParticipant:
    # handle 0 is the SDK's invalid handle: nothing native to release
    return rtc.RemoteParticipant(participant_pb2.OwnedParticipant(info=participant_pb2.ParticipantInfo(identity=identity)))


def packet(msg: dict | str, sender: rtc.RemoteParticipant | None, topic: str = TOPIC) -> rtc.DataPacket:
    raw = msg if isinstance(msg, str) else json.dumps(msg)
    return rtc.DataPacket(data=raw.encode(), kind=rtc.DataPacketKind.KIND_RELIABLE, participant=sender, topic=topic)


@pytest.fixture
async def lk():
    settings = Settings(room_grace_s=0, voice="espeak:en-us")  # eSpeak NG: word timing, fast
    registry = RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice))
    publishers: list[CapturedPublisher] = []

    def make_publisher(room):
        publishers.append(CapturedPublisher(room))
        return publishers[-1]

    transport = LiveKitTransport(registry, publisher_factory=make_publisher)
    lk_room = rtc.Room()
    session = await transport.attach(lk_room, "lobby")
    yield transport, lk_room, session, publishers[0]
    await transport.drain(timeout=0)
    # Speaker._produce on Python 3.11: asyncio.wait_for returns a chunk that arrives with
    # the cancel and drops the cancel, so a cut utterance's producer can be left waiting
    # for buffer space forever (reported; fix: `async with asyncio.timeout(...)`). Cancel
    # such leftovers again so the loop can close.
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        if task.get_name().startswith("synth-"):
            task.cancel()


async def test_attach_publishes_one_track_and_greets_participants(lk):
    transport, lk_room, session, pub = lk
    assert pub.tracks == [session.track] and session.track_sid == TRACK_SID
    lk_room.emit("participant_connected", participant("alice"))
    ready = await pub.wait_for(lambda: pub.events("ready", ["alice"]))
    assert ready[0]["room"] == "lobby" and ready[0]["protocol"] == 1
    assert transport.rooms.get("lobby").peers["livekit"]["participants"] == 1


async def test_data_packets_drive_the_speaker_and_replies_go_to_the_sender(lk):
    _, lk_room, session, pub = lk
    alice = participant("alice")
    lk_room.emit("data_received", packet({"type": "ping", "t": 7}, alice))
    lk_room.emit("data_received", packet('{"type": "synthesize", "text": "hi", "priorty": "high"}', alice))
    lk_room.emit("data_received", packet({"type": "ping", "t": 8}, alice, topic="chat"))  # not ours
    await pub.wait_for(lambda: len(pub.data) >= 2)
    await session.outbox.flush(5)
    assert [(ev["type"], topic, dest) for ev, topic, dest in pub.data] == [
        ("pong", TOPIC, ["alice"]), ("error", TOPIC, ["alice"])]
    assert pub.data[0][0]["t"] == 7 and pub.data[1][0]["code"] == "bad_message"
    assert session.room.speaker.idle  # the bad message changed nothing

    lk_room.emit("data_received", packet({"type": "synthesize", "text": "Hello there.", "id": "u1"}, alice))
    finished = await pub.wait_for(lambda: pub.events("finished", []))
    assert finished[0]["id"] == "u1" and finished[0]["audio_ms"] > 0
    assert [ev["type"] for ev in pub.events(to=[]) if ev["type"] != "caption"] == ["queued", "started", "finished"]


async def test_server_sent_packets_speak_without_a_reply(lk):
    # RoomService.send_data (the control plane's HTTP speak) arrives with no participant
    _, lk_room, session, pub = lk
    lk_room.emit("data_received", packet({"type": "synthesize", "text": "From the server.", "id": "s1"}, None))
    lk_room.emit("data_received", packet({"type": "ping"}, None))
    await pub.wait_for(lambda: pub.events("finished"))
    assert not pub.events("pong")
    assert pub.events("started")[0]["id"] == "s1"


class Listener:
    """Reads the agent's LocalAudioTrack back through a real `rtc.AudioStream` (10 ms frames)."""

    def __init__(self, track: rtc.LocalAudioTrack):
        self.stream = rtc.AudioStream.from_track(track=track, sample_rate=48_000, num_channels=1)
        self.chunks: list[np.ndarray] = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for ev in self.stream:
            self.chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
            self._new.set()

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def wait():
            while not predicate(self.chunks):
                self._new.clear()
                await self._new.wait()

        await asyncio.wait_for(wait(), timeout)

    async def close(self) -> np.ndarray:
        await self.stream.aclose()
        self._task.cancel()
        return np.concatenate(self.chunks)


def voiced_chunks(pcm: np.ndarray) -> list[bytes]:
    """10 ms chunks that are not all zero: the source pads an underrun with silent chunks,
    so audio is compared chunk by chunk with those left out."""
    usable = len(pcm) - len(pcm) % 480
    return [c.tobytes() for c in pcm[:usable].reshape(-1, 480) if c.any()]


async def test_frames_from_the_speaker_reach_the_audio_source(lk):
    _, lk_room, session, pub = lk
    pushed: list[np.ndarray] = []
    real_push = session.audio.push
    session.audio.push = lambda pcm: (pushed.append(pcm.copy()), real_push(pcm))[-1]  # spy, keeps the real path
    listener = Listener(session.track)
    lk_room.emit("data_received", packet({"type": "synthesize", "text": "Testing the audio path.", "id": "a"},
                                         participant("alice")))
    await pub.wait_for(lambda: pub.events("finished"))
    expected = voiced_chunks(np.concatenate(pushed))
    await listener.until(lambda chunks: sum(1 for c in chunks if c.any()) >= len(expected))
    heard = voiced_chunks(await listener.close())
    # bit-exact, in order: the source neither resamples nor processes 48 kHz mono int16
    assert heard == expected
    assert session.audio.captured == len(pushed) and session.audio.dropped == 0
    assert len(pushed) * 20 >= pub.events("finished")[0]["audio_ms"]


async def test_interrupt_clears_the_source_queue(lk):
    _, lk_room, session, pub = lk
    clears: list[int] = []
    real_clear = session.source.clear_queue
    session.source.clear_queue = lambda: (clears.append(session.audio.pending), real_clear())[-1]
    alice = participant("alice")
    lk_room.emit("data_received", packet({"type": "synthesize", "id": "q", "text": "Queued for later."}, alice))
    lk_room.emit("data_received", packet({"type": "interrupt", "id": "q"}, alice))  # queued: nothing to clear
    await pub.wait_for(lambda: pub.events("interrupted"))
    assert clears == []
    lk_room.emit("data_received", packet(
        {"type": "synthesize", "id": "long", "text": "This sentence is long enough to be cut off in the middle."}, alice))
    await pub.wait_for(lambda: len(pub.events("caption")) >= 3)
    lk_room.emit("data_received", packet({"type": "interrupt"}, alice))
    cut = await pub.wait_for(lambda: [e for e in pub.events("interrupted") if e["id"] == "long"])
    assert cut[0]["played_ms"] > 0 and len(clears) == 1
    assert not pub.events("finished")


async def test_clear_queue_drops_audio_not_yet_played(lk):
    """Frames in the AudioSource at the interrupt never reach the track."""
    _, _, session, _ = lk
    listener = Listener(session.track)
    stale = np.full(960, 1111, np.int16)
    fresh = np.full(960, 2222, np.int16)
    for _ in range(3):  # 60 ms: the source's whole queue
        await session.source.capture_frame(_frame(stale))
    session.room.sink.discard_buffered()  # what Speaker._cut does before the faded frame
    session.room.sink.send_frame(fresh, 0)
    await listener.until(lambda chunks: sum(1 for c in chunks if (c == 2222).any()) >= 2)
    got = await listener.close()
    # without clear_queue all 60 ms would play; the source drains 10 ms per 10 ms, so at
    # most what it took in the instant between the last capture and the clear gets out
    assert np.count_nonzero(got == 1111) < 3 * 960
    assert np.count_nonzero(got == 2222) == 960


def _frame(pcm: np.ndarray) -> rtc.AudioFrame:
    return rtc.AudioFrame(pcm.tobytes(), 48_000, 1, len(pcm))


async def test_captions_become_livekit_transcriptions(lk):
    _, lk_room, session, pub = lk
    session.identity = "tts-agent-1"  # what a connected room's local participant says
    lk_room.emit("data_received", packet(
        {"type": "synthesize", "id": "t", "text": "Hello there, world. How are you today?"}, participant("alice")))
    await pub.wait_for(lambda: pub.events("finished"))
    await session.outbox.flush(5)
    assert [t for t, _, _ in pub.texts] == ["Hello there, world.", "How are you today?"]
    assert {topic for _, topic, _ in pub.texts} == {TRANSCRIPTION_TOPIC}
    attrs = [a for _, _, a in pub.texts]
    assert all(a[ATTR_TRACK_ID] == TRACK_SID and a[ATTR_FINAL] == "true" for a in attrs)
    assert len({a[ATTR_SEGMENT_ID] for a in attrs}) == 2
    assert len(pub.events("caption")) > 2  # eSpeak NG's word captions went out as events, not segments
    # and the deprecated transcription packet beside each segment, as livekit-agents sends it
    # (older UIs: useTrackTranscription, useVoiceAssistant().agentTranscriptions)
    legacy = [(t.participant_identity, t.track_sid, [(g.id, g.text, g.final, g.start_time, g.end_time, g.language)
                                                     for g in t.segments]) for t in pub.transcriptions]
    assert legacy == [("tts-agent-1", TRACK_SID, [(a[ATTR_SEGMENT_ID], text, True, 0, 0, "")])
                      for text, _, a in pub.texts]


async def test_agent_state_goes_listening_speaking_listening(lk):
    """`lk.agent.state` through `local_participant.set_attributes`: `listening` once joined
    (it joined `initializing`, from its token), `speaking` from the first frame played until
    nothing is playing or queued, in order with the room's events."""
    _, lk_room, session, pub = lk
    await session.outbox.flush(5)
    assert pub.states == ["listening"]
    alice = participant("alice")
    lk_room.emit("data_received", packet({"type": "synthesize", "id": "a", "text": "First one."}, alice))
    lk_room.emit("data_received", packet({"type": "synthesize", "id": "b", "text": "Second one."}, alice))
    await pub.wait_for(lambda: [e for e in pub.events("finished") if e["id"] == "b"])
    await session.outbox.flush(5)
    # two queued utterances are one speaking turn: no listening between them
    assert pub.states == ["listening", "speaking", "listening"]
    order = [x for x in pub.sent if x[0] == "state" or x[1] in ("started", "finished")]
    assert order == [("state", "listening"), ("event", "started"), ("state", "speaking"), ("event", "finished"),
                     ("event", "started"), ("event", "finished"), ("state", "listening")]

    lk_room.emit("data_received", packet(
        {"type": "synthesize", "id": "c", "text": "This sentence is long enough to be cut off in the middle."}, alice))
    await pub.wait_for(lambda: pub.states[-1] == "speaking")
    lk_room.emit("data_received", packet({"type": "interrupt"}, alice))
    await pub.wait_for(lambda: pub.events("interrupted"))
    await session.outbox.flush(5)
    assert pub.states == ["listening", "speaking", "listening", "speaking", "listening"]
    lk_room.emit("data_received", packet({"type": "synthesize", "id": "d", "text": "x", "voice": "klingon"}, alice))
    await pub.wait_for(lambda: pub.events("error"))
    await session.outbox.flush(5)
    assert pub.states[-1] == "listening" and len(pub.states) == 5  # nothing played: no change


async def test_dispatch_metadata_sets_the_room_up_before_anyone_is_greeted():
    from agent.protocol import DanmuRules

    settings = Settings(room_grace_s=0, voice="espeak:en-us")
    voices = VoiceRegistry(shared_engines(), settings.voice)
    german = voices.resolve("de").id
    assert german != voices.resolve("espeak:en-us").id
    transport = LiveKitTransport(RoomRegistry(settings, voices), publisher_factory=CapturedPublisher)
    meta = json.dumps({"voice": "de", "speed": 1.25, "danmu": {"max_queue": 3, "blocked_words": ["spam"]},
                       "barge_in": {"mode": "duck", "min_speech_ms": 300}})
    lk_room = rtc.Room()
    session = await transport.attach(lk_room, "dispatched", meta)
    try:
        speaker = session.room.speaker
        assert (speaker.voice.id, speaker.speed) == (german, 1.25)
        assert speaker.danmu.rules == DanmuRules(max_queue=3, blocked_words=["spam"])
        assert (speaker.barge_in.mode, speaker.barge_in.min_speech_ms) == ("duck", 300)
        lk_room.emit("participant_connected", participant("alice"))
        pub = session.publisher
        ready = await pub.wait_for(lambda: pub.events("ready", ["alice"]))
        assert ready[0]["voice"] == german
    finally:
        await transport.drain(timeout=0)


@pytest.mark.parametrize("metadata", [
    "not json", "[1, 2]", '"de"', '{"voice": "klingon"}', '{"speed": 9}', '{"voice": "de", "priorty": 1}',
    '{"type": "synthesize", "text": "spoken by the dispatch"}', pytest.param("{" * 5000, id="deep"),
])
async def test_bad_dispatch_metadata_is_logged_and_ignored(metadata, caplog):
    settings = Settings(room_grace_s=0, voice="espeak:en-us")
    transport = LiveKitTransport(RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice)),
                                 publisher_factory=CapturedPublisher)
    with caplog.at_level("WARNING", logger="agent.transports.livekit_metadata"):
        session = await transport.attach(rtc.Room(), "plain", metadata)
    try:
        speaker = session.room.speaker
        assert (speaker.voice.id, speaker.speed, speaker.barge_in.mode) == ("espeak:en-us", 1.0, "off")
        assert speaker.idle and not speaker.queue  # nothing was said or queued either
        assert [r.message for r in caplog.records if r.message.startswith("dispatch metadata ignored")]
        await session.outbox.flush(5)
        assert session.publisher.states == ["listening"]  # joined as usual
    finally:
        await transport.drain(timeout=0)


async def test_last_participant_leaving_closes_the_room_and_leaves(lk):
    transport, lk_room, session, pub = lk
    alice = participant("alice")
    lk_room.emit("participant_connected", alice)
    lk_room.emit("data_received", packet({"type": "synthesize", "id": "z", "text": "Still talking when she leaves."},
                                         alice))
    await pub.wait_for(lambda: pub.events("started"))
    lk_room.emit("participant_disconnected", alice)
    await asyncio.wait_for(session.left.wait(), 5)  # grace 0: the room closes, the agent leaves
    assert transport.sessions == {} and transport.rooms.get("lobby") is None
    assert pub.events("interrupted")[0]["reason"] == "disconnect"  # flushed before leaving


# -- control plane in LiveKit mode -------------------------------------------------------

class LiveKitTwirpStandIn:
    """Stands in for a LiveKit server's Twirp API (cannot run here): verifies each call's
    token with livekit-api's TokenVerifier, records the decoded protobuf requests, answers."""

    SERVICES = {
        ("RoomService", "SendData"): lkapi.SendDataRequest,
        ("RoomService", "ListRooms"): lkapi.ListRoomsRequest,
        ("RoomService", "ListParticipants"): lkapi.ListParticipantsRequest,
        ("AgentDispatchService", "CreateDispatch"): lkapi.CreateAgentDispatchRequest,
    }

    def __init__(self, key: str, secret: str):
        self.api = lkapi
        self.verifier = lkapi.TokenVerifier(key, secret)
        self.calls: list[tuple[str, object, object]] = []  # (method, request, verified claims)
        self.rooms: dict[str, int] = {"lobby": 2}

    async def handle(self, request):
        from aiohttp import web

        service, method = request.match_info["service"].removeprefix("livekit."), request.match_info["method"]
        req = self.SERVICES[(service, method)].FromString(await request.read())
        try:
            claims = self.verifier.verify(request.headers["Authorization"].removeprefix("Bearer "))
        except Exception as exc:
            return web.json_response({"code": "unauthenticated", "msg": str(exc)}, status=401)
        self.calls.append((method, req, claims))
        lk = self.api
        if method == "SendData":
            if req.room not in self.rooms:
                # livekit-server routes SendData to the room's node over psrpc; with no such
                # room nobody answers, and after psrpc's retries (seconds) it is Twirp
                # `unavailable`, 503 (psrpc.ErrNoResponse), never 404
                return web.json_response({"code": "unavailable", "msg": "no response from servers"}, status=503)
            out = lk.SendDataResponse()
        elif method == "ListRooms":
            names = list(req.names) or list(self.rooms)
            out = lk.ListRoomsResponse(rooms=[lk.Room(name=n, sid=f"RM_{n}", num_participants=self.rooms[n],
                                                      creation_time=1700000000) for n in names if n in self.rooms])
        elif method == "ListParticipants":
            out = lk.ListParticipantsResponse(participants=[
                lk.ParticipantInfo(identity="alice"),
                lk.ParticipantInfo(identity="agent-1", kind=lk.ParticipantInfo.Kind.AGENT)])
        else:
            out = lk.AgentDispatch(id="AD_1", agent_name=req.agent_name, room=req.room, metadata=req.metadata)
        return web.Response(body=out.SerializeToString(), content_type="application/protobuf")


@pytest.fixture
async def control_plane():
    import httpx
    from aiohttp import web
    from fastapi import FastAPI

    from agent.runtime import Agent
    from control_api import problems
    from control_api.limits import RateLimiter
    from control_api.livekit_mode import livekit_router

    stand_in = LiveKitTwirpStandIn("devkey", "secret")
    web_app = web.Application()
    web_app.router.add_post("/twirp/{service}/{method}", stand_in.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    settings = Settings(livekit_url=f"ws://127.0.0.1:{port}")
    agent = Agent(settings, shared_engines())
    app = FastAPI()
    app.state.agent = agent
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_min)
    problems.install(app)
    app.include_router(livekit_router(settings))
    admin = {"Authorization": f"Bearer {agent.tokens.mint('ops', admin=True)}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        yield http, admin, stand_in, settings
    await runner.cleanup()


async def test_token_dispatches_the_agent_when_its_holder_joins(control_plane):
    http, _, _, settings = control_plane
    resp = await http.post("/v1/tokens", json={"room": "lobby", "identity": "alice"})
    assert resp.status_code == 200 and resp.json()["url"] == settings.livekit_url
    claims = lkapi.TokenVerifier("devkey", "secret").verify(resp.json()["token"])
    assert claims.identity == "alice" and claims.video.room == "lobby" and claims.video.room_join
    assert [(a.agent_name, a.metadata) for a in claims.room_config.agents] == [("tts-agent", "")]


async def test_http_speak_reaches_the_room_through_send_data(control_plane):
    http, admin, stand_in, _ = control_plane
    resp = await http.post("/v1/rooms/lobby/speak", json={"text": "Over HTTP.", "priority": "high"}, headers=admin)
    assert resp.status_code == 202, resp.text
    (check, _, _), (method, req, claims) = stand_in.calls
    assert check == "ListRooms" and list(stand_in.calls[0][1].names) == ["lobby"]
    assert method == "SendData" and req.room == "lobby" and req.topic == TOPIC and req.kind == 0  # RELIABLE
    assert claims.video.room_admin and claims.video.room == "lobby"
    sent = json.loads(req.data)
    assert sent["type"] == "synthesize" and sent["text"] == "Over HTTP." and sent["priority"] == "high"
    assert sent["id"] == resp.json()["id"]
    # what the worker's room does with exactly these bytes: the protocol parser accepts them
    from agent.protocol import parse_command

    assert parse_command(req.data, max_text_chars=100).text == "Over HTTP."

    resp = await http.post("/v1/rooms/lobby/interrupt", json={}, headers=admin)
    assert resp.status_code == 202 and json.loads(stand_in.calls[-1][1].data) == {"type": "interrupt"}


async def test_bad_speak_is_refused_before_anything_is_sent(control_plane):
    http, admin, stand_in, _ = control_plane
    typo = await http.post("/v1/rooms/lobby/speak", json={"text": "x", "priorty": "high"}, headers=admin)
    voice = await http.post("/v1/rooms/lobby/speak", json={"text": "x", "voice": "klingon"}, headers=admin)
    missing = await http.post("/v1/rooms/nowhere/speak", json={"text": "x"}, headers=admin)
    anonymous = await http.post("/v1/rooms/lobby/speak", json={"text": "x"})
    assert (typo.status_code, typo.json()["code"]) == (422, "bad_message")
    assert (voice.status_code, voice.json()["code"]) == (422, "unknown_voice")
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_room")
    assert anonymous.status_code == 401
    assert [m for m, _, _ in stand_in.calls] == ["ListRooms"]  # only the check for the missing room


async def test_speak_and_interrupt_to_a_missing_room_are_404(control_plane):
    """livekit-server answers SendData to a missing room with 503 (the stand-in too): the
    control plane asks for the room first and says 404, never 502, and sends nothing."""
    http, admin, stand_in, _ = control_plane
    speak = await http.post("/v1/rooms/nowhere/speak", json={"text": "anyone?"}, headers=admin)
    interrupt = await http.post("/v1/rooms/nowhere/interrupt", json={}, headers=admin)
    assert (speak.status_code, speak.json()["code"]) == (404, "unknown_room")
    assert (interrupt.status_code, interrupt.json()["code"]) == (404, "unknown_room")
    assert [(m, list(r.names)) for m, r, _ in stand_in.calls] == [("ListRooms", ["nowhere"])] * 2


async def test_explicit_dispatch_and_room_listing(control_plane):
    http, admin, stand_in, _ = control_plane
    resp = await http.post("/v1/rooms/lobby/agent", json={"metadata": "{\"voice\": \"zh\"}"}, headers=admin)
    assert resp.status_code == 201 and resp.json() == {"dispatch_id": "AD_1", "room": "lobby", "agent_name": "tts-agent"}
    method, req, claims = stand_in.calls[-1]
    assert method == "CreateDispatch" and (req.room, req.agent_name, req.metadata) == ("lobby", "tts-agent", '{"voice": "zh"}')
    assert claims.video.room_admin and claims.video.room == "lobby"
    rooms = (await http.get("/v1/rooms", headers=admin)).json()
    assert [(r["room"], r["num_participants"]) for r in rooms] == [("lobby", 2)]
    detail = await http.get("/v1/rooms/lobby", headers=admin)
    assert [p["kind"] for p in detail.json()["participants"]] == ["STANDARD", "AGENT"]
    assert (await http.get("/v1/rooms/nowhere", headers=admin)).status_code == 404


async def test_unreachable_livekit_is_503():
    import httpx
    from fastapi import FastAPI

    from agent.runtime import Agent
    from control_api import problems
    from control_api.limits import RateLimiter
    from control_api.livekit_mode import livekit_router

    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    settings = Settings(livekit_url=f"ws://127.0.0.1:{port}")
    agent = Agent(settings, shared_engines())
    app = FastAPI()
    app.state.agent, app.state.rate_limiter = agent, RateLimiter(600)
    problems.install(app)
    app.include_router(livekit_router(settings))
    admin = {"Authorization": f"Bearer {agent.tokens.mint('ops', admin=True)}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as http:
        resp = await http.get("/v1/rooms", headers=admin)
    assert resp.status_code == 503 and "unreachable" in resp.json()["detail"]


# -- worker: LiveKit agent dispatch --------------------------------------------------------

async def test_worker_registers_takes_a_job_reports_load_and_drains():
    """The worker side of LiveKit's agent protocol against a stand-in for the server's
    `/agent` WebSocket (no LiveKit server runs here): real protobuf messages both ways."""
    from aiohttp import web
    from livekit.protocol import agent as agent_pb

    from agent.transports.livekit_cli import DispatchWorker

    got: asyncio.Queue = asyncio.Queue()
    to_worker: asyncio.Queue = asyncio.Queue()
    auth: list[str] = []

    async def agent_endpoint(request):
        auth.append(request.headers["Authorization"].removeprefix("Bearer "))
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        async def pump_out():
            while True:
                await ws.send_bytes((await to_worker.get()).SerializeToString())

        out = asyncio.create_task(pump_out())
        async for frame in ws:
            await got.put(agent_pb.WorkerMessage.FromString(frame.data))
        out.cancel()
        return ws

    web_app = web.Application()
    web_app.router.add_get("/agent", agent_endpoint)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def next_of(kind: str) -> agent_pb.WorkerMessage:
        while True:
            msg = await asyncio.wait_for(got.get(), 10)
            if msg.WhichOneof("message") == kind:
                return msg

    settings = Settings(room_grace_s=0, voice="espeak:en-us", max_rooms=4)
    registry = RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice))
    joins: list[tuple[str, str]] = []

    async def connect(room, join_url, token):  # the rtc connection needs a server: record it
        joins.append((join_url, token))

    transport = LiveKitTransport(registry, connect=connect, publisher_factory=CapturedPublisher)
    worker = DispatchWorker(transport, url, "devkey", "secret", agent_name="reader")
    run = asyncio.create_task(worker.run())
    try:
        reg = await next_of("register")
        assert (reg.register.agent_name, reg.register.type) == ("reader", agent_pb.JobType.JT_ROOM)
        assert reg.register.allowed_permissions.agent and reg.register.allowed_permissions.can_publish_data
        assert lkapi.TokenVerifier("devkey", "secret").verify(auth[0]).video.agent
        await to_worker.put(agent_pb.ServerMessage(register=agent_pb.RegisterWorkerResponse(worker_id="W1")))
        job = agent_pb.Job(id="J1", agent_name="reader", room=lkapi.Room(name="stage"))
        await to_worker.put(agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job)))
        answer = (await next_of("availability")).availability
        assert answer.job_id == "J1" and answer.available and answer.participant_identity.startswith("reader-")
        await to_worker.put(agent_pb.ServerMessage(assignment=agent_pb.JobAssignment(job=job, token="JOIN-TOKEN")))
        running = (await next_of("update_job")).update_job
        assert (running.job_id, running.status) == ("J1", agent_pb.JobStatus.JS_RUNNING)
        assert joins == [(url, "JOIN-TOKEN")] and "stage" in transport.sessions
        load = (await next_of("update_worker")).update_worker
        while load.job_count != 1:
            load = (await next_of("update_worker")).update_worker
        assert load.load == pytest.approx(1 / 4) and load.status == agent_pb.WorkerStatus.WS_AVAILABLE

        await worker.drain(timeout=5)  # what SIGTERM does
        await asyncio.wait_for(run, 5)  # the registration closes cleanly
        after: list = []
        while not got.empty():
            after.append(got.get_nowait())
        kinds = [m.WhichOneof("message") for m in after]
        statuses = [m.update_worker.status for m in after if m.HasField("update_worker")]
        # once draining it only ever says full, and the job ends before the socket closes
        assert agent_pb.WorkerStatus.WS_FULL in statuses
        assert agent_pb.WorkerStatus.WS_AVAILABLE not in statuses[statuses.index(agent_pb.WorkerStatus.WS_FULL):]
        done = after[kinds.index("update_job")].update_job
        assert (done.job_id, done.status) == ("J1", agent_pb.JobStatus.JS_SUCCESS)
        assert transport.sessions == {}
    finally:
        run.cancel()
        await runner.cleanup()


def test_cli_has_worker_and_join():
    from agent.cli import build_parser

    args = build_parser().parse_args(["worker", "--url", "ws://127.0.0.1:7880", "--api-key", "k", "--api-secret", "s"])
    assert (args.command, args.agent_name) == ("worker", "tts-agent")
    args = build_parser().parse_args(["join", "--room", "stage", "--url", "ws://x", "--api-key", "k", "--api-secret", "s"])
    assert (args.command, args.room) == ("join", "stage")
