"""How much one room, and one sender in it, may have queued: utterances and characters.

Always on (settings `max_queue_*`), unlike the danmu rules: without them one peer queued
~12 000 utterances in 15 s. Over a cap the newcomer is refused with `queue_full` (an
`error` to its sender, HTTP 429); nothing already queued changes. A sender is whoever
handed the command in: a data-channel peer, or `http:<identity>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from .protocol import ErrorCode, ProtocolError


class Queued(Protocol):
    owner: str | None
    text: str


@dataclass(frozen=True, slots=True)
class QueueCaps:
    room_items: int = 256
    room_chars: int = 200_000
    sender_items: int = 64
    sender_chars: int = 50_000

    @classmethod
    def from_settings(cls, settings) -> "QueueCaps":
        return cls(settings.max_queue_per_room, settings.max_queue_chars_per_room,
                   settings.max_queue_per_sender, settings.max_queue_chars_per_sender)

    def check(self, queue: Iterable[Queued], owner: str | None, chars: int, uid: str | None = None, *,
              new_items: int = 1, room_makes_room: bool = False) -> None:
        """Raise queue_full if `chars` more characters (and `new_items` more utterances) from
        `owner` would pass a cap. `room_makes_room`: a danmu `max_queue` at or under the room
        cap drops the oldest line instead, so the room's item cap need not refuse."""
        room_items = room_chars = mine_items = mine_chars = 0
        for utt in queue:
            room_items += 1
            room_chars += len(utt.text)
            if owner is not None and utt.owner == owner:
                mine_items += 1
                mine_chars += len(utt.text)
        if owner is not None:
            if mine_items + new_items > self.sender_items:
                self._full(f"you have {mine_items} utterances queued in this room, the most allowed", uid)
            if mine_chars + chars > self.sender_chars:
                self._full(f"your queued text would pass {self.sender_chars} characters in this room", uid)
        if room_items + new_items > self.room_items and not room_makes_room:
            self._full(f"this room has {room_items} utterances queued, the most allowed", uid)
        if room_chars + chars > self.room_chars:
            self._full(f"this room's queued text would pass {self.room_chars} characters", uid)

    @staticmethod
    def _full(message: str, uid: str | None) -> None:
        raise ProtocolError(ErrorCode.queue_full, message, uid)
