"""Live-chat (danmu) rules: what a room does with a flood of chat lines.

Pure policy, no I/O: `DanmuPolicy.admit` decides whether a new line is spoken and how its
text reads; the Speaker applies the queue cap and expiry, which need the queue.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from engines.text import normalize

from .protocol import DanmuRules

ELLIPSIS = "…"


@dataclass(slots=True)
class Admission:
    text: str
    dropped: str | None = None  # protocol `dropped` reason, or None when admitted


def cut_text(text: str, max_chars: int) -> str:
    """At most max_chars characters (ellipsis included), cut at a word boundary when there is one."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars - 1)
    head = text[:keep]
    # Latin text: back up to the last space if it leaves something; CJK has no spaces.
    space = head.rfind(" ")
    if not text[keep].isspace() and space > keep // 2:
        head = head[:space]
    return head.rstrip(" ,.;:") + ELLIPSIS


class DanmuPolicy:
    def __init__(self, rules: DanmuRules | None = None, clock=time.monotonic):
        self.rules = rules or DanmuRules()
        self._clock = clock
        self._recent: OrderedDict[str, float] = OrderedDict()  # normalized text -> last seen
        self._senders: dict[str, deque[float]] = {}
        self._blocked: re.Pattern | None = None
        self._compile()

    def update(self, rules: DanmuRules) -> None:
        """Merge: fields the client set (even to null) replace the current ones."""
        merged = self.rules.model_dump()
        merged.update({k: getattr(rules, k) for k in rules.model_fields_set})
        self.rules = DanmuRules(**merged)
        self._compile()

    def _compile(self) -> None:
        words = self.rules.blocked_words
        if words:
            alternatives = "|".join(re.escape(w.lower()) for w in words)
            # whole words for Latin words; CJK words match anywhere (no spaces to bound them)
            self._blocked = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)|(?:{alternatives})(?=[\u3000-\u9fff])"
                                       rf"|(?<=[\u3000-\u9fff])(?:{alternatives})")
        else:
            self._blocked = None

    def admit(self, text: str, sender: str | None) -> Admission:
        r = self.rules
        now = self._clock()
        if self._blocked is not None and self._blocked.search(text.lower()):
            return Admission(text, "filtered")
        if r.per_sender_per_min and sender:
            stamps = self._senders.setdefault(sender, deque())
            while stamps and now - stamps[0] >= 60:
                stamps.popleft()
            if len(stamps) >= r.per_sender_per_min:
                return Admission(text, "rate_limited")
            stamps.append(now)
            if len(self._senders) > 10_000:  # bound memory: forget the stalest sender
                self._senders.pop(next(iter(self._senders)))
        if r.dedupe_s:
            key = normalize(text)
            last = self._recent.get(key)
            if last is not None and now - last < r.dedupe_s:
                return Admission(text, "duplicate")
            self._recent[key] = now
            self._recent.move_to_end(key)
            while self._recent and (len(self._recent) > 5000 or now - next(iter(self._recent.values())) >= r.dedupe_s):
                self._recent.popitem(last=False)
        if r.max_chars:
            text = cut_text(text, r.max_chars)
        if r.template and sender:
            text = r.template.replace("{from}", sender).replace("{text}", text)
        return Admission(text)
