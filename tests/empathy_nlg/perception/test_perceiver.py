"""Perceiver on the committed artefacts: a valid Perception, batch = single, bad input errors."""

from __future__ import annotations

import pytest

from empathy_nlg.datasets import Utterance
from empathy_nlg.perception.perceiver import Perceiver
from empathy_nlg.perception.types import Perception
from empathy_nlg.taxonomy import CM_CODES, EMOTIONS, POSITIVE_EMOTIONS, polarity_of


@pytest.fixture(scope="module")
def perceiver() -> Perceiver:
    return Perceiver.load()


DIALOGUE = [
    Utterance("speaker", "My best friend moved to another country last month."),
    Utterance("listener", "Oh, that must be hard. Do you still talk?"),
    Utterance("speaker", "Not much, and the weekends feel so empty without her."),
    Utterance("listener", "I'm sorry, that sounds lonely."),
    Utterance("speaker", "Yeah, I really miss her."),
]


def test_perceive_returns_valid_perception(perceiver):
    p = perceiver.perceive(DIALOGUE)
    assert isinstance(p, Perception)
    assert list(p.emotion_probs) == list(EMOTIONS)
    assert abs(sum(p.emotion_probs.values()) - 1.0) < 1e-4
    assert p.emotion == max(p.emotion_probs, key=p.emotion_probs.get)
    assert p.polarity == polarity_of(p.emotion) or p.polarity_prob >= 0.5
    pos = sum(p.emotion_probs[e] for e in POSITIVE_EMOTIONS)
    assert abs(p.polarity_prob - (pos if p.polarity == "positive" else 1 - pos)) < 1e-4 and p.polarity_prob >= 0.5
    assert p.polarity == "negative" and p.emotion in {"lonely", "sad", "nostalgic", "sentimental", "disappointed", "devastated"}
    assert p.causes and all(DIALOGUE[c.index].role == "speaker" and c.text == DIALOGUE[c.index].text for c in p.causes)
    for c in p.causes:
        assert 0 <= c.score <= 1
        assert all(0 <= s < e <= len(c.text) for s, e in c.spans)
    assert set(p.cm) == set(CM_CODES) and all(0 <= v <= 1 for v in p.cm.values())
    assert not p.crisis
    assert p.models == perceiver.versions and {"emotion", "cause", "cm", "crisis"} <= set(p.models)
    Perception.from_dict(p.to_dict())  # serialisable round trip


def test_batch_matches_single_and_flags_crisis(perceiver):
    crisis_dialogue = [Utterance("speaker", "I can't do this anymore."), Utterance("listener", "What's going on?"),
                       Utterance("speaker", "I want to end my life.")]
    batch = perceiver.perceive_batch([DIALOGUE, crisis_dialogue, [Utterance("speaker", "I won the race today!")]])
    single = perceiver.perceive(DIALOGUE)
    assert batch[0].emotion == single.emotion
    assert abs(batch[0].emotion_probs["lonely"] - single.emotion_probs["lonely"]) < 1e-4
    assert batch[1].crisis and "end_life" in batch[1].crisis_reasons
    assert batch[2].polarity == "positive" and batch[2].causes[0].index == 0


def test_bad_input(perceiver):
    with pytest.raises(ValueError):
        perceiver.perceive([])
    with pytest.raises(ValueError):
        perceiver.perceive([Utterance("user", "hi")])


def test_annotate_conversations_writes_cause_indices(perceiver, tmp_path):
    import json

    from empathy_nlg.datasets import Conversation
    from empathy_nlg.perception.cause import CauseModel, annotate_conversations
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR, NoCache

    convs = [Conversation("c1", "lonely", list(DIALOGUE)), Conversation("c2", "proud", [Utterance("speaker", "I won the race today!")])]
    out = tmp_path / "annotated.jsonl"
    n = annotate_conversations(convs, CauseModel.load(DEFAULT_ARTIFACTS_DIR), NoCache(perceiver.encoder), out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == 2 and [r["conv_id"] for r in rows] == ["c1", "c2"]
    assert rows[0]["utters"] == [u.text for u in DIALOGUE] and rows[0]["context"] == "lonely"
    assert rows[0]["emotion_cause"] and all(DIALOGUE[i].role == "speaker" for i in rows[0]["emotion_cause"])
    assert rows[1]["emotion_cause"] == [0]


def test_crisis_check_alone_agrees_with_full_perception(perceiver):
    crisis_dialogue = [Utterance("speaker", "I can't do this anymore."), Utterance("listener", "What's going on?"),
                       Utterance("speaker", "I want to end my life.")]
    for dialogue in (DIALOGUE, crisis_dialogue):
        full = perceiver.perceive(dialogue)
        alone = perceiver.crisis_check(dialogue)
        assert alone.crisis == full.crisis and alone.reasons == full.crisis_reasons
        assert alone.score == pytest.approx(full.crisis_score, abs=1e-4)
    assert perceiver.crisis_check(crisis_dialogue).crisis and not perceiver.crisis_check(DIALOGUE).crisis


@pytest.mark.parametrize("text, polarity", [("😭😭😭💔", "negative"), ("😡😡", "negative"), ("🥳🎉", "positive"),
                                            ("🙂", "positive")])
def test_emoji_only_messages_are_perceived_by_their_feeling(perceiver, text, polarity):
    # MiniLM reads every emoji as [UNK]: before the emoji words, all four came out "proud"
    p = perceiver.perceive([Utterance("speaker", text)])
    assert p.polarity == polarity, (text, p.emotion)


def test_emoji_words_keep_cause_spans_inside_the_user_text(perceiver):
    text = "my dog died this morning 😭💔"
    p = perceiver.perceive([Utterance("speaker", text)])
    assert p.polarity == "negative"
    for cause in p.causes:
        for start, end in cause.spans:
            assert 0 <= start < end <= len(text)
