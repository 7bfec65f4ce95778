"""Crisis flag: clear phrasings, hard negatives, negation, reasons, and the shipped eval set."""

from __future__ import annotations

import numpy as np
import pytest

from empathy_nlg.perception.crisis import EVAL_SET, CrisisDetector, cue_matches, evaluate, load_eval_set


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


@pytest.mark.parametrize("text", [
    "I go to sleep and not wake. thank you for everything", "lately i keep praying i won't wake up",
    "how many would it take to just not wake up", "i want to take enough that i don't wake up",
    "it would honestly be a relief if i just didn't wake up tomorrow",
])
def test_a_wish_not_to_wake_or_not_waking_as_a_purpose_is_flagged(text):
    r = CrisisDetector().detect([text])
    assert r.crisis and "never_wake" in r.reasons


@pytest.mark.parametrize("text", [
    # rules v13 sent each of these to the resources ("not/don't wake up" anywhere)
    "the baby did not wake up once last night!", "lazy weekend, I don't wake up until 10",
    "so tired I could sleep and not wake up till monday", "I set three alarms so I don't wake up late",
    "I hope I don't wake up the baby", "were you scared you wouldn't wake up?",
])
def test_ordinary_not_waking_is_not_never_wake(text):
    assert "never_wake" not in CrisisDetector().detect([text]).reasons


def test_negation_is_reported_but_not_flagged():
    r = CrisisDetector().detect(["I would never hurt myself, I'm just angry"])
    assert not r.crisis and r.reasons == ["negated:hurt_self"]


def test_only_the_latest_message_is_judged():
    # the old detector re-flagged the whole window: every later message got the crisis script again
    assert not CrisisDetector().detect(["I want to end my life", "ok, I'll call the line"]).crisis
    assert CrisisDetector().detect(["anyway", "I want to end my life"]).crisis


class _Head:
    """A stand-in classifier: P(crisis) = the first feature (the message's mean embedding, dim 0)
    blended with the context's (dim 2*d), so context-only flags can be produced on purpose."""

    def __init__(self, d):
        import torch

        self.d = d
        self.torch = torch

    def eval(self):
        return self

    def __call__(self, x):
        p = (0.7 * x[:, 0] + 0.3 * x[:, 2 * self.d]).clamp(1e-4, 1 - 1e-4)
        return self.torch.log(p / (1 - p)).unsqueeze(-1)


def _embed(texts):
    # dim 0 = 1 for texts naming the rope, else 0.05 (normalisation does not matter to the head)
    return np.asarray([[1.0 if "rope" in t else 0.05, 0.0] for t in texts], dtype=np.float32)


def test_classifier_path_with_threshold_and_concern():
    det = CrisisDetector((_Head(2), {"threshold": 0.6, "concern_threshold": 0.3}), _embed)
    r = det.detect(["I bought a rope"])
    assert r.crisis and any(x.startswith("classifier:") for x in r.reasons) and r.score > 0.5
    quiet = det.detect(["what a nice day"])
    assert not quiet.crisis and not quiet.concern and quiet.reasons == []
    # context alone pushes "tonight's the night" over the threshold: flagged, and marked context-only
    ctx = CrisisDetector((_Head(2), {"threshold": 0.3, "concern_threshold": 0.2}), _embed)
    r = ctx.detect(["I bought a rope", "tonight's the night"])
    assert r.crisis and "context-only" in r.reasons
    # between the two thresholds: a concern (check-in), not a crisis
    mid = CrisisDetector((_Head(2), {"threshold": 0.9, "concern_threshold": 0.5}), _embed)
    r = mid.detect(["the rope"])
    assert not r.crisis and r.concern and any(x.startswith("concern:") for x in r.reasons)


def _embed_stolen(texts):
    # "stolen" reads 0.4 on its own (below the 0.5 check-in threshold): context weight without danger
    return np.asarray([[1.0 if "rope" in t else 0.4 if "stolen" in t else 0.05, 0.0] for t in texts], dtype=np.float32)


