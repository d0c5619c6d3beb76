"""Prometheus counters of the chat bridges (a bridge process exposes them with --metrics-port)."""

from prometheus_client import Counter

LINES_IN = Counter("tts_bridge_lines_in_total", "Chat lines read from the chat source", ["bridge"])
LINES_SPOKEN = Counter(
    "tts_bridge_lines_spoken_total",
    "Chat lines the room accepted (queued to speak; the room may still drop them as queue_full or expired)",
    ["bridge"],
)
LINES_DROPPED = Counter(
    "tts_bridge_lines_dropped_total",
    "Chat lines not spoken, by reason: the bridge's own filters (ignored_sender, command, empty, backlog) "
    "or the room's answer (duplicate, rate_limited, filtered, queue_full, no_room, invalid, agent_error), "
    "or a moderator's removal before it was posted (deleted)",
    ["bridge", "reason"],
)
CONNECTIONS = Counter("tts_bridge_connections_total", "Connections made to the chat source", ["bridge"])
RETRACTIONS = Counter("tts_bridge_retractions_total",
                      "Moderator removals (a deleted message, a banned user, a cleared chat) passed on to the room",
                      ["bridge"])
