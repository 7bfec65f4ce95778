"""The most-frequent-reply baseline: fits fast, answers one sentence, and the metrics punish it."""

import math

import pytest

from empathy_nlg.datasets import Utterance
from empathy_nlg.evaluation import metrics as M
from empathy_nlg.generators import GenerationRequest, create_generator
from empathy_nlg.generators.frequent import MostFrequentReplyGenerator

TRAIN = ["That's great!", "that is so sad", "THAT'S GREAT !", "Oh no, what happened?", "that is so sad", "That's great!"]


def _requests(n):
    return [GenerationRequest(context=[Utterance("speaker", f"something happened to me, number {i}")]) for i in range(n)]


def test_registered_under_frequent_and_fits_the_normalised_mode():
    gen = create_generator("frequent")
    assert isinstance(gen, MostFrequentReplyGenerator)
    gen.fit(TRAIN)
    assert gen.reply == "that 's great !"  # 3 of 6 after lower-casing/tokenising
    assert gen.count == 3
    out = gen.generate(_requests(3))
    assert [r.text for r in out] == ["that 's great !"] * 3
    assert all(r.generator == "frequent" for r in out)


def test_ties_break_by_first_seen_and_empty_training_is_an_error():
    gen = MostFrequentReplyGenerator()
    gen.fit(["b", "a", "a", "b", ""])
    assert gen.reply == "b"
    with pytest.raises(ValueError, match="no non-empty training replies"):
        MostFrequentReplyGenerator().fit(["", "   "])


def test_unfitted_generator_says_how_to_fix_it():
    with pytest.raises(ValueError, match="not fitted"):
        MostFrequentReplyGenerator().generate(_requests(1))
    assert MostFrequentReplyGenerator(reply="okay").generate(_requests(1))[0].text == "okay"


def test_its_diversity_metrics_come_out_terrible():
    n = 200
    gen = MostFrequentReplyGenerator()
    gen.fit(TRAIN)
    replies = [r.text for r in gen.generate(_requests(n))]
    diverse = [f"reply number {i} about topic {i * 7}" for i in range(n)]
    base, good = M.reply_metrics(replies, diverse), M.reply_metrics(diverse, diverse)
    # one 4-token sentence repeated: 4 distinct unigrams among 800, 3 distinct bigrams among 600
    assert base["dist1"] == pytest.approx(100 * 4 / (4 * n))
    assert base["dist2"] == pytest.approx(100 * 3 / (3 * n))
    assert base["dist1"] < 1.0 and base["dist2"] < 1.0
    assert base["top5_share"] == 100.0
    assert base["sent_std"] == pytest.approx(math.sqrt(n - 1))  # the worst possible value
    assert good["sent_std"] == 0.0 and good["top5_share"] == pytest.approx(2.5)
    assert good["dist1"] > 10 * base["dist1"]
