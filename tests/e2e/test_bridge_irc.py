"""`tts-agent bridge irc` against a real IRC server (Debian's ngIRCd on a loopback port): a
viewer posts to the channel, the bridge reads it and posts it to the real agent, and a real
aiortc peer in the room hears it (`started`/`finished`, captions with the template applied)
or sees why not (`dropped`: duplicate, filtered, rate_limited). The server is stopped and
started again mid-stream; the bridge reconnects by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from bridges.backoff import Backoff
from bridges.irc import IrcBridge
from bridges.ircmsg import format_line, parse
from bridges.lines import LineFilter
from bridges.sink import AdminToken, SpeakSink
from tests.conftest import start_agent, stop_agent

NGIRCD = "/usr/sbin/ngircd"
CHANNEL = "#stream"
ROOM = "irc-room"

pytestmark = pytest.mark.skipif(shutil.which(NGIRCD) is None, reason="ngircd is not installed (apt-get install ngircd)")


class NgircdServer:
    """ngIRCd in the foreground on 127.0.0.1:port, with a config of its own in a temp folder."""

    def __init__(self, port: int | None = None, ping_timeout_s: int = 5):
        self.port = port or _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="ngircd-"))
        (self.folder / "conf.d").mkdir()
        self.conf = self.folder / "ngircd.conf"
        self.conf.write_text(f"""[Global]
