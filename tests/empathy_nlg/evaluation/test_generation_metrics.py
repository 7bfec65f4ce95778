"""Each generation metric against small hand-computed cases (incl. empty / one-token / identical replies)."""

import math

import pytest

from empathy_nlg.evaluation import metrics as M


def test_tokenize_lowercases_and_splits_contractions_like_the_cause_files():
    assert M.tokenize("I'm fine, don't worry...") == ["i", "'m", "fine", ",", "do", "n't", "worry", "..."]
    # Gao et al.'s files are already tokenised this way: they pass through unchanged
    assert M.tokenize("i 'm fine , do n't worry ...") == ["i", "'m", "fine", ",", "do", "n't", "worry", "..."]
    assert M.tokenize("That\u2019s GREAT!") == ["that", "'s", "great", "!"]
    assert M.tokenize("") == []
    assert M.normalise_reply("Hi!") == M.normalise_reply("hi !") == "hi !"


def test_corpus_bleu_hand_computed():
    hyps = [["a", "b", "c", "d"], ["a", "b", "x"]]
    refs = [["a", "b", "c", "d"], ["a", "b", "y"]]
    # corpus counts: 1-grams 6/7, 2-grams 4/5, 3-grams 2/3, 4-grams 1/1; lengths 7 vs 7 -> BP = 1
    assert M.corpus_bleu(hyps, refs, 1) == pytest.approx(100 * 6 / 7)
    assert M.corpus_bleu(hyps, refs, 2) == pytest.approx(100 * math.sqrt(6 / 7 * 4 / 5))
    assert M.corpus_bleu(hyps, refs, 3) == pytest.approx(100 * (6 / 7 * 4 / 5 * 2 / 3) ** (1 / 3))
    assert M.corpus_bleu(hyps, refs, 4) == pytest.approx(100 * (6 / 7 * 4 / 5 * 2 / 3 * 1) ** (1 / 4))


def test_corpus_bleu_brevity_penalty_and_empty_reply():
    # second reply empty: all precisions 1 but hypothesis length 4 vs reference length 6
    hyps = [["a", "b", "c", "d"], []]
    refs = [["a", "b", "c", "d"], ["e", "f"]]
    assert M.corpus_bleu(hyps, refs, 4) == pytest.approx(100 * math.exp(1 - 6 / 4))
    # every reply empty -> 0, no crash
    assert M.corpus_bleu([[], []], refs, 4) == 0.0
    assert M.corpus_bleu([], [], 4) == 0.0
    with pytest.raises(ValueError):
        M.corpus_bleu([["a"]], [], 1)


def test_corpus_bleu_identical_and_one_token():
    same = [["i", "am", "so", "sorry", "to", "hear"], ["that", "is", "great", "news", "!"]]
    scores = M.bleu_scores(same, same)
    assert all(v == pytest.approx(100.0) for v in scores.values())
    # one-token reply matching the first reference token: p1 = 1, BP = exp(1 - 3/1)
    assert M.corpus_bleu([["oh"]], [["oh", "no", "!"]], 1) == pytest.approx(100 * math.exp(1 - 3))


def test_distinct_n_hand_computed():
    hyps = [["a", "b", "a"], ["a", "b"]]
    # unigrams a b a a b: 2 distinct / 5; bigrams (a,b) (b,a) (a,b): 2 distinct / 3
    assert M.distinct_n(hyps, 1) == pytest.approx(40.0)
    assert M.distinct_n(hyps, 2) == pytest.approx(200 / 3)


def test_distinct_n_edge_cases():
    assert M.distinct_n([["x"]], 1) == 100.0
    assert M.distinct_n([["x"]], 2) == 0.0  # a one-token reply has no bigram
    assert M.distinct_n([[], ["x"]], 1) == 100.0  # an empty reply adds nothing
    assert M.distinct_n([[], []], 1) == 0.0
    assert M.distinct_n([], 2) == 0.0
    # identical replies: distinct n-grams of one reply over N copies
    assert M.distinct_n([["i", "see"]] * 4, 1) == pytest.approx(2 / 8 * 100)
    assert M.distinct_n([["a"], ["b"]], 2) == 0.0  # bigrams never cross replies


def test_top5_share():
    replies = ["a", "a", "b", "c", "d", "e", "f", "g"]
    # top five: a (2), b, c, d, e (first seen among the ties) -> 6 of 8
    assert M.top_k_share(replies, 5) == pytest.approx(75.0)
    assert M.top_k_share(["Same!", "same !", "SAME!"], 5) == 100.0  # normalised before counting
    assert M.top_k_share(["", "", "x"], 1) == pytest.approx(200 / 3)  # empty replies count as one sentence
    assert M.top_k_share([], 5) == 0.0
    assert M.top_k_share([f"r{i}" for i in range(100)], 5) == pytest.approx(5.0)


def test_sent_std():
    assert M.sent_std(["a", "b", "c"]) == 0.0  # nothing repeated
    assert M.sent_std(["same"] * 5) == pytest.approx(2.0)  # sqrt(N - 1), the maximum
    # N = 4: counts a2 b1 c1 + one empty bin -> sqrt(((2-1)^2 + 0 + 0 + (0-1)^2) / 4)
    assert M.sent_std(["a", "a", "b", "c"]) == pytest.approx(math.sqrt(2 / 4))
    assert M.sent_std(["", ""]) == pytest.approx(1.0)  # two empty replies are the same sentence
    assert M.sent_std(["x"]) == 0.0
    assert M.sent_std([]) == 0.0


def test_accuracy_perplexity_rates_and_length():
    assert M.accuracy(["sad", "joyful", "sad"], ["sad", "sad", "sad"]) == pytest.approx(200 / 3)
    assert M.accuracy([None, "sad"], ["sad", "sad"]) is None
    with pytest.raises(ValueError):
        M.accuracy(["sad"], [])
    assert M.perplexity(3 * math.log(2), 3) == pytest.approx(2.0)
    assert M.perplexity(1.0, 0) is None
    assert M.positive_rate([True, False, False, True]) == 50.0
    assert M.positive_rate([]) is None
    assert M.average_length([["a", "b"], [], ["c"]]) == pytest.approx(1.0)


def test_reply_metrics_keys_and_definitions():
    out = M.reply_metrics(["That's sad.", "Oh no!"], ["I'm sorry.", "Oh no!"])
    assert set(out) == {"bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "sent_std", "top5_share", "avg_len"}
    for key in out:
        assert key in M.DEFINITIONS


def test_cause_agreement_is_micro_over_utterances_and_counts_empty_sets_as_equal():
    got = M.cause_agreement([[2], [0, 2], [], []], [[0, 2], [0, 2], [], [1]])
    # TP 3 (2; 0, 2), FP 0, FN 2 (0 of the first; 1 of the last); exact: the 2nd and 3rd
    assert got == {"cause_n": 4, "cause_p": 100.0, "cause_r": 60.0, "cause_f1": 75.0, "cause_exact": 50.0}
    none = M.cause_agreement([[]], [[]])
    assert none["cause_p"] is None and none["cause_r"] is None and none["cause_f1"] is None and none["cause_exact"] == 100.0
    assert set(M.CAUSE_AGREEMENT_KEYS) == set(got) and all(k in M.DEFINITIONS for k in M.CAUSE_AGREEMENT_KEYS)
    with pytest.raises(ValueError):
        M.cause_agreement([[0]], [])
