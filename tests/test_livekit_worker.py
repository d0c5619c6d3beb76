"""`tts-agent worker` against a stand-in for livekit-server's agent dispatch.

No LiveKit server can run here. `AgentServerStandIn` speaks the server's side of the
`/agent` WebSocket with real protobuf messages, and does what livekit-server v1.9 does
where it matters to a worker (read in pkg/agent/worker.go, pkg/service/agentservice.go and
protocol's agent/token.go):
- registration: the worker's `allowed_permissions`, or the server's defaults when absent,
  become the grants of every job token;
- assignment: the job token is `BuildAgentToken`'s: the availability answer's identity,
  name, metadata and attributes (plus `lk.agent.name`), kind agent, valid one hour;
- scoring: a worker is worth `max(0, 0.7 - load)` to the server, and only while it says
  `WS_AVAILABLE`.
The rtc connection (`connect`) and `local_participant` are the other stand-ins, as in
tests/test_livekit_transport.py: `connect` verifies the job token, and the publisher
refuses attribute updates the token does not allow, as the server does.
"""

from __future__ import annotations

import asyncio
import datetime

import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from agent.rooms import RoomRegistry
from agent.settings import Settings
from agent.transports.livekit import LiveKitTransport
from agent.transports.livekit_cli import DispatchWorker, join_token
from engines.registry import VoiceRegistry
from tests.conftest import shared_engines
from tests.test_livekit_transport import CapturedPublisher, participant, packet

KEY, SECRET = "devkey", "secret"
TARGET_LOAD = 0.7  # agent.DefaultTargetLoad
AVAILABLE, FULL = agent_pb.WorkerStatus.WS_AVAILABLE, agent_pb.WorkerStatus.WS_FULL


def server_score(status: int, load: float) -> float:
    """What a worker adds to its node's affinity for a job (AgentHandler.JobRequestAffinity)."""
    return max(0.0, TARGET_LOAD - load) if status == AVAILABLE else 0.0


def build_agent_token(room: str, answer: agent_pb.AvailabilityResponse, agent_name: str,
                      permissions: models_pb.ParticipantPermission) -> str:
    """protocol agent.BuildAgentToken, as pkg/agent/worker.go AssignJob calls it."""
    grants = api.VideoGrants(
        room_join=True, agent=True, room=room, can_subscribe=permissions.can_subscribe,
        can_publish=permissions.can_publish, can_publish_data=permissions.can_publish_data,
        hidden=permissions.hidden, can_update_own_metadata=permissions.can_update_metadata,
        can_subscribe_metrics=permissions.can_subscribe_metrics)
    attributes = dict(answer.participant_attributes)
    attributes["lk.agent.name"] = agent_name
    return (api.AccessToken(KEY, SECRET).with_grants(grants).with_identity(answer.participant_identity)
            .with_name(answer.participant_name).with_kind("agent").with_ttl(datetime.timedelta(hours=1))
            .with_metadata(answer.participant_metadata).with_attributes(attributes).to_jwt())


class AgentServerStandIn:
    def __init__(self):
        self.inbox: asyncio.Queue[agent_pb.WorkerMessage] = asyncio.Queue()
        self.registration: agent_pb.RegisterWorkerRequest | None = None
        self.permissions: models_pb.ParticipantPermission | None = None
        self.accepting = True  # False: the server is gone, connections are refused
        self._ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "AgentServerStandIn":
        app = web.Application()
        app.router.add_get("/agent", self._endpoint)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _endpoint(self, request: web.Request):
        if not self.accepting:
            return web.Response(status=503)
        claims = api.TokenVerifier(KEY, SECRET).verify(request.headers["Authorization"].removeprefix("Bearer "))
        assert claims.video.agent, "the /agent endpoint takes only tokens with the agent grant"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        reg = agent_pb.WorkerMessage.FromString(await ws.receive_bytes())
        assert reg.WhichOneof("message") == "register"
        self.registration = reg.register
        # worker.go HandleRegister: the request's permissions, or these when it sends none
        self.permissions = reg.register.allowed_permissions if reg.register.HasField("allowed_permissions") else \
            models_pb.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True,
                                            can_update_metadata=True)
        self._ws = ws
        await ws.send_bytes(agent_pb.ServerMessage(
            register=agent_pb.RegisterWorkerResponse(worker_id="W1")).SerializeToString())
        async for frame in ws:
            await self.inbox.put(agent_pb.WorkerMessage.FromString(frame.data))
        self._ws = None
        return ws

    async def send(self, **message) -> None:
        await self._ws.send_bytes(agent_pb.ServerMessage(**message).SerializeToString())

    async def next_of(self, kind: str, where=lambda m: True) -> agent_pb.WorkerMessage:
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), 20)
            if msg.WhichOneof("message") == kind and where(getattr(msg, kind)):
                return msg

    async def ask(self, job: agent_pb.Job) -> agent_pb.AvailabilityResponse:
        await self.send(availability=agent_pb.AvailabilityRequest(job=job))
        return (await self.next_of("availability", lambda a: a.job_id == job.id)).availability

    async def assign(self, job: agent_pb.Job) -> str:
        """Availability, then the assignment with the job token the server builds."""
        answer = await self.ask(job)
        assert answer.available, f"worker refused {job.id}"
        token = build_agent_token(job.room.name, answer, self.registration.agent_name, self.permissions)
        await self.send(assignment=agent_pb.JobAssignment(job=job, token=token))
        return token

    async def drop(self) -> None:
        """The server goes away: the connection closes and new ones are refused."""
        self.accepting = False
        await self._ws.close()


