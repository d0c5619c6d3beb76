"""A chat line and the bridge-side filters applied before it reaches the room."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_SENDER_CHARS = 200  # the protocol's limit on `from`

# URLs with a scheme, www. hosts, and bare domains followed by a path (bit.ly/xyz)
_LINK = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}/\S*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


MAX_ID_CHARS = 128  # the protocol's limit on an utterance id


@dataclass(frozen=True, slots=True)
class ChatLine:
    sender: str
    text: str
    priority: Literal["normal", "high", "critical"] = "normal"
    id: str | None = None  # the chat's own message id: the utterance id, so a moderator's delete can name it

    def synthesize_body(self) -> dict:
        """The body of a `synthesize` with `from` set, so the room's danmu rules apply."""
        body: dict = {"text": self.text, "from": self.sender[:MAX_SENDER_CHARS]}
        if self.priority != "normal":
            body["priority"] = self.priority
        if self.id:
            body["id"] = self.id[:MAX_ID_CHARS]
        return body


@dataclass(frozen=True, slots=True)
class Retract:
    """A moderator removed chat: one message (`id`), every message of a sender (`sender`), or,
    with neither, the whole chat. The room gets the matching `interrupt`."""

    id: str | None = None
    sender: str | None = None

    def matches(self, line: ChatLine) -> bool:
        if self.id is not None:
            return line.id == self.id
        if self.sender is not None:
            return line.sender == self.sender  # as the room matches `from`: exactly
        return True

    def interrupt_body(self) -> dict:
        if self.id is not None:
            return {"id": self.id[:MAX_ID_CHARS]}
        if self.sender is not None:
            return {"from": self.sender[:MAX_SENDER_CHARS]}
        return {}


class LineFilter:
    """Drops lines from ignored senders (other bots) and chat commands; optionally strips links;
    lines that mention one of `mentions` (the streamer's name) go first (`high`)."""

    def __init__(self, ignore_senders: list[str] | tuple[str, ...] = (), command_prefix: str = "!",
                 strip_links: bool = False, mentions: list[str] | tuple[str, ...] = ()):
        self.ignore_senders = {s.casefold() for s in ignore_senders}
        self.command_prefix = command_prefix
        self.strip_links = strip_links
        names = [re.escape(m.strip().lstrip("@")) for m in mentions if m.strip().lstrip("@")]
        # a whole word, with or without @; CJK names match anywhere (no spaces around them)
        self._mention = re.compile(rf"(?<![\w@])@?(?:{'|'.join(names)})(?!\w)|(?:{'|'.join(names)})(?=[\u3000-\u9fff])"
                                   rf"|(?<=[\u3000-\u9fff])(?:{'|'.join(names)})", re.IGNORECASE) if names else None

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
        priority = line.priority
        if priority == "normal" and self._mention is not None and self._mention.search(text):
            priority = "high"
        return ChatLine(line.sender, text, priority, line.id), None
