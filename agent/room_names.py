"""What a room may be called: one definition, used by tokens, WHEP and every route.

Live streams are named in their audience's script (`直播`, `café`, `a b`), so any letter,
mark or digit is allowed. What is refused is what breaks headers, paths or logs: control
and format characters, line separators, `/ \\ ? # %` and the other URL delimiters, and
`..` (a Location with a dot segment resolves to another path).
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_ROOM_NAME_CHARS = 128
# ASCII punctuation a name may carry; the rest of ASCII punctuation delimits URLs or quotes
_ASCII_OK = frozenset(" -_.:@+~()!,'")
# categories allowed outside ASCII: letters, marks, digits, spaces, punctuation, symbols (emoji)
_CATEGORIES_OK = ("L", "M", "N", "Zs", "P", "S")


class InvalidRoomName(ValueError):
    """The name is not a valid room name; the message says why (HTTP 400)."""


def check_room_name(name: object) -> str:
    """`name` if it is a valid room name, else InvalidRoomName."""
    if not isinstance(name, str) or not name:
        raise InvalidRoomName("a room name is a non-empty string")
    if len(name) > MAX_ROOM_NAME_CHARS:
        raise InvalidRoomName(f"a room name has at most {MAX_ROOM_NAME_CHARS} characters, not {len(name)}")
    for ch in name:
        if not _allowed(ch):
            raise InvalidRoomName(f"a room name may not contain {_describe(ch)}")
    if name != name.strip():
        raise InvalidRoomName("a room name may not start or end with a space")
    if ".." in name or name == ".":
        raise InvalidRoomName("a room name may not be '.' or contain '..' (dot segments move a URL's path)")
    return name


def is_room_name(name: object) -> bool:
    try:
        check_room_name(name)
    except InvalidRoomName:
        return False
    return True


def room_path(name: str) -> str:
    """The name as one URL path segment (percent-encoded UTF-8)."""
    return quote(name, safe="")


def _allowed(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum() or ch in _ASCII_OK
    return unicodedata.category(ch).startswith(_CATEGORIES_OK)


def _describe(ch: str) -> str:
    # the offending character by code point: it may be invisible or break the log line
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, unicodedata.category(ch))})"
