"""One IRC connection that reads one channel: register, join, keep alive, hand on what it hears.

Our own, on asyncio streams: IRC is a line protocol, and a chat reader needs a small part of
it. A general client library gets in the way here: pydle, used before, sends WHOIS for every
chatter it has not seen and holds that chatter's message until the answer, which Twitch never
sends (the first line of every chatter was lost), and it fails on Twitch's two-field `004`.
This one never asks the server anything it does not need and never holds a message back.

Registration asks for Twitch's `twitch.tv/tags` and `twitch.tv/commands` capabilities
(message ids, display names, bits, CLEARMSG/CLEARCHAT/USERNOTICE); a server that does not
know them answers NAK or `421`, and the connection goes on as plain RFC 1459.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable

from .ircmsg import MAX_LINE_BYTES, IrcMessage, format_line, parse

log = logging.getLogger("tts_agent.bridge.irc")

TWITCH_CAPS = ("twitch.tv/tags", "twitch.tv/commands")
REGISTRATION_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15.0
IDLE_PING_S = 240.0  # nothing heard this long: ask the server (Twitch pings every ~5 min itself)
PONG_TIMEOUT_S = 30.0  # ... and give the connection up if it does not answer in this time


class IrcClosed(ConnectionError):
    """The connection ended; the message says why (server ERROR, kick, RECONNECT, EOF)."""

    def __init__(self, reason: str, *, reconnect_now: bool = False):
        super().__init__(reason)
        self.reconnect_now = reconnect_now  # the server asked for it (Twitch RECONNECT): no backoff


def fallback_nicks(nick: str) -> list[str]:
    # a short one last, for servers that keep the RFC's 9-character nicks
    return [nick, f"{nick}_", f"tts{random.randint(10_000, 99_999)}"]


class IrcConnection:
    def __init__(self, host: str, port: int, channel: str, nick: str, *, password: str | None = None,
                 tls: bool = False, tls_verify: bool = True, caps: tuple[str, ...] = TWITCH_CAPS,
                 on_message: Callable[[IrcMessage], None] = lambda m: None,
                 on_joined: Callable[[], None] = lambda: None, on_ping: Callable[[], None] = lambda: None):
        self.host, self.port, self.channel = host, port, channel
        self.nicks = fallback_nicks(nick)
        self.nickname = nick
        self.password = password
        self.tls, self.tls_verify = tls, tls_verify
        self.caps_wanted = caps
        self.caps: set[str] = set()  # what the server acknowledged
        self.on_message, self.on_joined, self.on_ping = on_message, on_joined, on_ping
        self._writer: asyncio.StreamWriter | None = None

    # -- sending ----------------------------------------------------------------------------

    def send(self, command: str, *params: str) -> None:
        assert self._writer is not None
        self._writer.write(format_line(command, *params).encode("utf-8") + b"\r\n")

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, register, join and read until the connection ends: always raises, IrcClosed
        (or OSError / TimeoutError while connecting) with the reason."""
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=ctx, limit=MAX_LINE_BYTES)
        try:
            await self._register(reader)
            await self._read(reader)
        finally:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ssl.SSLError):  # the peer is already gone
                pass

    async def _next(self, reader: asyncio.StreamReader, idle_s: float) -> IrcMessage:
        """The next message for the caller; PING is answered here, a keep-alive PING goes out
        when the server is quiet for idle_s, and ERROR or the end of the stream raise IrcClosed."""
        probing = False
        while True:
            try:
                async with asyncio.timeout(PONG_TIMEOUT_S if probing else idle_s):
                    raw = await reader.readuntil(b"\n")
            except TimeoutError:
                if probing:
                    raise IrcClosed(f"no answer for {idle_s + PONG_TIMEOUT_S:.0f} s") from None
                probing = True
                self.send("PING", "tts-agent")
                continue
            except asyncio.IncompleteReadError:
                raise IrcClosed("connection closed by the server") from None
            except asyncio.LimitOverrunError:
                raise IrcClosed("a line longer than IRC allows") from None
            probing = False
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            try:
                msg = parse(line)
            except ValueError:
                log.debug("irc: unparsable line %r", line[:200])
                continue
            if msg.command == "PING":
                self.send("PONG", *msg.params[:1])
                self.on_ping()
                continue
            if msg.command == "ERROR":
                raise IrcClosed(msg.param(0, "ERROR from the server"))
            return msg

    async def _register(self, reader: asyncio.StreamReader) -> None:
        if self.caps_wanted:
            # before NICK: an IRCv3 server then holds registration until CAP END, Twitch needs no END
            self.send("CAP", "REQ", " ".join(self.caps_wanted))
        if self.password:
            self.send("PASS", self.password)
        nicks = iter(self.nicks)
        self.nickname = next(nicks)
        self.send("NICK", self.nickname)
        self.send("USER", self.nickname, "0", "*", self.nickname)
        notice = ""
        registered = False
        try:
            async with asyncio.timeout(REGISTRATION_TIMEOUT_S):
                while True:
                    msg = await self._next(reader, REGISTRATION_TIMEOUT_S)
                    cmd = msg.command
                    if cmd == "CAP" and msg.param(1) in ("ACK", "NAK"):
                        if msg.param(1) == "ACK":
                            self.caps.update(msg.params[-1].split())
                        self.send("CAP", "END")
                    elif cmd == "001":
                        registered = True
                        self.nickname = msg.param(0, self.nickname)
                        # IRC channel names are case-insensitive, Twitch's are lower case
                        self.send("JOIN", self.channel.lower())
                    elif cmd in ("432", "433") and not registered:  # nick refused or taken: the next one
                        try:
                            self.nickname = next(nicks)
                        except StopIteration:
                            raise IrcClosed(f"nick refused: {msg.params[-1] if msg.params else cmd}") from None
                        self.send("NICK", self.nickname)
                    elif cmd == "JOIN" and self._is_me(msg.nick) and self._is_channel(msg.param(0)):
                        self.on_joined()
                        return
                    elif cmd in ("403", "405", "471", "473", "474", "475"):  # cannot join
                        raise IrcClosed(f"cannot join {self.channel}: {msg.params[-1] if msg.params else cmd}")
                    elif cmd == "NOTICE" and not registered:
                        # Twitch refuses a login with a NOTICE ("Login authentication failed"), then closes
                        notice = msg.params[-1] if msg.params else ""
                    elif cmd == "421":
                        log.debug("irc: the server does not serve %s", msg.param(1))
        except TimeoutError:
            raise IrcClosed("no welcome or join in time") from None
        except IrcClosed as exc:
            raise IrcClosed(f"{exc}: {notice}" if notice else str(exc)) from None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            msg = await self._next(reader, IDLE_PING_S)
            cmd = msg.command
            if cmd == "RECONNECT":  # Twitch: a server restart is coming, connect again now
                raise IrcClosed("the server asked to reconnect", reconnect_now=True)
            if cmd == "KICK" and self._is_channel(msg.param(0)) and self._is_me(msg.param(1)):
                raise IrcClosed(f"kicked by {msg.nick}")
            if cmd == "PART" and self._is_me(msg.nick) and self._is_channel(msg.param(0)):
                raise IrcClosed("parted from the channel")
            if cmd == "NICK" and self._is_me(msg.nick):
                self.nickname = msg.param(0, self.nickname)
            self.on_message(msg)

    def _is_me(self, nick: str | None) -> bool:
        return nick is not None and nick.casefold() == self.nickname.casefold()

    def _is_channel(self, name: str) -> bool:
        return name.casefold() == self.channel.casefold()