Name = irc.test
Info = tts-agent test server
AdminInfo1 = tts-agent tests
AdminInfo2 = loopback
AdminEMail = nobody@localhost
Listen = 127.0.0.1
Ports = {self.port}
MotdPhrase = test
[Limits]
MaxConnectionsIP = 100
# Twitch-style anonymous nicks (justinfan<digits>) are longer than the RFC's 9
MaxNickLength = 30
# no penalty delays: a test flood reaches the bridge at once
MaxPenaltyTime = 0
PingTimeout = {ping_timeout_s}
PongTimeout = {ping_timeout_s}
[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {self.folder / 'conf.d'}
""")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 10) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            NGIRCD, "-n", "-f", str(self.conf), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        # ngIRCd prints "Now listening on ..." once its socket is open
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"ngircd exited with {await self.proc.wait()}")
                if b"Now listening on" in line:
                    break
        self._drain = asyncio.create_task(self._discard_output())

    async def _discard_output(self) -> None:
        while await self.proc.stdout.readline():
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            await self._drain

    async def cleanup(self) -> None:
        await self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer:
    """A chat user posting to the channel: a few raw IRC lines (registration, JOIN, PRIVMSG)."""

    def __init__(self, nick: str):
        self.nickname = nick
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def _send(self, *params: str) -> None:
        self.writer.write(format_line(*params).encode() + b"\r\n")

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self._send("NICK", self.nickname)
        self._send("USER", self.nickname, "0", "*", self.nickname)
        joined = False
        while not joined:
            msg = parse((await self.reader.readline()).decode().rstrip("\r\n"))
            if msg.command == "PING":
                self._send("PONG", msg.param(0))
            elif msg.command == "001":
                self._send("JOIN", CHANNEL)
            elif msg.command == "JOIN" and msg.nick == self.nickname:
                joined = True
        self._keepalive = asyncio.create_task(self._answer_pings())

    async def _answer_pings(self) -> None:
        while line := await self.reader.readline():
            msg = parse(line.decode().rstrip("\r\n"))
            if msg.command == "PING":
                self._send("PONG", msg.param(0))

    async def message(self, target: str, text: str) -> None:
        self._send("PRIVMSG", target, text)
        await self.writer.drain()

    async def disconnect(self) -> None:
        self._keepalive.cancel()
        self.writer.close()


async def viewer(server: NgircdServer, nick: str) -> Viewer:
    v = Viewer(nick)
    await asyncio.wait_for(v.connect(server.port), 10)
    return v


async def until(condition, timeout: float = 30) -> None:
    """Wait for a condition on recorded events or counters, re-checked as they change."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def spoken_text(client, uid: str) -> str:
    """The sentence captions of an utterance: the text as the room spoke it, template applied."""
    return " ".join(c["text"] for c in client.events_of("caption") if c["id"] == uid and c.get("kind") == "sentence")


@pytest.fixture
async def stack():
    """ngIRCd, the agent with a peer in the room, and the bridge as a task of this loop."""
    server = NgircdServer()
    await server.start()
    running = await start_agent()
    client = await running.client(ROOM)
    client.send({"type": "configure", "speed": 2.0, "danmu": {
        "template": "{from} says {text}", "dedupe_s": 60, "blocked_words": ["spoiler"], "per_sender_per_min": 3}})
    client.send({"type": "ping", "t": 1})
    await client.wait_event("pong", t=1)  # the data channel is ordered: the rules are in place
    sink = SpeakSink(running.base_url, ROOM, AdminToken(api_key="devkey", api_secret="secret", room=ROOM),
                     bridge="irc", line_filter=LineFilter(ignore_senders=["otherbot"]))
    bridge = IrcBridge(server.address, CHANNEL, sink, backoff=Backoff(0.2, 1.0))
    task = asyncio.create_task(bridge.run())
    sink.start()
    await asyncio.wait_for(bridge.wait_joined(), 15)
    viewers: list[Viewer] = []
    try:
        yield server, client, bridge, sink, viewers
    finally:
        for v in viewers:
            if v.connected:
                await v.disconnect()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        await client.close()
        await stop_agent(running)
        await server.cleanup()


async def test_chat_lines_follow_the_rooms_danmu_rules(stack):
    server, client, bridge, sink, viewers = stack
    alice = await viewer(server, "alice")
    flood = await viewer(server, "flooder")
    bot = await viewer(server, "otherbot")
    viewers += [alice, flood, bot]

    await alice.message(CHANNEL, "hello there")
    started = await client.wait_event("started", timeout=20)
    await client.wait_event("finished", id=started["id"])
    assert spoken_text(client, started["id"]).split() == ["alice", "says", "hello", "there"]

    await alice.message(CHANNEL, "Hello   THERE")  # the same text after normalising case and spaces
    assert (await client.wait_event("dropped", reason="duplicate"))["id"] != started["id"]

    await alice.message(CHANNEL, "no spoiler please")
    await client.wait_event("dropped", reason="filtered")

    await bot.message(CHANNEL, "I am a bot")  # --ignore-sender: never reaches the room
    await alice.message(CHANNEL, "!uptime")  # a chat command: never reaches the room
    await until(lambda: sink.counts["dropped:ignored_sender"] == 1 and sink.counts["dropped:command"] == 1)

    for i in range(5):  # three a minute are allowed; the fourth and fifth are not
        await flood.message(CHANNEL, f"flood number {i}")
    await until(lambda: len(client.events_of("dropped")) == 4)
    assert sorted(e["reason"] for e in client.events_of("dropped")) == [
        "duplicate", "filtered", "rate_limited", "rate_limited"]

    await until(lambda: len(client.events_of("finished")) == 4)
    texts = [spoken_text(client, e["id"]) for e in client.events_of("started")]
    assert [t.split()[:2] for t in texts] == [["alice", "says"]] + [["flooder", "says"]] * 3
    assert not client.events_of("error")
    assert sink.counts["in"] == 10 and sink.counts["spoken"] == 4
    assert sink.counts["dropped:rate_limited"] == 2
    assert bridge.joins == 1


async def test_the_bridge_answers_keepalives_and_reconnects_after_a_server_restart(stack):
    server, client, bridge, sink, viewers = stack
    # ngIRCd pings an idle client after 5 s and drops it 5 s later without a PONG
    await until(lambda: bridge.pings_answered >= 2, timeout=30)
    assert bridge.joins == 1

    before = await viewer(server, "before")
    viewers.append(before)
    await before.message(CHANNEL, "first line")
    first = await client.wait_event("started", timeout=20)
    await client.wait_event("finished", id=first["id"])

    await server.stop()
    await server.start()  # same port, a fresh server: the bridge must find it by itself
    await asyncio.wait_for(bridge.wait_joined(more_than=1), 30)
    assert bridge.joins == 2

    after = await viewer(server, "after")
    viewers.append(after)
    await after.message(CHANNEL, "back again")
    await until(lambda: len(client.events_of("finished")) == 2)
    second = client.events_of("started")[1]
    assert spoken_text(client, second["id"]).split() == ["after", "says", "back", "again"]
    assert sink.counts["spoken"] == 2
