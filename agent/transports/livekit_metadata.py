"""Dispatch metadata: a job's `Job.metadata` as the room's starting settings.

LiveKit hands the worker the metadata of the dispatch that sent it into the room
(`CreateAgentDispatchRequest.metadata`, i.e. `POST /v1/rooms/{room}/agent {"metadata": …}`,
or `RoomAgentDispatch.metadata` in a user's token). The agent reads it as the body of a
`configure` message: a JSON object with `voice`, `speed`, `danmu`, `barge_in`, validated
exactly like `configure`, and applied before anyone in the room is greeted. Metadata that
is not such an object is logged and ignored: the agent joins with its own defaults.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

DISPATCH_SENDER = "livekit-dispatch"


def configure_message(metadata: str) -> dict | None:
    """The `configure` message carried by `metadata`; None when there is none.
    Raises ValueError when the metadata is not a JSON object (the fields are checked later,
    by the room, with the protocol's own validation)."""
    if not metadata.strip():
        return None
    try:
        body = json.loads(metadata)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("type", "configure") != "configure":
        raise ValueError(f"a dispatch configures the room; type {body['type']!r} is not allowed")
    return {**body, "type": "configure"}


def apply_dispatch_metadata(room, metadata: str) -> bool:
    """Apply `metadata` to `room` through its door (`Room.receive`). True when applied;
    False (logged) when there was none or it was refused, and then nothing changed."""
    try:
        message = configure_message(metadata)
    except ValueError as exc:
        log.warning("dispatch metadata ignored: %s", exc, extra={"room": room.name})
        return False
    if message is None:
        return False
    reply = room.receive(message, DISPATCH_SENDER)
    if reply is not None:  # an `error` event: a bad field, an unknown voice
        log.warning("dispatch metadata ignored: %s", reply.get("message"), extra={"room": room.name})
        return False
    log.info("dispatch metadata applied", extra={"room": room.name})
    return True
