"""Shared text helpers: the emoji words (the lexical helpers are tested with their users in decoding/)."""

from __future__ import annotations

from empathy_nlg.text import EMOJI_WORDS, emoji_gloss, split_sentences


def test_emoji_feelings_are_appended_once_each_and_offsets_survive():
    text = "😭😭 my cat 💔"
    out = emoji_gloss(text)
    assert out == "😭😭 my cat 💔 (crying, heartbroken)"
    assert out.startswith(text)  # appended, never replaced: offsets into the user's text stay valid


def test_text_without_known_emoji_is_unchanged():
    for text in ("", "plain words", "a rare glyph ⛩ only"):
        assert emoji_gloss(text) == text


def test_variation_selectors_and_the_table():
    assert emoji_gloss("❤️") == "❤️ (love)"  # the heart is matched without its variation selector
    assert all(words and words == words.strip() for words in EMOJI_WORDS.values())


def test_split_sentences_cuts_after_end_punctuation_and_white_space_only():
    assert split_sentences("I'm a nurse. My dog is Max!  Why?") == ["I'm a nurse.", "My dog is Max!", "Why?"]
    assert split_sentences("3.5 hours, e.g.like this") == ["3.5 hours, e.g.like this"]  # no space: no cut
    assert split_sentences("Dr. Li is here") == ["Dr.", "Li is here"]  # abbreviations are cut too (documented)
    assert split_sentences("") == [""]
