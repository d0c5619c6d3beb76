"""Split text into the pieces an engine synthesizes one at a time.

Sentences end at . ! ? ; … (Latin: followed by a space or the end), at 。！？；
(CJK: anywhere) and at line breaks. A period inside a number (3.14), after a known
abbreviation (Dr.) or inside a dotted initialism (p.m.) does not end a sentence. Pieces are
whole sentences where possible (prosody), and bounded whatever the punctuation: a long
sentence is cut at clauses, then at spaces, then between characters (Chinese, or 5000 "x"
with no space), so the work and memory of one piece are bounded by MAX_PIECE_WEIGHT.

The first piece is still cut at a clause when long: a streaming voice starts after its
phoneme part, which runs once over the whole piece and grows with its length (en_US-joe-
medium: ~20 ms for 12 characters, ~65 ms for 45, ~240 ms for 176, on a busy 2-core machine).
"""

from __future__ import annotations

import re
import unicodedata

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st vs etc e.g i.e no fig approx dept est inc ltd co corp
    jan feb mar apr jun jul aug sep sept oct nov dec mt ft u.s sra srta ud uds dra lic
    av avda pág núm""".split()
)

# A candidate end: Latin terminators followed by closing quotes/brackets, or a CJK one.
_LATIN_END = re.compile(r"[.!?;…]+[\"'”’)\]»]*(?=\s|$)")
_CJK_END = re.compile(r"[。！？；]+[”’」』）]*")
_LINE_END = re.compile(r"\n+")
_CLAUSE = re.compile(r"[,:，、：—]\s*")
_DOTTED_INITIALS = re.compile(r"^(?:\w\.)+\w$")  # p.m, e.g, u.s.a
FIRST_PIECE_WEIGHT = 40  # a first piece longer than this (in Latin-character units) is cut at a clause
MAX_PIECE_WEIGHT = 240  # any piece longer than this is cut at clauses (or spaces)
CJK_WEIGHT = 3  # a CJK character takes about as long to say as three Latin letters


def _is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") and ch.isalnum()


def _weight(text: str) -> int:
    """Roughly how long `text` takes to say, in Latin-character units."""
    return sum(CJK_WEIGHT if _is_cjk(ch) else 1 for ch in text)


def _ends_sentence(text: str, start: int, end: int) -> bool:
    token = text[start:end]
    if token.startswith(".") and not token.startswith(".."):
        word = re.search(r"([\w.]+)$", text[:start])
        if word:
            w = word.group(1).lower()
            if w in ABBREVIATIONS or (len(w) == 1 and w.isalpha()) or _DOTTED_INITIALS.match(w):
                return False
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-trimmed, none empty; joining them loses only spaces."""
    text = text.strip()
    if not text:
        return []
    ends: set[int] = set()
    for m in _LATIN_END.finditer(text):
        if _ends_sentence(text, m.start(), m.end()):
            ends.add(m.end())
    ends.update(m.end() for m in _CJK_END.finditer(text))
    ends.update(m.start() for m in _LINE_END.finditer(text))
    out: list[str] = []
    pos = 0
    for e in sorted(ends):
        piece = text[pos:e].strip()
        if piece:
            out.append(piece)
        pos = e
    rest = text[pos:].strip()
    if rest:
        out.append(rest)
    return out


def _cut_at_clause(piece: str, min_weight: int) -> tuple[str, str] | None:
    """Cut after the first clause mark that leaves a head of at least `min_weight`."""
    for m in _CLAUSE.finditer(piece):
        head, tail = piece[: m.end()].strip(), piece[m.end() :].strip()
        if _weight(head) >= min_weight and _weight(tail) >= 4:
            return head, tail
    return None


def _chars_within(piece: str, max_weight: int) -> int:
    """How many leading characters of `piece` weigh at most `max_weight` (at least one)."""
    total = 0
    for i, ch in enumerate(piece):
        total += CJK_WEIGHT if _is_cjk(ch) else 1
        if total > max_weight:
            return max(1, i)
    return len(piece)


