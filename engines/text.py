"""Split text into the pieces an engine synthesizes one at a time.

Sentences end at . ! ? ; … (Latin: followed by a space or the end) and at 。！？；
(CJK: anywhere). A period inside a number (3.14) or after a known abbreviation (Dr.) does
not end a sentence. The first piece is cut again at a clause boundary when it is long, so
the first audio of an utterance leaves as early as possible.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st vs etc e.g i.e no fig approx dept est inc ltd co corp
    jan feb mar apr jun jul aug sep sept oct nov dec mt ft u.s sra srta ud uds""".split()
)

# A candidate end: Latin terminators followed by closing quotes/brackets, or a CJK one.
_LATIN_END = re.compile(r"[.!?;…]+[\"'”’)\]]*(?=\s|$)")
_CJK_END = re.compile(r"[。！？；]+[”’」』）]*")
_CLAUSE = re.compile(r"[,:，、：—]\s*")
FIRST_PIECE_CHARS = 40  # a first piece longer than this is cut at a clause


def _ends_sentence(text: str, start: int, end: int) -> bool:
    token = text[start:end]
    if token.startswith("."):
        before = text[:start]
        word = re.search(r"([\w.]+)$", before)
        if word:
            w = word.group(1).lower()
            if w in ABBREVIATIONS or (len(w) == 1 and w.isalpha()):
                return False
        # "3." followed by a digit is a number; Latin ends need a space after anyway.
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-trimmed, none empty; joining them loses only spaces."""
    text = text.strip()
    if not text:
        return []
    ends: list[int] = []
    for m in _LATIN_END.finditer(text):
        if _ends_sentence(text, m.start(), m.end()):
            ends.append(m.end())
    for m in _CJK_END.finditer(text):
        ends.append(m.end())
    ends = sorted(set(ends))
    out: list[str] = []
    pos = 0
    for e in ends:
        piece = text[pos:e].strip()
        if piece:
            out.append(piece)
        pos = e
    rest = text[pos:].strip()
    if rest:
        out.append(rest)
    return out


def split_for_synthesis(text: str, first_chars: int = FIRST_PIECE_CHARS) -> list[str]:
    """Sentences, with the first one cut at its first clause boundary when it is long."""
    pieces = split_sentences(text)
    if pieces and len(pieces[0]) > first_chars:
        first = pieces[0]
        m = _CLAUSE.search(first, 8)
        if m and m.end() < len(first) - 4:
            pieces[0:1] = [first[: m.end()].strip(), first[m.end() :].strip()]
    return pieces


def complete_prefix(text: str) -> tuple[str, str]:
    """(complete sentences, the unfinished rest) of a text that is still growing."""
    pieces = split_sentences(text)
    if not pieces:
        return "", text
    stripped = text.rstrip()
    last = pieces[-1]
    last_complete = bool(_LATIN_END.search(last + " ")) and stripped.endswith(last) and (
        text != stripped or _CJK_END.search(last[-1:]) is not None
    )
    if _CJK_END.fullmatch(last[-1:] or "x"):
        last_complete = True
    if last_complete:
        return text, ""
    idx = text.rfind(last)
    return text[:idx], text[idx:]


def normalize(text: str) -> str:
    """Case- and space-insensitive form used for dedupe and cache keys."""
    return " ".join(text.lower().split())