class Harness:
    """A worker with a real LiveKitTransport; rtc connections and local participants are
    the stand-ins described above."""

    def __init__(self, server: AgentServerStandIn, max_rooms: int = 4):
        settings = Settings(room_grace_s=0, voice="espeak:en-us", max_rooms=max_rooms)
        self.registry = RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice))
        self.claims: dict[int, object] = {}  # id(rtc.Room) -> verified job token
        self.publishers: dict[str, CapturedPublisher] = {}  # by identity
        self.connecting = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()  # cleared by a test that holds joins in `connect`
        self.transport = LiveKitTransport(self.registry, connect=self._connect, publisher_factory=self._publisher)
        self.worker = DispatchWorker(self.transport, server.url, KEY, SECRET, agent_name="reader")

    async def _connect(self, room: rtc.Room, url: str, token: str) -> None:
        self.claims[id(room)] = api.TokenVerifier(KEY, SECRET).verify(token)
        self.connecting.set()
        await self.release.wait()

    def _publisher(self, room: rtc.Room) -> CapturedPublisher:
        claims = self.claims.get(id(room))  # none: a room attached directly, not through a job
        publisher = CapturedPublisher(room, claims)
        self.publishers[claims.identity if claims else str(id(room))] = publisher
        return publisher


@pytest.fixture
async def dispatch():
    server = await AgentServerStandIn().start()
    harness = Harness(server)
    run = asyncio.create_task(harness.worker.run())
    await harness.worker.registered.wait()
    yield server, harness
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await harness.transport.drain(timeout=0)
    await server.close()


def job(job_id: str, room: str, metadata: str = "") -> agent_pb.Job:
    return agent_pb.Job(id=job_id, agent_name="reader", room=api.Room(name=room), metadata=metadata)


# -- 1. the job token lets the agent set lk.agent.state -----------------------------------

async def test_job_token_lets_the_agent_say_its_state(dispatch):
    server, h = dispatch
    perms = server.registration.allowed_permissions
    # what livekit-agents' default WorkerPermissions sends
    assert (perms.can_publish, perms.can_subscribe, perms.can_publish_data, perms.can_update_metadata,
            perms.hidden, perms.agent, list(perms.can_publish_sources)) == (True, True, True, True, False, True, [])
    token = await server.assign(job("J1", "stage"))
    await server.next_of("update_job", lambda u: u.status == agent_pb.JobStatus.JS_RUNNING)
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.kind == "agent" and claims.video.can_update_own_metadata
    # the agent is `initializing` from the moment it appears in the room
    assert claims.attributes == {"lk.agent.name": "reader", "lk.agent.state": "initializing"}
    pub = h.publishers[claims.identity]
    await h.transport.sessions["stage"].outbox.flush(5)
    assert pub.refused == [] and pub.states == ["listening"]
    assert pub.attributes == {"lk.agent.name": "reader", "lk.agent.state": "listening"}


def test_join_token_is_a_job_token():
    claims = api.TokenVerifier(KEY, SECRET).verify(join_token(KEY, SECRET, "stage", "tts-agent"))
    assert claims.kind == "agent" and claims.video.agent and claims.video.can_update_own_metadata
    assert claims.attributes == {"lk.agent.name": "tts-agent", "lk.agent.state": "initializing"}


# -- 3. full where the server stops dispatching ---------------------------------------------