def _cut_at_space_or_char(piece: str, max_weight: int) -> tuple[str, str]:
    """Cut at the last space that keeps the head within `max_weight`, else between characters."""
    limit = _chars_within(piece, max_weight)
    space = piece.rfind(" ", 0, limit + 1)
    at = space if space > 0 else limit
    return piece[:at].strip(), piece[at:].strip()


def _cut_long(piece: str) -> list[str]:
    out: list[str] = []
    while _weight(piece) > MAX_PIECE_WEIGHT:
        cut = _cut_at_clause(piece, MAX_PIECE_WEIGHT // 3)
        if cut is None or _weight(cut[0]) > MAX_PIECE_WEIGHT:
            cut = _cut_at_space_or_char(piece, MAX_PIECE_WEIGHT)
        out.append(cut[0])
        piece = cut[1]
    if piece:
        out.append(piece)
    return out


def split_for_synthesis(text: str, first_chars: int = FIRST_PIECE_WEIGHT) -> list[str]:
    """Sentences, with the first one cut at a clause boundary when it is long and any
    run-on sentence cut into clauses."""
    pieces = [p for s in split_sentences(text) for p in _cut_long(s)]
    if pieces and _weight(pieces[0]) > first_chars:
        first = pieces[0]
        cut = _cut_at_clause(first, 8)
        if cut is not None and _weight(cut[0]) > 3 * first_chars:
            cut = None  # the first clause is long too
        if cut is None and _weight(first) > 3 * first_chars:
            if " " in first[first_chars:]:  # no early clause mark: cut at a word
                space = first.index(" ", first_chars)
                cut = first[:space].strip(), first[space:].strip()
            else:  # no space at all (Chinese, a string of one letter): between characters
                at = _chars_within(first, first_chars)
                cut = first[:at], first[at:]
        if cut is not None and cut[1]:
            pieces[0:1] = list(cut)
    return pieces


def complete_prefix(text: str) -> tuple[str, str]:
    """(complete sentences, the unfinished rest) of a text that is still growing.

    A Latin sentence counts as complete once whitespace follows its end mark (the next token
    could still turn "3." into "3.14"); a CJK end mark or a line break completes at once."""
    pieces = split_sentences(text)
    if not pieces:
        return "", text
    stripped = text.rstrip()
    last = pieces[-1]
    trailing_space = text != stripped
    end_mark = next((m for m in _LATIN_END.finditer(last) if m.end() == len(last)), None)
    last_complete = (end_mark is not None and trailing_space
                     and _ends_sentence(last, end_mark.start(), end_mark.end()))
    if _CJK_END.fullmatch(last[-1:] or "x") or "\n" in text[len(stripped):]:
        last_complete = True
    if last_complete:
        return text, ""
    idx = text.rfind(last)
    return text[:idx], text[idx:]


_CLAUSE_END = re.compile(r"[,:;，、：；—]\s+|[，、：；]")
MIN_CLAUSE_WORDS = 3  # a clause shorter than this ("Well,") waits for more: it would sound clipped


def speakable_prefix(text: str, *, clauses: bool = True, words: bool = False) -> tuple[str, str]:
    """(what can be spoken now, the rest) of a growing text (an LLM token stream).

    Complete sentences first; else, with `clauses`, the text up to its last clause mark once
    that head holds a few words (a clause stands alone well enough); else, with `words` (the
    stream is slow and the track about to run dry), the whole words so far."""
    complete, rest = complete_prefix(text)
    if complete.strip():
        return complete, rest
    if clauses:
        for m in reversed(list(_CLAUSE_END.finditer(text))):
            head = text[: m.end()]
            if len(head.split()) >= MIN_CLAUSE_WORDS or any(_is_cjk(ch) for ch in head):
                return head, text[m.end():]
    if words:
        space = max(text.rfind(" "), text.rfind("\n"))
        if space > 0 and text[:space].strip():
            return text[: space + 1], text[space + 1:]
    return "", text


def normalize(text: str, *, fold_case: bool = True) -> str:
    """Space-insensitive (and by default case-insensitive) form used for dedupe and cache keys.

    The PCM cache keeps case (`fold_case=False`): "US" and "us" are said differently."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.lower() if fold_case else text
