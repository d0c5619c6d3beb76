"""A chat line and the bridge-side filters applied before it reaches the room."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_SENDER_CHARS = 200  # the protocol's limit on `from`

# URLs with a scheme, www. hosts, and bare domains followed by a path (bit.ly/xyz)
_LINK = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}/\S*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ChatLine:
    sender: str
    text: str
    priority: Literal["normal", "high", "critical"] = "normal"

    def synthesize_body(self) -> dict:
        """The body of a `synthesize` with `from` set, so the room's danmu rules apply."""
        body: dict = {"text": self.text, "from": self.sender[:MAX_SENDER_CHARS]}
        if self.priority != "normal":
            body["priority"] = self.priority
        return body


class LineFilter:
    """Drops lines from ignored senders (other bots) and chat commands; optionally strips links."""

    def __init__(self, ignore_senders: list[str] | tuple[str, ...] = (), command_prefix: str = "!",
                 strip_links: bool = False):
        self.ignore_senders = {s.casefold() for s in ignore_senders}
        self.command_prefix = command_prefix
        self.strip_links = strip_links

    def admit(self, line: ChatLine) -> tuple[ChatLine | None, str | None]:
        """(the line to speak, None) or (None, the reason it is dropped)."""
        if line.sender.casefold() in self.ignore_senders:
            return None, "ignored_sender"
        text = line.text.strip()
        if self.command_prefix and text.startswith(self.command_prefix):
            return None, "command"
        if self.strip_links:
            text = _LINK.sub(" ", text)
        text = _SPACES.sub(" ", text).strip()
        if not text:
            return None, "empty"
        return ChatLine(line.sender, text, line.priority), None
