"""Word timing from a VITS duration predictor: which latent frame each word of the text starts at.

The graph gives every phoneme id a length in frames. Piper's ids are `^ _ (phoneme _)* $`, so a
phoneme's frames are its ids' plus the pad after it, and words are separated by the space
phoneme. eSpeak does not always give one phoneme word per written word (it joins "of the",
splits "2026"), so when the counts differ the written words are spread over the phonemes by
their share of the letters: approximate, but every word is captioned once, in order.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

PAD, BOS, SPACE = "_", "^", " "
_WORD = re.compile(r"\S+")


def text_words(text: str) -> list[str]:
    """The words of `text` that are spoken: whitespace-separated, with a letter or digit in them.
    Text without spaces (Chinese, a 5000-character string) has no word timing: an empty list."""
    if not any(ch.isspace() for ch in text.strip()):
        words = [text.strip()] if any(ch.isalnum() for ch in text) else []
        return words if len(text.strip()) <= 40 else []
    return [w for w in _WORD.findall(text) if any(ch.isalnum() for ch in w)]


def phoneme_words(phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]],
                  durations: np.ndarray) -> list[tuple[int, int]]:
    """(start frame, letters) of each phoneme word: runs between space phonemes that hold
    something other than punctuation."""
    pad = len(id_map.get(PAD, ()))
    index = len(id_map.get(BOS, ())) + pad
    cum = np.concatenate([[0], np.cumsum(durations)])
    words: list[tuple[int, int]] = []
    start: int | None = None
    letters = 0
    for ph in phonemes:
        if ph not in id_map:  # Piper skips it too
            continue
        frame = int(cum[min(index, len(cum) - 1)])
        index += len(id_map[ph]) + pad
        if ph == SPACE:
            if start is not None and letters:
                words.append((start, letters))
            start, letters = None, 0
            continue
        if ph.isalnum() or not (ph in ",.;:!?¡¿—…\"'()-" or ph.isspace()):
            if start is None:
                start = frame
            letters += 1
    if start is not None and letters:
        words.append((start, letters))
    return words


def align(words: Sequence[str], spoken: Sequence[tuple[int, int]]) -> list[tuple[int, str]]:
    """(start frame, word) for each written word, strictly increasing frames."""
    if not words or not spoken:
        return []
    if len(words) == len(spoken):
        starts = [s for s, _ in spoken]
    else:  # spread by letters: a written word starts where its share of the letters does
        ends = np.cumsum([n for _, n in spoken])
        total_spoken = int(ends[-1])
        sizes = [sum(ch.isalnum() for ch in w) or 1 for w in words]
        total = sum(sizes)
        starts, before = [], 0
        for size in sizes:
            pos = before * total_spoken / total  # letter position in the phonemes
            k = int(np.searchsorted(ends, pos, side="right"))
            k = min(k, len(spoken) - 1)
            begin = ends[k] - spoken[k][1]
            nxt = spoken[k + 1][0] if k + 1 < len(spoken) else spoken[k][0] + spoken[k][1] * 4
            frac = (pos - begin) / max(spoken[k][1], 1)
            starts.append(int(spoken[k][0] + frac * max(nxt - spoken[k][0], 0)))
            before += size
    out: list[tuple[int, str]] = []
    last = -1
    for s, w in zip(starts, words):
        s = max(s, last + 1)
        out.append((s, w))
        last = s
    return out


def share(words: Sequence[str], counts: Sequence[int]) -> list[list[str]]:
    """Split `words` over sentences that hold `counts` phoneme words each, in order."""
    total = sum(counts)
    if not total:
        return [list(words)] + [[] for _ in counts[1:]] if counts else []
    out, at, seen = [], 0, 0
    for i, c in enumerate(counts):
        seen += c
        upto = len(words) if i == len(counts) - 1 else round(seen * len(words) / total)
        out.append(list(words[at:upto]))
        at = upto
    return out
