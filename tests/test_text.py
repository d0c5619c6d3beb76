"""Sentence and clause splitting: English, Spanish, Mandarin (and mixed), numbers,
abbreviations, the short first piece, and growing (streamed) text."""

from __future__ import annotations

import pytest

from engines.text import complete_prefix, normalize, split_for_synthesis, split_sentences


@pytest.mark.parametrize("text, sentences", [
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
    ("Pi is 3.14 and e is 2.718. Done.", ["Pi is 3.14 and e is 2.718.", "Done."]),
    ("Dr. Smith met Mrs. Jones at 3 p.m. today. They talked.", ["Dr. Smith met Mrs. Jones at 3 p.m. today.", "They talked."]),
    ("The U.S. economy grew, e.g. in tech. Really?", ["The U.S. economy grew, e.g. in tech.", "Really?"]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("Wait... what?! No way.", ["Wait...", "what?!", "No way."]),
    ("¿Qué tal? ¡Muy bien! La Sra. García llegó a las 3.30. Adiós.",
     ["¿Qué tal?", "¡Muy bien!", "La Sra. García llegó a las 3.30.", "Adiós."]),
    ("你好。今天天气很好！我们走吧", ["你好。", "今天天气很好！", "我们走吧"]),
    ("价格是3.14元。很便宜吗？是的", ["价格是3.14元。", "很便宜吗？", "是的"]),
    ("我喜欢Python。It is great. 对吧？", ["我喜欢Python。", "It is great.", "对吧？"]),
    ("A heading\nThe body. More", ["A heading", "The body.", "More"]),
    ("   ", []),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_first_piece_is_a_short_clause():
    text = "Well, thank you so much for asking about that, it really means a lot to me. See you."
    pieces = split_for_synthesis(text)
    assert pieces[0] == "Well, thank you so much for asking about that,"
    assert pieces[1:] == ["it really means a lot to me.", "See you."]


def test_first_piece_of_mandarin_is_cut_at_a_clause():
    text = "首先，我们需要讨论一下这个问题，然后再决定下一步应该怎么做。好的。"
    assert split_for_synthesis(text) == ["首先，我们需要讨论一下这个问题，", "然后再决定下一步应该怎么做。", "好的。"]


def test_short_first_sentence_is_not_cut():
    assert split_for_synthesis("Yes, sure. Later, maybe.") == ["Yes, sure.", "Later, maybe."]


def test_a_run_on_sentence_without_punctuation_is_cut_into_bounded_pieces():
    text = " ".join(["word"] * 200)
    pieces = split_for_synthesis(text)
    assert " ".join(pieces) == text
    assert len(pieces[0]) < 60
    assert all(len(p) <= 240 for p in pieces)


@pytest.mark.parametrize("text, complete, rest", [
    ("Hello there. How are", "Hello there. ", "How are"),
    ("Hello there. How are you?", "Hello there. ", "How are you?"),  # "?" might become "?!"
    ("Hello there. How are you? ", "Hello there. How are you? ", ""),
    ("Pi is 3.", "", "Pi is 3."),  # may still become 3.14
    ("Pi is 3. ", "Pi is 3. ", ""),
    ("See Dr. ", "", "See Dr. "),
    ("Hello. Dr. Smith is ", "Hello. ", "Dr. Smith is "),
    ("你好。我们", "你好。", "我们"),
    ("A list\n", "A list\n", ""),
    ("", "", ""),
])
def test_complete_prefix(text, complete, rest):
    assert complete_prefix(text) == (complete, rest)


def test_normalize():
    assert normalize("  Thank   you\n") == "thank you"
    assert normalize("The US  Army", fold_case=False) == "The US Army"
