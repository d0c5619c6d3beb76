"""`tts-agent worker` and `tts-agent join`: the agent in LiveKit rooms.

`worker` registers with the LiveKit server as an agent worker (LiveKit's own agent
dispatch: the `/agent` WebSocket of the server, protobuf messages from
`livekit-protocol`), takes the rooms LiveKit assigns, reports its load so LiveKit sends
rooms to the least loaded worker, and drains on SIGTERM. The official `livekit-agents`
worker is not used: every release pins `livekit` to an exact older version (1.8.9 pins
livekit==1.1.21, this project runs 1.2.x) and pulls in openai, opentelemetry and more.

`join` joins one room directly with a token minted from the API key pair.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import secrets
import signal
from urllib.parse import urlparse, urlunparse

import aiohttp
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from .livekit_state import ATTR_AGENT_NAME, ATTR_AGENT_STATE, INITIALIZING

log = logging.getLogger(__name__)

DEFAULT_AGENT_NAME = "tts-agent"
STATUS_INTERVAL_S = 2.5  # how often load goes to the server (livekit-agents uses the same)
# livekit-server scores a worker by max(0, 0.7 - load) (agentservice.go, agent.DefaultTargetLoad):
# at 0.7 it gets no more rooms, so at 0.7 the worker says it is full (livekit-agents: 0.7 too)
LOAD_THRESHOLD = 0.7
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: rooms still speaking get this long to finish
# An accepted availability holds its room this long for the assignment: the server gives up
# after 10 s (agent.AssignJobTimeout); a little more covers the message in flight.
ASSIGNMENT_TIMEOUT_S = 15.0
# What the agent participant carries from the first moment it is in the room: the server
# copies the availability answer's attributes into the job token (protocol agent.BuildAgentToken).
JOIN_ATTRIBUTES = {ATTR_AGENT_STATE: INITIALIZING}


def agent_ws_url(url: str) -> str:
    """The worker endpoint of a LiveKit server: ws(s)://host[/path]/agent."""
    parts = urlparse(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunparse((scheme, parts.netloc, parts.path.rstrip("/") + "/agent", "", "", ""))


def worker_token(key: str, secret: str) -> str:
    return api.AccessToken(key, secret).with_grants(api.VideoGrants(agent=True)).to_jwt()


def join_token(key: str, secret: str, room: str, identity: str, ttl_s: int = 6 * 3600) -> str:
    # the grants and attributes a job token from the server has (agent.BuildAgentToken)
    grants = api.VideoGrants(room_join=True, room=room, agent=True, can_publish=True, can_publish_data=True,
                             can_subscribe=True, can_update_own_metadata=True)
    return (api.AccessToken(key, secret).with_identity(identity).with_name(DEFAULT_AGENT_NAME).with_kind("agent")
            .with_grants(grants).with_attributes({ATTR_AGENT_NAME: DEFAULT_AGENT_NAME, **JOIN_ATTRIBUTES})
            .with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt())


def register_message(agent_name: str, version: str) -> agent_pb.WorkerMessage:
    msg = agent_pb.WorkerMessage()
    msg.register.type = agent_pb.JobType.JT_ROOM
    msg.register.agent_name = agent_name
    msg.register.version = version
    # what livekit-agents' WorkerPermissions sends by default; the server puts exactly these
    # grants in each job token, and can_update_metadata is what lets the agent set lk.agent.state
    msg.register.allowed_permissions.CopyFrom(models_pb.ParticipantPermission(
        can_publish=True, can_subscribe=True, can_publish_data=True, can_update_metadata=True, hidden=False,
        agent=True))
    return msg


class DispatchWorker:
    """One registration with a LiveKit server; jobs become `transport.join` calls."""

    def __init__(self, transport, url: str, key: str, secret: str, *, agent_name: str = DEFAULT_AGENT_NAME,
                 load_threshold: float = LOAD_THRESHOLD, version: str = "1"):
        self.transport = transport
        self.url, self.key, self.secret = url, key, secret
        self.agent_name = agent_name
        self.load_threshold = load_threshold
        self.version = version
        self.worker_id = ""
        self.draining = False
        self.jobs: dict[str, str] = {}  # job id -> room name, from assignment until the agent left
        self.held: dict[str, str] = {}  # room name -> job id: accepted, not yet assigned
        self.terminated: set[str] = set()  # jobs the server ended while the agent was joining
        self.registered = asyncio.Event()
        self.reconnecting = asyncio.Event()  # set while the connection is down, waiting to retry
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Register and serve until `drain()`; the caller retries on connection loss."""
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {worker_token(self.key, self.secret)}"}
            async with http.ws_connect(agent_ws_url(self.url), headers=headers, heartbeat=30) as ws:
                self._ws = ws
                await ws.send_bytes(register_message(self.agent_name, self.version).SerializeToString())
                first = agent_pb.ServerMessage.FromString(await ws.receive_bytes())
                if not first.HasField("register"):
                    raise ConnectionError("the server did not answer the registration")
                self.worker_id = first.register.worker_id
                self.registered.set()
                log.info("registered with livekit", extra={"worker": self.worker_id, "agent_name": self.agent_name})
                status = asyncio.create_task(self._report_status(), name="livekit-worker-status")
                try:
                    async for frame in ws:
                        if frame.type == aiohttp.WSMsgType.BINARY:
                            self._on_message(agent_pb.ServerMessage.FromString(frame.data))
                        elif frame.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                finally:
                    status.cancel()
                    self._ws = None

    def _on_message(self, msg: agent_pb.ServerMessage) -> None:
        which = msg.WhichOneof("message")
        if which == "availability":
            self._send(self._availability(msg.availability.job))
        elif which == "assignment":
            self._spawn(self._start_job(msg.assignment))
        elif which == "termination":
            self._terminate(msg.termination.job_id)

    def _terminate(self, job_id: str) -> None:
        room = self.jobs.get(job_id)
        if room is None:
            return  # not ours, or already over
        session = self.transport.sessions.get(room)
        if session is not None:
            self._spawn(self.transport.leave(session))
        else:  # still joining: `_start_job` leaves as soon as the join is done
            self.terminated.add(job_id)

    def _availability(self, job: agent_pb.Job) -> agent_pb.WorkerMessage:
        room = job.room.name
        msg = agent_pb.WorkerMessage()
        msg.availability.job_id = job.id
        # one agent per room: a room already joined, being joined or promised to another job
        # (two requests before the first join is done) is refused
        free = room not in self.transport.sessions and room not in self.jobs.values() \
            and self.held.get(room, job.id) == job.id
        msg.availability.available = self.available and free
        if msg.availability.available:
            self._hold(room, job.id)
            msg.availability.participant_identity = f"{self.agent_name}-{secrets.token_hex(3)}"
            msg.availability.participant_name = self.agent_name
            msg.availability.participant_attributes[ATTR_AGENT_NAME] = self.agent_name
            msg.availability.participant_attributes.update(JOIN_ATTRIBUTES)
        return msg

    def _hold(self, room: str, job_id: str) -> None:
        self.held[room] = job_id

        def expire() -> None:  # the server assigned the job elsewhere, or gave up
            if self.held.get(room) == job_id:
                del self.held[room]

        asyncio.get_running_loop().call_later(ASSIGNMENT_TIMEOUT_S, expire)

    def load(self) -> float:
        """The transport's load, counting rooms promised but not yet joined (as livekit-agents
        counts its reserved slots): two quick requests cannot both take the last place."""
        waiting = sum(1 for room in set(self.held) | set(self.jobs.values()) if room not in self.transport.sessions)
        max_rooms = max(1, self.transport.rooms.settings.max_rooms)
        return min(1.0, self.transport.load() + waiting / max_rooms)

    @property
    def available(self) -> bool:
        return not self.draining and self.load() < self.load_threshold

    async def _start_job(self, assignment: agent_pb.JobAssignment) -> None:
        job = assignment.job
        room = job.room.name
        if self.held.get(room) == job.id:
            del self.held[room]
        self.jobs[job.id] = room
        try:
            try:
                session = await self.transport.join(assignment.url or self.url, assignment.token, room, job.metadata)
            except Exception as exc:
                log.warning("job %s: cannot join room %s: %s", job.id, room, exc)
                self._send(_job_status(job.id, agent_pb.JobStatus.JS_FAILED, str(exc)))
                return
            if job.id in self.terminated:
                log.info("job %s ended by the server while joining %s: leaving", job.id, room)
                await self.transport.leave(session)
            else:
                self._send(_job_status(job.id, agent_pb.JobStatus.JS_RUNNING))
                await session.left.wait()
            self._send(_job_status(job.id, agent_pb.JobStatus.JS_SUCCESS))
        finally:
            self.jobs.pop(job.id, None)
            self.terminated.discard(job.id)

    def status_message(self) -> agent_pb.WorkerMessage:
        full = self.draining or not self.available
        msg = agent_pb.WorkerMessage()
        msg.update_worker.status = agent_pb.WorkerStatus.WS_FULL if full else agent_pb.WorkerStatus.WS_AVAILABLE
        msg.update_worker.load = self.load()
        msg.update_worker.job_count = len(self.jobs)
        return msg

    async def _report_status(self) -> None:
        while True:
            self._send(self.status_message())
            await asyncio.sleep(STATUS_INTERVAL_S)  # a periodic report, not a wait for a condition

    def _send(self, msg: agent_pb.WorkerMessage) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            self._spawn(ws.send_bytes(msg.SerializeToString()))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Take no more jobs (tell the server at once), let rooms finish, leave, close."""
        self.draining = True
        self._send(self.status_message())
        await self.transport.drain(timeout)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._ws is not None:
            await self._ws.close()


