"""One IRC line as data: IRCv3 message tags, source, command, parameters (RFC 1459/2812 framing,
https://ircv3.net/specs/extensions/message-tags).

    @id=123;display-name=Ronni :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #chan :hello there
"""

from __future__ import annotations

from dataclasses import dataclass, field

# tag values escape ; space \ CR LF (message-tags spec, "Escaping values")
_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
MAX_LINE_BYTES = 8191 + 512  # IRCv3: up to 8191 bytes of tags plus the 512 of the RFC line


@dataclass(frozen=True, slots=True)
class IrcMessage:
    command: str  # upper case; numerics stay three digits
    params: tuple[str, ...] = ()
    source: str | None = None  # nick!user@host or a server name
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nick(self) -> str | None:
        """The nick of a `nick!user@host` source (the whole source for a server)."""
        return None if self.source is None else self.source.split("!", 1)[0]

    def param(self, i: int, default: str = "") -> str:
        return self.params[i] if i < len(self.params) else default


def unescape_tag(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            i += 1
            if i < len(value):  # an unknown escape keeps the character; a trailing \ is dropped
                out.append(_UNESCAPE.get(value[i], value[i]))
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def escape_tag(value: str) -> str:
    return "".join(_ESCAPE.get(ch, ch) for ch in value)


def parse(line: str) -> IrcMessage:
    """One line without its CR LF; ValueError for a line with no command."""
    rest = line.lstrip(" ")
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw, _, rest = rest[1:].partition(" ")
        for item in raw.split(";"):
            if item:
                key, _, value = item.partition("=")
                tags[key] = unescape_tag(value)
        rest = rest.lstrip(" ")
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    head, colon, trailing = rest.partition(" :")
    if rest.startswith(":"):  # no middle parameters: the whole rest is the trailing one
        head, colon, trailing = "", ":", rest[1:]
    words = head.split()
    if not words:
        raise ValueError(f"no command in IRC line {line[:80]!r}")
    params = tuple(words[1:]) + ((trailing,) if colon else ())
    return IrcMessage(words[0].upper(), params, source, tags)


def format_line(command: str, *params: str, tags: dict[str, str] | None = None, source: str | None = None,
                trailing: bool = False) -> str:
    """A line to send (without CR LF); the last parameter becomes trailing when it needs to
    (always with `trailing`, as servers write message text)."""
    parts: list[str] = []
    if tags:
        parts.append("@" + ";".join(f"{k}={escape_tag(v)}" for k, v in tags.items()))
    if source:
        parts.append(":" + source)
    parts.append(command)
    for i, p in enumerate(params):
        if any(c in p for c in "\r\n\0"):
            raise ValueError("an IRC parameter cannot hold CR, LF or NUL")
        last = i == len(params) - 1
        if last and (trailing or not p or " " in p or p.startswith(":")):
            parts.append(":" + p)
        elif not p or " " in p or p.startswith(":"):
            raise ValueError(f"only the last IRC parameter may be empty or hold spaces: {p!r}")
        else:
            parts.append(p)
    return " ".join(parts)