def test_context_without_danger_cannot_flag_a_message():
    # the stand-in reads 0.7 × message + 0.3 × context: "bus till payday" after a stolen bike reaches
    # 0.155, above this flag threshold, only through its context — but nothing in that context is
    # danger (0.4 alone, under the check-in threshold): a concern, never the resources
    det = CrisisDetector((_Head(2), {"threshold": 0.15, "concern_threshold": 0.5}), _embed_stolen)
    assert det.context_holds_danger(["I bought a rope", "tonight's the night"])
    assert not det.context_holds_danger(["my bike got stolen", "bus till payday then"])
    r = det.detect(["my bike got stolen", "bus till payday then"])
    assert not r.crisis and not r.concern and "context-only" not in r.reasons and r.score < 0.5
    assert any(x.startswith("context-concern-dropped:") for x in r.reasons)  # v13: not even a question
    det.concern_needs_danger_in_context = False  # v11/v12: a concern (the check-in question), never the resources
    r = det.detect(["my bike got stolen", "bus till payday then"])
    assert not r.crisis and r.concern and any(x.startswith("concern:") for x in r.reasons)
    # a pattern or a cue in the context is danger too, whatever the classifier says of it
    assert det.context_holds_danger(["I'm standing on the bridge", "bus till payday then"])


def _embed_meh(texts):
    # "meh" reads 0.12 × 0.7 = 0.084 alone, 0.12 after another "meh" (the stand-in's 0.3 on context)
    return np.asarray([[1.0 if "rope" in t else 0.12 if "meh" in t else 0.05, 0.0] for t in texts], dtype=np.float32)


def test_a_check_in_that_only_the_context_raises_needs_danger_in_that_context():
    """v13: between the check-in and the flag threshold, a message that is ordinary alone is asked
    about only when something said before it holds danger ("ok. will try the depot again tmrw"
    after a lost phone that was not backed up got the safety question, heldout_m.jsonl)."""
    det = CrisisDetector((_Head(2), {"threshold": 0.9, "concern_threshold": 0.1}), _embed_meh)
    assert det.classify(["meh day", "meh, whatever"]) >= 0.1 > det.classify(["meh, whatever"])
    assert not det.context_holds_danger(["meh day", "meh, whatever"])
    r = det.detect(["meh day", "meh, whatever"])
    assert not r.crisis and not r.concern and any(x.startswith("context-concern-dropped:") for x in r.reasons)
    # danger in the context (a rope): the same message is asked about
    r = det.detect(["I bought a rope", "meh day", "meh, whatever"])
    assert r.concern or r.crisis
    # the message itself concerning: asked, whatever came before
    assert det.detect(["meh day", "the rope"]).crisis or det.detect(["meh day", "the rope"]).concern
    det.concern_needs_danger_in_context = False  # v12: the context alone asks
    assert det.detect(["meh day", "meh, whatever"]).concern


@pytest.mark.parametrize("text, flagged", [
    ("Today was my last day at my old job after 8 years", False),
    ("it was my last day before retirement, the kids made me a card", False),
    ("today is my last day", True),
    ("this is my last day on earth", True),
    ("Friday was my last day after 34 years at the council.", False),  # retirement, told in the past
    ("yesterday was my last day, they gave me a card", False),
    ("tomorrow is my last day", True),
    ("i've decided today will be my last day", True),
])
def test_last_day_is_not_a_leaving_do(text, flagged):
    assert ("last_day" in CrisisDetector().detect([text]).reasons) is flagged


@pytest.mark.parametrize("text, flagged", [
    ("i cant do this anymore, the pills are lined up on my desk", True),
    ("my antidepressants are all stockpiled in a shoebox", True),
    ("my vitamins are lined up on the shelf", False),
])
def test_pills_lined_up_either_way_round(text, flagged):
    assert ("stockpile" in CrisisDetector().detect([text]).reasons) is flagged


def test_patterns_are_a_floor_the_classifier_cannot_lower():
    det = CrisisDetector((_Head(2), {"threshold": 0.6}), _embed)
    r = det.detect(["I want to kill myself"])
    assert r.crisis and "kill_self" in r.reasons


def test_long_messages_are_read_in_chunks():
    from empathy_nlg.perception.crisis import chunks

    text = " ".join(["word"] * 150 + ["rope"])
    pieces = chunks(text)
    assert len(pieces) == 3 and pieces[-1].endswith("rope")
    from empathy_nlg.perception.crisis import features

    f = features(_embed(pieces), None)
    assert f[2] == 1.0 and f[0] < 0.5 and not f[4:].any()  # [mean | max | context]: the max sees the last piece


