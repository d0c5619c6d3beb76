"""One definition of a room name (agent/room_names.py): letters and digits of any script, no
control characters, URL delimiters or `..`; the same rule for tokens."""

from __future__ import annotations

import unicodedata

import pytest

from agent.auth import TokenAuthority
from agent.room_names import MAX_ROOM_NAME_CHARS, InvalidRoomName, check_room_name, room_path

GOOD = ["直播", "café", unicodedata.normalize("NFD", "café"), "a b", "lobby", "room-1_x.y", "Ελληνικά",
        "ライブ配信「雑談」", "🎮 stream", "x" * MAX_ROOM_NAME_CHARS, "ok:1@host+2~(3)!,'"]
BAD = ["", "x" * (MAX_ROOM_NAME_CHARS + 1), "a\x00b", "a\r\nb", "a\nb", "a\tb", "a\x1bb", "a\x7fb",
       "a\u0085b", "a\u2028b", "a\u202eb", "a\u200bb", ".", "..", "a..b", "a/b", "a\\b", "a?b", "a#b", "a%b",
       'a"b', "a<b", " a", "a ", "\ud800"]


@pytest.mark.parametrize("name", GOOD)
def test_names_in_any_script_are_valid(name):
    assert check_room_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_names_that_break_headers_paths_or_logs_are_refused(name):
    with pytest.raises(InvalidRoomName) as err:
        check_room_name(name)
    assert "\n" not in str(err.value) and "\x00" not in str(err.value)  # the reason itself is printable


def test_room_path_is_one_ascii_segment():
    for name in GOOD:
        path = room_path(name)
        assert path.isascii() and "/" not in path and " " not in path


def test_tokens_follow_the_same_rule():
    authority = TokenAuthority({"k": "s" * 32})
    assert authority.verify(authority.mint("alice", room="直播")).room == "直播"
    with pytest.raises(InvalidRoomName):
        authority.mint("alice", room="a..b")
