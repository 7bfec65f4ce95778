"""Crisis flag: clear phrasings, hard negatives, negation, reasons, and the shipped eval set."""

from __future__ import annotations

import numpy as np
import pytest

from empathy_nlg.perception.crisis import EVAL_SET, CrisisDetector, evaluate, load_eval_set


@pytest.mark.parametrize("text", [
    "I want to kill myself", "i've been thinking about suicide", "everyone would be better off without me",
    "I started cutting myself again", "I don't want to be alive anymore",
])
def test_flags_clear_phrasings(text):
    r = CrisisDetector().detect([text])
    assert r.crisis and r.score >= 0.5 and r.reasons and not all(x.startswith("negated:") for x in r.reasons)


@pytest.mark.parametrize("text", [
    "this exam is killing me", "I'm dying to see that film", "I feel so sad today", "my phone died",
    "I'm bored to death", "I'd kill for a coffee",
])
def test_hard_negatives_not_flagged(text):
    r = CrisisDetector().detect([text])
    assert not r.crisis and r.reasons == []


def test_negation_is_reported_but_not_flagged():
    r = CrisisDetector().detect(["I would never hurt myself, I'm just angry"])
    assert not r.crisis and r.reasons == ["negated:hurt_self"]


def test_any_user_turn_counts():
    r = CrisisDetector().detect(["I want to end my life", "anyway how are you"])
    assert r.crisis and "end_life" in r.reasons


def test_similarity_path():
    proto = np.eye(3, 4, dtype=np.float32)[:1]
    contrast = np.eye(3, 4, dtype=np.float32)[1:2]
    det = CrisisDetector(proto, contrast, sim_threshold=0.6, margin=0.05)
    near = np.array([[0.9, 0.1, 0, 0.4]], np.float32)
    near /= np.linalg.norm(near)
    r = det.detect(["some unusual wording"], near)
    assert r.crisis and r.reasons == ["similar:p0"]
    r2 = det.detect(["some unusual wording"], np.array([[0.1, 0.99, 0, 0]], np.float32))
    assert not r2.crisis


def test_eval_set_size_and_pattern_quality():
    texts, gold = load_eval_set(EVAL_SET)
    assert sum(gold) >= 60 and len(gold) - sum(gold) >= 60
    res = evaluate(CrisisDetector())  # patterns only
    assert res["recall"] >= 90 and res["precision"] >= 90