def test_eval_set_size_and_pattern_quality():
    texts, gold = load_eval_set(EVAL_SET)
    assert sum(gold) >= 60 and len(gold) - sum(gold) >= 60
    res = evaluate(CrisisDetector())  # patterns only
    assert res["recall"] >= 90 and res["precision"] >= 90


# ---------------------------------------------------------------- means, plans and imminent-danger cues
@pytest.mark.parametrize("text, name", [
    ("i took like thirty of my anxiety tablets an hour ago", "overdose_taken"),
    ("the noose is hanging in my wardrobe", "hanging_means"),
    ("I've been hoarding my mum's sleeping tablets for weeks", "stockpile"),
    ("my brother's rifle is loaded and on my bed", "firearm_access"),
])
def test_means_in_hand_flag_without_a_classifier(text, name):
    r = CrisisDetector().detect([text])
    assert r.crisis and name in r.reasons


@pytest.mark.parametrize("text, cue", [
    ("I'm sitting on the ledge of the multi-storey right now", "at_height"),
    ("I wrote letters for my kids, they're in the bedside drawer", "farewell_letters"),
    ("I'll finally do it after everyone is asleep", "do_it"),
    ("I've picked the date and I feel calm", "date_chosen"),
    # v10's families (written from the categories, not from held-out messages)
    ("drove past my old school one last time", "final_act"),
    ("my cat was the only thing keeping me alive and she's gone", "nothing_holding"),
    ("signed my will at the bank and cancelled my insurance and the lease too", "affairs_settled"),
    ("the loop is ready and the knot is hanging off the bannister", "ligature"),
    ("closed all my accounts and said goodbye to everyone", "withdrawal_goodbye"),
])
def test_imminent_danger_cues_ask_without_flagging(text, cue):
    r = CrisisDetector().detect([text])  # patterns only: a cue is a check-in, never the resources
    assert not r.crisis and r.concern and f"cue:{cue}" in r.reasons


@pytest.mark.parametrize("text, kept", [
    ("took one last look at the empty rooms before handing back the keys", False),
    ("we sold mum's house, so I sat in the garden one final time", False),
    ("one last drink with the team, the office is closing on friday", False),
    ("going to the pier one last time tonight, I've said what I needed to say", True),
    ("I hugged my brother one last time and he didn't know why", True),
])
def test_final_act_steps_aside_for_an_ordinary_move(text, kept):
    assert ("final_act" in cue_matches(text)) is kept


@pytest.mark.parametrize("text", [
    "I'm on the edge of my seat waiting for the results",
    "on my last birthday we went skydiving",
    "I was waiting for the bus when it started to rain",
    "I gave my friend a spare key to my flat",
    "I'm on top of the world today",
    "we took the whole family to the beach",
    "I'm sitting on the balcony enjoying the rain",  # a cue, but a classifier that is not concerned asks nothing
    "we finally tied the knot last weekend",
    "for the last time, put the toilet seat down",
    "the only thing keeping me going this week is coffee",
    "deleted all my social media for a month, best decision",
    "paid off my student loan today!!",
])
def test_everyday_sentences_with_the_same_words_are_not_flagged(text):
    det = CrisisDetector((_Head(2), {"threshold": 0.9, "concern_threshold": 0.5, "cue_gate": 0.1}), _embed)
    r = det.detect([text])
    assert not r.crisis and not r.concern, r.reasons


def test_a_cue_with_a_concerned_classifier_is_a_crisis():
    det = CrisisDetector((_Head(2), {"threshold": 0.9, "concern_threshold": 0.5}), _embed)
    # the stand-in head reads "rope" as P ≈ 0.7: concerned (0.5 ≤ p < 0.9) → with a timing cue, a crisis
    r = det.detect(["the rope is ready and I'll do it tonight"])
    assert r.crisis and "cue:do_it" in r.reasons
    r = det.detect(["the rope for the swing"])
    assert not r.crisis and r.concern  # concern alone stays a check-in


def test_a_plan_told_over_several_messages_is_read_together():
    det = CrisisDetector()
    r = det.detect(["I'm holding my dad's pistol", "it's loaded"])
    assert r.crisis and "window:firearm_access" in r.reasons and "context-only" in r.reasons
    assert not det.detect(["it's loaded"]).crisis  # the same words alone: nothing
    # the window is the user's last three messages: an old statement does not keep flagging
    assert not det.detect(["I'm holding my dad's pistol", "a", "b", "it's loaded"]).crisis
