"""Posts chat lines to the control plane, one at a time and in order, and counts what became of each.

`POST {agent_url}/v1/rooms/{room}/speak` answers 202 `{"status": "queued"|"dropped", "reason"?}`,
404 while the room has no peer, 429 with Retry-After when this token posts too fast, 422 for
a body the protocol rejects. A line waits (bounded backlog) while the agent is unreachable or
asks to slow down; it is dropped, with a reason, for everything else.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import Counter as Tally, deque

import httpx

from . import metrics
from .backoff import Backoff
from .lines import ChatLine, LineFilter, Retract

log = logging.getLogger("tts_agent.bridge")

MAX_RETRY_AFTER_S = 30.0


class BridgeError(Exception):
    """A condition the bridge cannot fix by waiting (the token is refused)."""


class AdminToken:
    """A LiveKit-format admin token: a fixed one (`--token`), or minted from a key pair and
    minted again before it expires, so a bridge can run for days."""

    TTL = datetime.timedelta(hours=6)

    def __init__(self, *, token: str | None = None, api_key: str | None = None, api_secret: str | None = None,
                 room: str = "", identity: str = "chat-bridge"):
        if token is None and not (api_key and api_secret):
            raise ValueError("an admin token, or an API key and secret to mint one, is required")
        self._fixed = token
        self._key, self._secret, self._room, self._identity = api_key, api_secret, room, identity
        self._minted: str | None = None
        self._expires = 0.0

    def get(self) -> str:
        if self._fixed is not None:
            return self._fixed
        if self._minted is None or time.time() > self._expires - 300:
            from livekit import api

            grants = api.VideoGrants(room_admin=True, room=self._room)
            self._minted = (api.AccessToken(self._key, self._secret).with_identity(self._identity)
                            .with_grants(grants).with_ttl(self.TTL).to_jwt())
            self._expires = time.time() + self.TTL.total_seconds()
        return self._minted


class SpeakSink:
    def __init__(self, agent_url: str, room: str, token: AdminToken, *, bridge: str,
                 line_filter: LineFilter | None = None, max_backlog: int = 1000, verbose: bool = False):
        self.room = room
        self.bridge = bridge
        self.filter = line_filter or LineFilter()
        self.counts: Tally[str] = Tally()  # "in", "spoken", "dropped:<reason>"
        self._token = token
        self._url = f"/v1/rooms/{room}/speak"
        self._interrupt_url = f"/v1/rooms/{room}/interrupt"
        self._http = httpx.AsyncClient(base_url=agent_url.rstrip("/"), timeout=10)
        # lines and retractions, posted in order; a retraction first takes its lines out of here
        self._pending: deque[ChatLine | Retract] = deque()
        self._max_backlog = max_backlog
        self._lines_pending = 0
        self._wake = asyncio.Event()
        self._busy = False  # a post is in flight
        self._drained = asyncio.Event()
        self._drained.set()
        self._line_level = logging.INFO if verbose else logging.DEBUG
        self._agent_down = False
        self._room_missing = False
        self._worker: asyncio.Task | None = None

    # -- what the chat reader calls --------------------------------------------------------

    def offer(self, line: ChatLine) -> None:
        """A line read from the chat: filtered here, then posted in order; never blocks the reader."""
        self._count_in()
        admitted, reason = self.filter.admit(line)
        if admitted is None:
            self._count_dropped(line, reason or "filtered")
            return
        self.start()
        if self._lines_pending >= self._max_backlog:
            self._count_dropped(admitted, "backlog")
            return
        self._lines_pending += 1
        self._push(admitted)

    def retract(self, what: Retract) -> None:
        """A moderator removed chat: lines still waiting here are dropped (`deleted`), and the room
        is told to interrupt what it holds, unless the one line named never left this bridge."""
        self.counts["retractions"] += 1
        metrics.RETRACTIONS.labels(self.bridge).inc()
        kept: deque[ChatLine | Retract] = deque()
        found = False
        for item in self._pending:
            if isinstance(item, ChatLine) and what.matches(item):
                self._lines_pending -= 1
                self._count_dropped(item, "deleted")
                found = True
            else:
                kept.append(item)
        self._pending = kept
        if found and what.id is not None:
            return  # it never reached the room: nothing to interrupt there
        self.start()
        self._push(what)

    @property
    def backlog(self) -> int:
        """Lines and retractions waiting to be posted (the one in flight not counted)."""
        return len(self._pending)

    def _push(self, item: ChatLine | Retract) -> None:
        self._pending.append(item)
        self._drained.clear()
        self._wake.set()

    def reject(self, line: ChatLine, reason: str) -> None:
        """A line the chat source itself rules out (malformed input, a sticker, a free gift)."""
        self._count_in()
        self._count_dropped(line, reason)

    # -- counting ---------------------------------------------------------------------------

    def _count_in(self) -> None:
        self.counts["in"] += 1
        metrics.LINES_IN.labels(self.bridge).inc()

    def _count_dropped(self, line: ChatLine, reason: str) -> None:
        self.counts[f"dropped:{reason}"] += 1
        metrics.LINES_DROPPED.labels(self.bridge, reason).inc()
        log.log(self._line_level, "%s <%s> %s: dropped (%s)", self.bridge, line.sender, line.text, reason)

    def _count_spoken(self, line: ChatLine, uid: str) -> None:
        self.counts["spoken"] += 1
        metrics.LINES_SPOKEN.labels(self.bridge).inc()
        log.log(self._line_level, "%s <%s> %s: queued as %s", self.bridge, line.sender, line.text, uid)

    # -- the queue --------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start posting; the task ends only with a fatal error (refused token) or close()."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"{self.bridge}-sink")
        return self._worker

    async def drain(self) -> None:
        """Wait until every submitted line has been answered (end of a piped input)."""
        if self._worker is None or self._worker.done():
            self._pending.clear()
        else:
            drained = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait({drained, self._worker}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        if self._worker is not None and self._worker.done():
            self._worker.result()  # a fatal error (refused token) surfaces here

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no lines"

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, BridgeError):
                pass
        await self._http.aclose()

    async def _run(self) -> None:
        try:
            while True:
                if not self._pending:
                    self._drained.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = self._pending.popleft()
                if isinstance(item, ChatLine):
                    self._lines_pending -= 1
                    await self._post(item, self._url, item.synthesize_body())
                else:
                    await self._post(item, self._interrupt_url, item.interrupt_body())
        finally:
            # leave nothing for drain() to wait on: the process is going down (or the sink closes)
            self._pending.clear()
            self._lines_pending = 0
            self._drained.set()

    async def _post(self, item: ChatLine | Retract, url: str, body: dict) -> None:
        backoff = Backoff(0.5, 30)
        while True:
            try:
                resp = await self._http.post(url, json=body, headers={"Authorization": f"Bearer {self._token.get()}"})
            except httpx.TransportError as exc:
                if not self._agent_down:
                    log.warning("%s: agent unreachable (%s); lines wait, up to the backlog", self.bridge,
                                exc.__class__.__name__)
                    self._agent_down = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._agent_down:
                log.info("%s: agent reachable again", self.bridge)
                self._agent_down = False
            if resp.status_code == 429 and "retry-after" in resp.headers:
                await asyncio.sleep(min(MAX_RETRY_AFTER_S, _seconds(resp.headers["retry-after"])))
                continue
            if isinstance(item, ChatLine):
                self._answered(item, resp)
            else:
                self._retracted(item, resp)
            return

    def _retracted(self, what: Retract, resp: httpx.Response) -> None:
        status = resp.status_code
        if status in (401, 403):
            raise BridgeError(f"the agent refused the token ({status}): {_detail(resp)}")
        if status == 202:
            self.counts["retractions_sent"] += 1
        elif status == 404 and _code(resp) == "unknown_utterance":
            self.counts["retractions_late"] += 1  # already spoken (or dropped by the room): nothing to cut
        else:
            log.log(self._line_level, "%s: interrupt %s not applied (%d): %s", self.bridge, what.interrupt_body(),
                    status, _detail(resp))
            self.counts["retractions_failed"] += 1
        log.log(self._line_level, "%s: retracted %s (%d)", self.bridge, what.interrupt_body(), status)

    def _answered(self, line: ChatLine, resp: httpx.Response) -> None:
        status = resp.status_code
        self._note_room(status != 404)
        if status == 202:
            body = resp.json()
            if body.get("status") == "dropped":
                self._count_dropped(line, body.get("reason") or "dropped")
            else:
                self._count_spoken(line, body.get("id", "?"))
        elif status in (401, 403):
            raise BridgeError(f"the agent refused the token ({status}): {_detail(resp)}")
        elif status == 404:
            self._count_dropped(line, "no_room")
        elif status == 429:
            self._count_dropped(line, _code(resp) or "rate_limited")
        elif status >= 500:
            log.log(self._line_level, "%s: agent error %d: %s", self.bridge, status, _detail(resp))
            self._count_dropped(line, "agent_error")
        else:
            log.log(self._line_level, "%s: the agent rejected a line (%d): %s", self.bridge, status, _detail(resp))
            self._count_dropped(line, "invalid")

    def _note_room(self, exists: bool) -> None:
        # one log line when the room appears or goes away, not one per line
        if not exists and not self._room_missing:
            log.warning("%s: room %r has no peer; lines are dropped until someone joins", self.bridge, self.room)
        elif exists and self._room_missing:
            log.info("%s: room %r is open again", self.bridge, self.room)
        self._room_missing = not exists


def _seconds(value: str) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _problem(resp: httpx.Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _code(resp: httpx.Response) -> str | None:
    return _problem(resp).get("code")


def _detail(resp: httpx.Response) -> str:
    body = _problem(resp)
    detail = body.get("detail")
    return detail if isinstance(detail, str) else resp.text[:200]