async def serve_worker(worker: DispatchWorker, stop: asyncio.Event, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Keep `worker` registered (reconnecting with back-off) until `stop` (SIGTERM), then
    drain. Rooms joined stay joined while the connection to the server is down, so a stop
    during the back-off drains them too."""
    delay = 1.0
    while not stop.is_set():
        run = asyncio.create_task(worker.run())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await worker.drain(drain_timeout)
            await asyncio.gather(run, return_exceptions=True)
            return
        stopping.cancel()
        exc = run.exception()
        delay = 1.0 if worker.registered.is_set() else min(delay * 2, 30.0)
        worker.registered.clear()
        log.warning("livekit worker connection ended (%s); reconnecting in %.0f s", exc, delay)
        worker.reconnecting.set()
        try:
            await asyncio.wait_for(stop.wait(), delay)  # back off, but stop at once on SIGTERM
        except asyncio.TimeoutError:
            pass
        finally:
            worker.reconnecting.clear()
    await worker.drain(drain_timeout)  # stopped while backing off: no connection, rooms still joined


def _job_status(job_id: str, status: int, error: str = "") -> agent_pb.WorkerMessage:
    msg = agent_pb.WorkerMessage()
    msg.update_job.job_id = job_id
    msg.update_job.status = status
    msg.update_job.error = error
    return msg


# -- commands -----------------------------------------------------------------------------

def _add_livekit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("LIVEKIT_URL"), help="LiveKit server URL (env LIVEKIT_URL)")
    p.add_argument("--api-key", default=os.environ.get("LIVEKIT_API_KEY"), help="env LIVEKIT_API_KEY")
    p.add_argument("--api-secret", default=os.environ.get("LIVEKIT_API_SECRET"), help="env LIVEKIT_API_SECRET")
    p.add_argument("--voice", help="default voice id or language tag")
    p.add_argument("--config", help="TOML or JSON settings file")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S,
                   help="on SIGTERM, seconds rooms may keep speaking before the agent leaves")


def register(subparsers) -> None:
    worker = subparsers.add_parser("worker", help="take rooms through LiveKit agent dispatch")
    _add_livekit_flags(worker)
    worker.add_argument("--agent-name", default=DEFAULT_AGENT_NAME, help="the name dispatch asks for")
    worker.set_defaults(func=cmd_worker)
    join = subparsers.add_parser("join", help="join one LiveKit room directly")
    _add_livekit_flags(join)
    join.add_argument("--room", required=True)
    join.add_argument("--identity", default=DEFAULT_AGENT_NAME)
    join.set_defaults(func=cmd_join)


def _check(args) -> None:
    missing = [flag for flag, value in (("--url", args.url), ("--api-key", args.api_key),
                                        ("--api-secret", args.api_secret)) if not value]
    if missing:
        raise SystemExit(f"tts-agent {args.command}: missing {', '.join(missing)} (or LIVEKIT_* in the environment)")


def _runtime(args):
    from engines import default_engines
    from engines.registry import VoiceRegistry

    from ..logs import setup_logging
    from ..rooms import RoomRegistry
    from ..settings import load_settings
    from .livekit import LiveKitTransport

    settings = load_settings(args.config, voice=args.voice, livekit_url=args.url)
    setup_logging(settings.log_format, settings.log_level)
    engines = default_engines(settings)
    registry = RoomRegistry(settings, VoiceRegistry(engines, settings.voice))
    return LiveKitTransport(registry), engines


def _on_sigterm(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def cmd_worker(args) -> int:
    _check(args)

    async def main() -> None:
        transport, engines = _runtime(args)
        worker = DispatchWorker(transport, args.url, args.api_key, args.api_secret, agent_name=args.agent_name)
        stop = asyncio.Event()
        _on_sigterm(stop)
        await serve_worker(worker, stop, args.drain_timeout)
        _close_engines(engines)

    asyncio.run(main())
    return 0


def cmd_join(args) -> int:
    _check(args)

    async def main() -> None:
        transport, engines = _runtime(args)
        token = join_token(args.api_key, args.api_secret, args.room, args.identity)
        session = await transport.join(args.url, token, args.room)
        print(f"tts-agent: in LiveKit room {args.room!r} as {args.identity!r}", flush=True)
        stop = asyncio.Event()
        _on_sigterm(stop)
        left = asyncio.create_task(session.left.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({left, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await transport.drain(args.drain_timeout)
        _close_engines(engines)

    asyncio.run(main())
    return 0


def _close_engines(engines) -> None:
    for engine in engines:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
