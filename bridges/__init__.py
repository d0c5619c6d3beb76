"""Live chat in: one module per chat source, each turning chat lines into `synthesize` bodies
that a `SpeakSink` posts to the control plane (`POST /v1/rooms/{room}/speak`), so the room's
danmu rules (template, dedupe, per-sender rate, blocked words, queue cap) apply to every line;
a moderator's removal becomes an `interrupt` (`POST /v1/rooms/{room}/interrupt`) by message id or
by sender.

The bridge is its own process and talks HTTP with an admin token, so it works the same
against embedded rooms and LiveKit mode.
"""

from .lines import ChatLine, LineFilter, Retract
from .sink import SpeakSink

__all__ = ["ChatLine", "LineFilter", "Retract", "SpeakSink"]
