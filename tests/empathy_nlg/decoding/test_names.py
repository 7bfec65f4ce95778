"""Calling the people and animals the user named by their names: where the names come from, what a
reply gets, and what is left alone."""

from __future__ import annotations

import pytest

from empathy_nlg.decoding.names import names_in, with_names


@pytest.mark.parametrize("text,expected", [
    ("my sister Anna flew in from Lisbon", {"sister": "Anna"}),
    ("our dog, Biscuit, ate my charger", {"dog": "Biscuit"}),
    ("my dog is called biscuit and he's the best", {"dog": "Biscuit"}),
    ("we got a kitten named Pip!!", {"cat": "Pip"}),
    ("our cat's name is Miso", {"cat": "Miso"}),
    ("my best friend Jo-Ann came over", {"friend": "Jo-Ann"}),
    ("Biscuit (our dog) is at the vet", {"dog": "Biscuit"}),
    ("my son Jack's birthday is on Friday", {"son": "Jack"}),
    # no capital where a name would stand, a common word, a relation that is not a person or pet
    ("my sister and I went shopping", {}), ("my dog barks all night", {}), ("my sister Today said no", {}),
    ("my car Betsy broke down", {}), ("Honestly, my sister drives me mad", {}), ("my mom Is here", {}),
])
def test_names_come_from_what_the_user_said(text, expected):
    assert names_in([text]) == expected


def test_the_words_of_one_relation_share_its_name():
    names = names_in(["my mum Carol is visiting", "we got a puppy named Pip"])
    assert names == {"mom": "Carol", "dog": "Pip"}
    assert with_names("Is your mother staying long?", names) == ("Is Carol staying long?", {"your mother": "Carol"})
    assert with_names("How is your dog?", names) == ("How is Pip?", {"your dog": "Pip"})
    assert names_in(["my mum Carol", "my mother Jane"]) == {}  # two names for one relation


def test_a_relation_named_twice_differently_is_left_alone_and_the_latest_text_counts():
    assert names_in(["my brother Tom called", "my brother Sam is older"]) == {}
    assert names_in(["my sister Anna", "my sister Anna again", "my dog Rex"]) == {"sister": "Anna", "dog": "Rex"}


@pytest.mark.parametrize("reply,expected,replaced", [
    ("Is your sister staying long?", "Is Anna staying long?", {"your sister": "Anna"}),
    ("Your dog sounds like a handful!", "Biscuit sounds like a handful!", {"Your dog": "Biscuit"}),
    ("That's sweet. What did your dog's vet say?", "That's sweet. What did Biscuit's vet say?", {"your dog's": "Biscuit's"}),
    # only the first; not a relation without a name; not when the reply names someone already
    ("your sister and your sister's friend", "Anna and your sister's friend", {"your sister": "Anna"}),
    ("How is your brother?", "How is your brother?", None),
    ("Anna must be so happy to see your sister", "Anna must be so happy to see your sister", None),
    ("Do you like your dogs?", "Do you like your dogs?", None),
])
def test_the_reply_calls_them_by_name(reply, expected, replaced):
    assert with_names(reply, {"sister": "Anna", "dog": "Biscuit"}) == (expected, replaced)
    assert with_names(reply, {}) == (reply, None)
