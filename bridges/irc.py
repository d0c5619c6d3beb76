"""IRC chat in (Twitch chat is IRC): read one channel, hand each message to the sink.

pydle (BSD, asyncio-native) speaks the protocol: registration, PING/PONG, TLS, nick
fallbacks. The reconnect loop is ours: pydle's own retries give up after three attempts
and stop for good when the server is still down at a retry; a chat bridge must outlive any
server restart, so it reconnects forever with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable

import pydle

from . import metrics
from .backoff import Backoff
from .lines import ChatLine
from .sink import SpeakSink

log = logging.getLogger("tts_agent.bridge.irc")
PROTOCOL_LOG = logging.getLogger("tts_agent.bridge.irc.pydle")  # pydle's own chatter: unknown numerics, ...

REGISTRATION_TIMEOUT_S = 30.0
# mIRC formatting: bold, italic, underline, reverse, reset, monospace, strike; colours with their digits
_FORMATTING = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04[0-9a-fA-F]{0,6}|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_ACTION = re.compile(r"^\x01ACTION (.*?)\x01?$", re.DOTALL)


def anonymous_nick() -> str:
    """Twitch (and most servers) accept `justinfan<digits>` as a read-only login without a password."""
    return f"justinfan{random.randint(10_000, 99_999_999)}"


def plain_text(message: str) -> str:
    """The words of an IRC message: formatting codes removed, /me actions as their text."""
    action = _ACTION.match(message)
    if action:
        message = action.group(1)
    return _FORMATTING.sub("", message).replace("\x01", "")


def parse_server(value: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`); the port defaults to 6667."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "6667"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port: {value!r}")
    return host, int(port)


class ChannelReader(pydle.MinimalClient):
    """One connection: joins the channel and reports its messages and its end.

    pydle's minimal feature set (RFC 1459, TLS, ISUPPORT, CTCP, WHOX): no IRCv3 capability
    negotiation to stall on servers that do not answer CAP LS as pydle expects."""

    RECONNECT_ON_ERROR = False  # IrcBridge reconnects

    def __init__(self, nick: str, channel: str, on_message: Callable[[str, str], None],
                 on_ping: Callable[[], None] = lambda: None):
        # a short fallback for servers that keep the RFC's 9-character nicks
        super().__init__(nick, fallback_nicknames=[f"{nick}_", f"tts{random.randint(10_000, 99_999)}"])
        self.channel = channel
        self.on_line = on_message
        self.on_ping = on_ping
        self.joined = asyncio.Event()
        self.gone = asyncio.Event()
        self.reason = "connection closed"

    async def connect(self, *args, **kwargs) -> None:
        await super().connect(*args, **kwargs)
        # pydle names its logger after the server; one fixed name lets the CLI quiet it
        self.logger = PROTOCOL_LOG

    async def on_connect(self) -> None:
        await super().on_connect()
        await self.join(self.channel)

    async def on_join(self, channel: str, user: str) -> None:
        if self.is_same_nick(user, self.nickname) and self.is_same_channel(channel, self.channel):
            self.joined.set()

    async def on_kick(self, channel: str, target: str, by: str, reason: str | None = None) -> None:
        if self.is_same_nick(target, self.nickname) and self.is_same_channel(channel, self.channel):
            self.reason = f"kicked by {by}"
            await self.disconnect(expected=False)

    async def on_raw_ping(self, message) -> None:
        await super().on_raw_ping(message)  # pydle answers PONG
        self.on_ping()

    async def on_channel_message(self, target: str, by: str, message: str) -> None:
        if self.is_same_channel(target, self.channel):
            self.on_line(by, plain_text(message))

    async def on_ctcp_action(self, by: str, target: str, contents: str) -> None:
        # "/me waves" reads as the sender's line "waves"
        if self.is_same_channel(target, self.channel) and contents:
            self.on_line(by, plain_text(contents))

    async def on_data_error(self, exception: BaseException) -> None:
        # the server's ERROR line (e.g. "Server going down") is the reason; IrcBridge logs it once
        self.reason = str(exception) or exception.__class__.__name__
        await self.disconnect(expected=False)

    async def on_disconnect(self, expected: bool) -> None:
        self.gone.set()


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
        self._joined = asyncio.Condition()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}{' (tls)' if self.tls else ''} {self.channel}"

    def on_message(self, sender: str, text: str) -> None:
        self.sink.offer(ChatLine(sender, text))

    def _pinged(self) -> None:
        self.pings_answered += 1

    async def wait_joined(self, more_than: int = 0) -> int:
        """Wait until the bridge has joined the channel more than `more_than` times."""
        async with self._joined:
            await self._joined.wait_for(lambda: self.joins > more_than)
            return self.joins

    async def run(self) -> None:
        """Read the channel until cancelled, reconnecting whenever the connection ends."""
        failing_since_logged = False
        while True:
            reader = ChannelReader(self.nick, self.channel, self.on_message, self._pinged)
            try:
                await reader.connect(self.host, self.port, tls=self.tls, tls_verify=self.tls_verify,
                                     password=self.password)
                done, _ = await asyncio.wait([asyncio.ensure_future(reader.joined.wait()),
                                              asyncio.ensure_future(reader.gone.wait())],
                                             timeout=REGISTRATION_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
                for t in _:
                    t.cancel()
                if not reader.joined.is_set():
                    raise ConnectionError(reader.reason if reader.gone.is_set() else "no welcome or join in time")
            except (OSError, asyncio.TimeoutError, ConnectionError, pydle.Error) as exc:
                await _quietly_close(reader)
                delay = self.backoff.next_delay()
                level = logging.DEBUG if failing_since_logged else logging.WARNING
                log.log(level, "irc: cannot reach %s (%s); retrying in %.1f s", self.where,
                        str(exc) or exc.__class__.__name__, delay)
                failing_since_logged = True
                await asyncio.sleep(delay)
                continue
            except asyncio.CancelledError:
                await _quietly_close(reader)
                raise
            failing_since_logged = False
            self.backoff.reset()
            log.info("irc: connected to %s as %s", self.where, reader.nickname)
            metrics.CONNECTIONS.labels(self.sink.bridge).inc()
            async with self._joined:
                self.joins += 1
                self._joined.notify_all()
            try:
                await reader.gone.wait()
            finally:
                await _quietly_close(reader)
            delay = self.backoff.next_delay()
            log.warning("irc: disconnected from %s (%s); reconnecting in %.1f s", self.where, reader.reason, delay)
            await asyncio.sleep(delay)


async def _quietly_close(reader: ChannelReader) -> None:
    if reader.connected:
        try:
            await reader.disconnect(expected=True)
        except Exception:  # the socket is already gone; nothing to tell
            pass