async def test_worker_is_full_exactly_where_the_server_stops_scoring_it():
    """For every load, the worker says available exactly when the server would score it
    above 0: never available yet passed over (rooms silently not dispatched)."""
    server = await AgentServerStandIn().start()  # not connected: only its rule is used
    h = Harness(server, max_rooms=7)  # loads 0, 1/7 … 5/7 = 0.714 (between 0.7 and 0.75) …
    try:
        seen = []
        for rooms in range(8):
            if rooms:
                await h.transport.attach(rtc.Room(), f"r{rooms}")
            update = h.worker.status_message().update_worker
            seen.append((rooms, update.status == AVAILABLE, server_score(update.status, update.load) > 0))
            assert h.worker.available == (update.status == AVAILABLE)  # what it answers a job request
        assert [(n, avail) for n, avail, _ in seen] == [(n, n / 7 < TARGET_LOAD) for n in range(8)]
        assert all(avail == scored for _, avail, scored in seen), seen
    finally:
        await h.transport.drain(timeout=0)
        await server.close()


# -- 4. dispatch metadata ---------------------------------------------------------------------

async def test_dispatch_metadata_reaches_the_room(dispatch):
    server, h = dispatch
    german = h.registry.voices.resolve("de").id
    token = await server.assign(job("J1", "stage", '{"voice": "de", "danmu": {"max_queue": 2}}'))
    await server.next_of("update_job", lambda u: u.status == agent_pb.JobStatus.JS_RUNNING)
    speaker = h.transport.sessions["stage"].room.speaker
    assert speaker.voice.id == german and speaker.danmu.rules.max_queue == 2
    assert api.TokenVerifier(KEY, SECRET).verify(token).video.room == "stage"


# -- 5. worker edges ----------------------------------------------------------------------------

async def test_termination_while_joining_makes_the_agent_leave(dispatch):
    server, h = dispatch
    h.release.clear()  # the join waits in `connect`
    await server.assign(job("J1", "stage"))
    await asyncio.wait_for(h.connecting.wait(), 10)
    await server.send(termination=agent_pb.JobTermination(job_id="J1"))
    # a later message's answer proves the termination was read first (one connection, in order)
    await server.ask(job("J2", "elsewhere"))
    h.release.set()
    done = (await server.next_of("update_job", lambda u: u.job_id == "J1")).update_job
    assert done.status == agent_pb.JobStatus.JS_SUCCESS  # never RUNNING: it left at once
    assert "stage" not in h.transport.sessions and h.registry.get("stage") is None
    assert h.worker.jobs == {}


async def test_two_requests_for_one_room_before_the_join_take_one_agent(dispatch):
    server, h = dispatch
    h.release.clear()
    first = await server.ask(job("J1", "stage"))
    second = await server.ask(job("J2", "stage"))
    assert first.available and not second.available
    token = build_agent_token("stage", first, "reader", server.permissions)
    await server.send(assignment=agent_pb.JobAssignment(job=job("J1", "stage"), token=token))
    await asyncio.wait_for(h.connecting.wait(), 10)
    assert not (await server.ask(job("J3", "stage"))).available  # joining: still one agent
    assert (await server.ask(job("J4", "other"))).available  # other rooms are not held
    h.release.set()
    await server.next_of("update_job", lambda u: u.job_id == "J1" and u.status == agent_pb.JobStatus.JS_RUNNING)
    assert not (await server.ask(job("J5", "stage"))).available  # joined


async def test_stop_during_reconnect_back_off_drains_and_exits():
    """SIGTERM sets `stop`; while the worker waits to reconnect, its rooms are still joined
    (the rtc connections do not go through /agent): they are drained, then it returns."""
    from agent.transports.livekit_cli import serve_worker  # the loop `tts-agent worker` runs

    server = await AgentServerStandIn().start()
    h = Harness(server)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_worker(h.worker, stop, drain_timeout=30))  # the default
    try:
        await asyncio.wait_for(h.worker.registered.wait(), 10)
        await server.assign(job("J1", "stage"))
        await server.next_of("update_job", lambda u: u.status == agent_pb.JobStatus.JS_RUNNING)
        session = h.transport.sessions["stage"]
        session.lk_room.emit("participant_connected", participant("alice"))
        session.lk_room.emit("data_received", packet(
            {"type": "synthesize", "id": "long", "text": "A sentence that is still being read when the server goes."},
            participant("alice")))
        pub = session.publisher
        await pub.wait_for(lambda: pub.events("started"))
        await server.drop()
        await asyncio.wait_for(h.worker.reconnecting.wait(), 10)
        stop.set()
        await asyncio.wait_for(serving, 60)
        assert session.left.is_set() and h.transport.sessions == {} and h.registry.rooms == {}
        assert h.registry.draining
        # drained, not cut: what was playing was let finish within the drain timeout
        assert [e["id"] for e in pub.events("finished")] == ["long"] and not pub.events("interrupted")
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await h.transport.drain(timeout=0)
        await server.close()
