"""A Twitch chat server double: asyncio, on 127.0.0.1, speaking Twitch's IRC dialect as its public
documentation shows it (https://dev.twitch.tv/docs/chat/irc/, .../irc-commands/, .../irc-tags/).
Twitch itself cannot be reached from here; this is what the bridge is tested against.

What it does, line for line as documented:
- `CAP REQ :twitch.tv/tags twitch.tv/commands` -> `:tmi.twitch.tv CAP * ACK :...` (NAK for others).
- `PASS oauth:<token>` + `NICK <login>` (or an anonymous `justinfan<digits>` without a valid
  PASS) -> `001`..`004` (the two-field `004 <user> :-`), `375`/`372`/`376`; a bad PASS gets
  `:tmi.twitch.tv NOTICE * :Login authentication failed` and the connection is closed.
- `JOIN #chan` -> the JOIN echo, `353`, `366`, then USERSTATE and ROOMSTATE (commands cap).
- `PING` -> `PONG`; the server's own `PING :tmi.twitch.tv` expects `PONG :tmi.twitch.tv`.
- Every command it does not serve (WHOIS, WHO, MODE, CAP END, ...) ->
  `:tmi.twitch.tv 421 <user> <command> :Unknown command`, the answer Twitch documents for
  commands it does not support. Two assumptions where the docs are silent: `USER`, which most
  IRC clients send and which Twitch's examples leave out, is taken without an answer (such
  clients do log in); `CAP END` gets the strict 421.
- Chat goes out to joined clients as PRIVMSG with the tags of the docs (id, display-name, bits,
  msg-id=highlighted-message, custom-reward-id, badges, mod, ...); CLEARMSG, CLEARCHAT and
  USERNOTICE only to clients that asked for twitch.tv/commands; tags only with twitch.tv/tags.
- `reconnect()` sends `:tmi.twitch.tv RECONNECT` and closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field

from bridges.ircmsg import format_line, parse

HOST = "tmi.twitch.tv"
ROOM_ID = "12345678"
SUPPORTED_CAPS = {"twitch.tv/tags", "twitch.tv/commands", "twitch.tv/membership"}
SERVED = {"CAP", "PASS", "NICK", "USER", "JOIN", "PART", "PING", "PONG", "PRIVMSG", "QUIT"}


@dataclass
class Client:
    writer: asyncio.StreamWriter
    caps: set[str] = field(default_factory=set)
    password: str | None = None
    nick: str | None = None
    registered: bool = False
    channels: set[str] = field(default_factory=set)
    received: list[str] = field(default_factory=list)
    pongs: list[str] = field(default_factory=list)

    def send(self, line: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(line.encode("utf-8") + b"\r\n")


class TwitchDouble:
    def __init__(self):
        self.clients: list[Client] = []
        self.received: list[str] = []  # every line any client sent, in order
        self.joined = asyncio.Condition()
        self.joins = 0
        self._user_ids = itertools.count(87654321)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for c in self.clients:
            c.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_joined(self, count: int = 1, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            async with self.joined:
                await self.joined.wait_for(lambda: self.joins >= count)

    def commands_received(self) -> list[str]:
        return [parse(line).command for line in self.received]

    # -- one connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(writer)
        self.clients.append(client)
        try:
            while raw := await reader.readline():
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    continue
                client.received.append(line)
                self.received.append(line)
                if not await self._handle(client, line):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if client in self.clients:
                self.clients.remove(client)

    async def _handle(self, c: Client, line: str) -> bool:
        msg = parse(line)
        cmd = msg.command
        user = c.nick or "*"
        if cmd not in SERVED or (cmd == "CAP" and msg.param(0) != "REQ"):
            c.send(f":{HOST} 421 {user} {cmd} :Unknown command")
        elif cmd == "CAP":
            wanted = msg.params[-1].split()
            if all(cap in SUPPORTED_CAPS for cap in wanted):
                c.caps.update(wanted)
                c.send(f":{HOST} CAP * ACK :{' '.join(wanted)}")
            else:
                c.send(f":{HOST} CAP * NAK :{' '.join(wanted)}")
        elif cmd == "PASS":
            c.password = msg.param(0)
        elif cmd == "NICK" and not c.registered:
            nick = msg.param(0).lower()
            anonymous = nick.startswith("justinfan")
            if not anonymous and not (c.password or "").startswith("oauth:"):
                c.send(f":{HOST} NOTICE * :Login authentication failed")
                return False
            c.nick, c.registered = nick, True
            for numeric, text in (("001", "Welcome, GLHF!"), ("002", f"Your host is {HOST}"),
                                  ("003", "This server is rather new"), ("004", "-"), ("375", "-"),
                                  ("372", "You are in a maze of twisty passages, all alike."), ("376", ">")):
                c.send(f":{HOST} {numeric} {nick} :{text}")
            if not anonymous and "twitch.tv/tags" in c.caps and "twitch.tv/commands" in c.caps:
                c.send(format_line("GLOBALUSERSTATE", source=HOST, tags={
                    "badge-info": "", "badges": "", "color": "", "display-name": nick, "emote-sets": "0",
                    "user-id": str(next(self._user_ids)), "user-type": ""}))
        elif cmd == "JOIN" and c.registered:
            for channel in msg.param(0).split(","):
                channel = channel.lower()
                c.channels.add(channel)
                c.send(f":{c.nick}!{c.nick}@{c.nick}.{HOST} JOIN {channel}")
                c.send(f":{c.nick}.{HOST} 353 {c.nick} = {channel} :{c.nick}")
                c.send(f":{c.nick}.{HOST} 366 {c.nick} {channel} :End of /NAMES list")
                if "twitch.tv/commands" in c.caps:
                    c.send(self._tagged(c, "USERSTATE", channel, tags={
                        "badge-info": "", "badges": "", "color": "", "display-name": c.nick, "emote-sets": "0",
                        "mod": "0", "subscriber": "0", "user-type": ""}))
                    c.send(self._tagged(c, "ROOMSTATE", channel, tags={
                        "emote-only": "0", "followers-only": "-1", "r9k": "0", "room-id": ROOM_ID,
                        "slow": "0", "subs-only": "0"}))
            async with self.joined:
                self.joins += 1
                self.joined.notify_all()
        elif cmd == "PART":
            channel = msg.param(0).lower()
            c.channels.discard(channel)
            c.send(f":{c.nick}!{c.nick}@{c.nick}.{HOST} PART {channel}")
        elif cmd == "PING":
            c.send(f":{HOST} PONG {HOST} :{msg.param(0)}")
        elif cmd == "PONG":
            c.pongs.append(msg.param(-1) if msg.params else "")
        elif cmd == "QUIT":
            return False
        return True  # PRIVMSG from a client: an anonymous login cannot post; nothing to answer

    # -- what happens in the channel ------------------------------------------------------------

    def _tagged(self, c: Client, command: str, *params: str, tags: dict[str, str], source: str = HOST) -> str:
        # the channel is a middle parameter; a message text, or a login, trails (as in the docs)
        return format_line(command, *params, tags=tags if "twitch.tv/tags" in c.caps else None, source=source,
                           trailing=len(params) > 1)

    def _to_channel(self, channel: str, command: str, *params: str, tags: dict[str, str], source: str = HOST,
                    needs_commands: bool = False) -> None:
        for c in self.clients:
            if channel in c.channels and (not needs_commands or "twitch.tv/commands" in c.caps):
                c.send(self._tagged(c, command, channel, *params, tags=tags, source=source))

    def privmsg(self, channel: str, login: str, text: str, *, display_name: str | None = None,
                bits: int | None = None, highlighted: bool = False, reward_id: str | None = None,
                mod: bool = False, badges: str = "") -> str:
        """A viewer's chat message; returns its message id (the `id` tag)."""
        msg_id = str(uuid.uuid4())
        tags = {"badge-info": "", "badges": badges}
        if bits:
            tags["bits"] = str(bits)
        tags |= {"color": "#0D4200", "display-name": display_name or login, "emotes": "", "first-msg": "0",
                 "flags": "", "id": msg_id, "mod": "1" if mod else "0"}
        if highlighted:
            tags["msg-id"] = "highlighted-message"
        if reward_id:
            tags["custom-reward-id"] = reward_id
        tags |= {"returning-chatter": "0", "room-id": ROOM_ID, "subscriber": "0", "tmi-sent-ts": _now_ms(),
                 "turbo": "0", "user-id": str(next(self._user_ids)), "user-type": ""}
        self._to_channel(channel, "PRIVMSG", text, tags=tags, source=f"{login}!{login}@{login}.{HOST}")
        return msg_id

    def clearmsg(self, channel: str, login: str, target_msg_id: str, text: str) -> None:
        """A moderator deleted one message."""
        self._to_channel(channel, "CLEARMSG", text, needs_commands=True, tags={
            "login": login, "room-id": "", "target-msg-id": target_msg_id, "tmi-sent-ts": _now_ms()})

    def clearchat(self, channel: str, login: str | None = None, ban_duration: int | None = None) -> None:
        """A ban (login), a timeout (login + duration), or the whole chat cleared (no login)."""
        tags: dict[str, str] = {}
        if ban_duration is not None:
            tags["ban-duration"] = str(ban_duration)
        tags["room-id"] = ROOM_ID
        if login is not None:
            tags["target-user-id"] = str(next(self._user_ids))
        tags["tmi-sent-ts"] = _now_ms()
        params = (login,) if login is not None else ()
        self._to_channel(channel, "CLEARCHAT", *params, tags=tags, needs_commands=True)

    def usernotice(self, channel: str, kind: str, login: str, system_msg: str, text: str | None = None,
                   display_name: str | None = None, **params: str) -> str:
        """sub, resub, subgift, raid, ...: `params` are the msg-param-* tags (without the prefix)."""
        msg_id = str(uuid.uuid4())
        tags = {"badge-info": "", "badges": "", "color": "", "display-name": display_name or login, "emotes": "",
                "id": msg_id, "login": login, "mod": "0", "msg-id": kind}
        tags |= {f"msg-param-{k.replace('_', '-')}": v for k, v in params.items()}
        tags |= {"room-id": ROOM_ID, "subscriber": "1", "system-msg": system_msg, "tmi-sent-ts": _now_ms(),
                 "user-id": str(next(self._user_ids)), "user-type": ""}
        extra = (text,) if text is not None else ()
        self._to_channel(channel, "USERNOTICE", *extra, tags=tags, needs_commands=True)
        return msg_id

    def ping(self) -> None:
        for c in self.clients:
            c.send(f"PING :{HOST}")

    def reconnect(self) -> None:
        """Twitch's notice before a server restart; the connection is then closed."""
        for c in list(self.clients):
            c.send(f":{HOST} RECONNECT")
            c.writer.close()


def _now_ms() -> str:
    return str(int(time.time() * 1000))
