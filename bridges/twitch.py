"""What an IRC channel says, as chat lines and moderation: plain IRC, and Twitch's dialect with the
`twitch.tv/tags` and `twitch.tv/commands` capabilities (https://dev.twitch.tv/docs/chat/irc/).

A plain IRC server sends no tags: a PRIVMSG is a line from its sender's nick, nothing more.
With Twitch's tags a line carries its message id (the utterance id, so a delete can name it),
the display name (read aloud), and what makes it go first: bits, a highlighted message, a
channel-point redemption. USERNOTICE (subscriptions, gifts, raids) are `high` lines of their
own; CLEARMSG and CLEARCHAT are a moderator removing one message, a user's messages, or all.
"""

from __future__ import annotations

import re

from .ircmsg import IrcMessage
from .lines import ChatLine, Retract

# mIRC formatting: bold, italic, underline, reverse, reset, monospace, strike; colours with their digits
_FORMATTING = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04[0-9a-fA-F]{0,6}|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_ACTION = re.compile(r"^\x01ACTION (.*?)\x01?$", re.DOTALL)
# a cheer is `<cheermote prefix><amount>` (Cheer100, BibleThump50): read aloud it is noise
_CHEERMOTE = re.compile(r"(?<!\S)[A-Za-z]+\d+(?!\S)")

# USERNOTICE kinds read aloud, and whether they go first (the rest: bits badges, rituals, ... are not read)
USERNOTICE_PRIORITY = {"sub": "high", "resub": "high", "subgift": "high", "submysterygift": "high",
                       "raid": "high", "announcement": "normal"}
HIGHLIGHTED = "highlighted-message"


def plain_text(message: str) -> str:
    """The words of an IRC message: formatting codes removed, /me actions as their text."""
    action = _ACTION.match(message)
    if action:
        message = action.group(1)
    return _FORMATTING.sub("", message).replace("\x01", "")


def _sender(msg: IrcMessage) -> str:
    return msg.tags.get("display-name") or msg.tags.get("login") or msg.nick or "?"


def login_of(msg: IrcMessage) -> str:
    """The account name moderation uses (CLEARCHAT names the login, not the display name)."""
    return (msg.tags.get("login") or msg.nick or "").casefold()


def chat_line(msg: IrcMessage, channel: str) -> ChatLine | None:
    """A PRIVMSG or USERNOTICE to `channel` as a line to read, or None (elsewhere, CTCP, silent)."""
    if msg.param(0).casefold() != channel.casefold():
        return None
    tags = msg.tags
    if msg.command == "PRIVMSG":
        text = msg.param(1)
        if text.startswith("\x01") and not text.startswith("\x01ACTION "):
            return None  # CTCP VERSION, PING, ...: not chat
        text = plain_text(text)
        priority = "normal"
        if _positive(tags.get("bits")):
            priority = "high"
            text = _CHEERMOTE.sub("", text).strip() or text
        if tags.get("msg-id") == HIGHLIGHTED or tags.get("custom-reward-id"):
            priority = "high"
        return ChatLine(_sender(msg), text, priority, tags.get("id") or None)
    if msg.command == "USERNOTICE":
        priority = USERNOTICE_PRIORITY.get(tags.get("msg-id", ""))
        if priority is None:
            return None
        # Twitch's own sentence ("ronni subscribed for 6 months!"), then what the user wrote
        parts = [tags.get("system-msg", "").strip(), plain_text(msg.param(1)).strip()]
        text = " ".join(p for p in parts if p)
        if not text:
            return None
        return ChatLine(_sender(msg), text, priority, tags.get("id") or None)
    return None


def moderation(msg: IrcMessage, channel: str) -> tuple[Retract, str | None] | None:
    """CLEARMSG / CLEARCHAT in `channel`: (what to retract, the login it names or None). A
    retraction of a user names them by login; the bridge maps that to the names it read aloud."""
    if msg.param(0).casefold() != channel.casefold():
        return None
    if msg.command == "CLEARMSG" and msg.tags.get("target-msg-id"):
        return Retract(id=msg.tags["target-msg-id"]), None
    if msg.command == "CLEARCHAT":
        user = msg.param(1).strip()
        if user:  # a ban or a timeout: every line of that user goes
            return Retract(sender=user), user.casefold()
        return Retract(), None  # the whole chat was cleared
    return None


def _positive(value: str | None) -> bool:
    return bool(value) and value.isdigit() and int(value) > 0
