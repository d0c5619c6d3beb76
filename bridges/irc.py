"""IRC chat in (Twitch chat is IRC): read one channel, hand each line, and each moderator's
removal, to the sink. `ircconn` speaks the protocol, `twitch` reads what the lines mean; the
reconnect loop is here: a chat bridge must outlive any server restart, so it reconnects
forever with exponential backoff (at once when Twitch asks with RECONNECT).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict

from . import metrics
from .backoff import Backoff
from .ircconn import IrcClosed, IrcConnection
from .ircmsg import IrcMessage
from .lines import Retract
from .sink import SpeakSink
from .twitch import chat_line, login_of, moderation

log = logging.getLogger("tts_agent.bridge.irc")

KNOWN_LOGINS = 10_000  # login -> the names read aloud for it, for CLEARCHAT; the stalest are forgotten


def anonymous_nick() -> str:
    """Twitch (and most servers) accept `justinfan<digits>` as a read-only login without a password."""
    return f"justinfan{random.randint(10_000, 99_999_999)}"


def parse_server(value: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`); the port defaults to 6667."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "6667"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port: {value!r}")
    return host, int(port)


class IrcBridge:
    def __init__(self, server: str, channel: str, sink: SpeakSink, *,
                 tls: bool = False, tls_verify: bool = True, nick: str | None = None, password: str | None = None,
                 backoff: Backoff | None = None):
        self.host, self.port = parse_server(server)
        if not channel or channel[0] not in "#&+!":
            raise ValueError(f"not an IRC channel name: {channel!r} (e.g. '#name')")
        self.channel = channel
        self.sink = sink
        self.tls, self.tls_verify, self.password = tls, tls_verify, password
        self.nick = nick or anonymous_nick()
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.joins = 0  # connections that reached the channel; tests wait on it growing
        self.pings_answered = 0  # the server's keep-alives
        self.caps: set[str] = set()  # capabilities the server granted on the last connection
        self._names: OrderedDict[str, set[str]] = OrderedDict()  # login -> display names read
        self._joined = asyncio.Condition()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}{' (tls)' if self.tls else ''} {self.channel}"

    def on_message(self, msg: IrcMessage) -> None:
        line = chat_line(msg, self.channel)
        if line is not None:
            self._remember(login_of(msg), line.sender)
            self.sink.offer(line)
            return
        removal = moderation(msg, self.channel)
        if removal is None:
            return
        retract, login = removal
        if login is None:
            self.sink.retract(retract)
            return
        # the room knows a sender by the name read aloud (Twitch's display name), CLEARCHAT by login
        for name in sorted(self._names.get(login, set()) | {login}):
            self.sink.retract(Retract(sender=name))

    def _remember(self, login: str, name: str) -> None:
        if not login:
            return
        self._names.setdefault(login, set()).add(name)
        self._names.move_to_end(login)
        if len(self._names) > KNOWN_LOGINS:
            self._names.popitem(last=False)

    def _pinged(self) -> None:
        self.pings_answered += 1

    async def wait_joined(self, more_than: int = 0) -> int:
        """Wait until the bridge has joined the channel more than `more_than` times."""
        async with self._joined:
            await self._joined.wait_for(lambda: self.joins > more_than)
            return self.joins

    def _on_joined(self, conn: IrcConnection) -> None:
        self.caps = set(conn.caps)
        self.backoff.reset()
        log.info("irc: connected to %s as %s%s", self.where, conn.nickname,
                 f" ({' '.join(sorted(conn.caps))})" if conn.caps else "")
        metrics.CONNECTIONS.labels(self.sink.bridge).inc()
        self.joins += 1
        asyncio.get_running_loop().create_task(self._notify_joined())

    async def _notify_joined(self) -> None:
        async with self._joined:
            self._joined.notify_all()

    async def run(self) -> None:
        """Read the channel until cancelled, reconnecting whenever the connection ends."""
        failing_since_logged = False
        while True:
            conn = IrcConnection(self.host, self.port, self.channel, self.nick, password=self.password,
                                 tls=self.tls, tls_verify=self.tls_verify, on_message=self.on_message,
                                 on_joined=lambda: self._on_joined(conn), on_ping=self._pinged)
            joins_before = self.joins
            try:
                await conn.run()
            except IrcClosed as exc:
                reason, now = str(exc), exc.reconnect_now
            except (OSError, TimeoutError) as exc:
                reason, now = str(exc) or exc.__class__.__name__, False
            joined = self.joins > joins_before
            delay = 0.0 if now else self.backoff.next_delay()
            if joined:
                failing_since_logged = False
                log.warning("irc: disconnected from %s (%s); reconnecting in %.1f s", self.where, reason, delay)
            else:
                level = logging.DEBUG if failing_since_logged else logging.WARNING
                log.log(level, "irc: cannot reach %s (%s); retrying in %.1f s", self.where, reason, delay)
                failing_since_logged = True
            await asyncio.sleep(delay)
