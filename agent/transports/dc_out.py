"""Data channel messages to an aiortc peer without a task per message.

`RTCDataChannel.send` queues the message and schedules a task to flush the queue; the task
then awaits four layers of coroutines (SCTP, DTLS, ICE) none of which ever suspends on
the way down to `sendto`. Word captions make that a few hundred tasks a second at 150 rooms.
`send_text` runs aiortc's own SCTP send coroutine (`RTCSctpTransport._send`: TSN, stream
sequence, congestion window, retransmission timer) to completion right away instead, so
sequencing and flow control stay aiortc's. It goes that way only when nothing is waiting
in aiortc's own queues, so message order is kept; otherwise, and wherever the internals it
relies on are missing (another aiortc version), it falls back to `channel.send`.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc.rtcsctptransport import WEBRTC_STRING, RTCSctpTransport

log = logging.getLogger(__name__)

_ESTABLISHED = RTCSctpTransport.State.ESTABLISHED
_INTERNALS = ("_association_state", "_data_channel_queue", "_reconfig_queue", "_remote_max_message_size", "_send")


def send_text(channel, data: str) -> None:
    """`channel.send(data)` for an open channel; may raise what `send` raises."""
    sctp = channel.transport
    if (data and channel.id is not None and not channel.maxPacketLifeTime and getattr(sctp, "_association_state", None) is _ESTABLISHED
            and _has_internals(sctp) and not sctp._data_channel_queue and not sctp._reconfig_queue):
        payload = data.encode()
        limit = sctp._remote_max_message_size
        if limit and len(payload) > limit:
            raise ValueError(f"Cannot send message of {len(payload)} bytes, the remote party "
                             f"only supports messages up to {limit} bytes")
        _run(sctp._send(channel.id, WEBRTC_STRING, payload, None, channel.maxRetransmits, channel.ordered))
    else:
        channel.send(data)


_checked: dict[type, bool] = {}  # per SCTP transport class: has it what send_text needs?


def _has_internals(sctp) -> bool:
    ok = _checked.get(type(sctp))
    if ok is None:
        missing = [name for name in _INTERNALS if not hasattr(sctp, name)]
        if missing:
            log.warning("aiortc's SCTP transport lacks %s: data channel messages go through channel.send", missing)
        ok = _checked[type(sctp)] = not missing
    return ok


def _run(coro) -> None:
    """Step a coroutine now; should it ever wait on a future, carry on when that is done
    (a minimal Task: an asyncio future's `__await__` returns its result on the next send)."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:  # what the flush task would have raised unobserved: the peer is going away
        log.debug("data channel send failed", exc_info=True)
        return
    if waiting is None:  # a bare yield (asyncio.sleep(0))
        asyncio.get_running_loop().call_soon(_run, coro)
    else:
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(lambda _: _run(coro))
