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


class _StoryModel:
    """Stand-in fine-tuned emotion model: all its probability on one emotion; records the stories."""

    version = "story-stub"

    def __init__(self, emotion: str) -> None:
        self.emotion = emotion
        self.seen = []

    def predict_dialogues(self, dialogues):
        import numpy as np

        from empathy_nlg.perception.emotion_tuned import story_text

        self.seen += [story_text(d) for d in dialogues]
        row = np.zeros(len(EMOTIONS), dtype=np.float32)
        row[EMOTIONS.index(self.emotion)] = 1.0
        return np.stack([row] * len(dialogues))


def test_a_fine_tuned_emotion_model_is_blended_in_with_its_weight(perceiver):
    frozen = perceiver.perceive(DIALOGUE)
    stub = _StoryModel("proud")
    blended = Perceiver(perceiver.encoder, perceiver.emotion, perceiver.cause, perceiver.cm, perceiver.crisis,
                        tuned_emotion=stub, tuned_weight=0.25).perceive(DIALOGUE)
    for e in EMOTIONS:
        expected = 0.75 * frozen.emotion_probs[e] + (0.25 if e == "proud" else 0.0)
        assert abs(blended.emotion_probs[e] - expected) < 1e-4, e
    # the model reads the user's story: their turns in order, never the listener's
    assert stub.seen == [" ".join(u.text for u in DIALOGUE if u.role == "speaker")]
    alone = Perceiver(perceiver.encoder, perceiver.emotion, perceiver.cause, perceiver.cm, perceiver.crisis,
                      tuned_emotion=stub, tuned_weight=1.0).perceive(DIALOGUE)
    assert alone.emotion == "proud" and alone.polarity == "positive"
    assert alone.models["emotion"] == f"{perceiver.emotion.version}+story-stub@1"
    # a message the crisis detector flags (or is concerned about) keeps the frozen head's reading: the
    # safety check-in is gated on a negative feeling, and the tuned model hears a plan as calm resolve
    crisis = [Utterance("speaker", "I can't do this anymore."), Utterance("speaker", "I want to end my life.")]
    reader = _StoryModel("proud")
    tuned = Perceiver(perceiver.encoder, perceiver.emotion, perceiver.cause, perceiver.cm, perceiver.crisis,
                      tuned_emotion=reader, tuned_weight=1.0)
    flagged = tuned.perceive(crisis)
    # the reference reads the same texts from an empty encoding cache too (the fixture's cache holds
    # embeddings computed in other batches, which differ from these in the last float bits)
    frozen_alone = Perceiver(perceiver.encoder, perceiver.emotion, perceiver.cause, perceiver.cm, perceiver.crisis)
    assert flagged.crisis and flagged.emotion_probs == frozen_alone.perceive(crisis).emotion_probs
    assert flagged.polarity == "negative" and flagged.emotion != "proud"
    assert reader.seen == []  # its reading would be discarded: the tuned model is not run on it
    # in one batch, each dialogue gets what it would get alone (within a batch's float noise, as above)
    both = tuned.perceive_batch([crisis, DIALOGUE])
    assert all(abs(both[0].emotion_probs[e] - flagged.emotion_probs[e]) < 1e-4 for e in EMOTIONS)
    assert both[1].emotion == "proud"
    assert reader.seen == [" ".join(u.text for u in DIALOGUE if u.role == "speaker")]
    with pytest.raises(ValueError, match="tuned_weight"):
        Perceiver(perceiver.encoder, perceiver.emotion, perceiver.cause, perceiver.cm, perceiver.crisis,
                  tuned_emotion=stub, tuned_weight=0.0)


def test_the_fine_tuned_emotion_model_loads_from_the_artefacts_or_is_left_out_with_a_warning(tmp_path, caplog):
    """A real (untrained, MiniLM-based) tuned model in a copy of the artefacts is loaded and blended;
    without one, or without its base encoder, the frozen head decides alone and the log says why."""
    import shutil

    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
    from empathy_nlg.perception.emotion_tuned import ADAPTER_DIR, TunedEmotion
    from empathy_nlg.perception.encoder import default_encoder_path
    from empathy_nlg.perception.perceiver import load_tuned_emotion

    art = tmp_path / "art"
    shutil.copytree(DEFAULT_ARTIFACTS_DIR, art, ignore=shutil.ignore_patterns(ADAPTER_DIR, "emotion_tuned_head.*"))
    assert load_tuned_emotion(art) is None and "no fine-tuned emotion model" in caplog.text
    TunedEmotion.fresh(default_encoder_path()).save(art)
    assert load_tuned_emotion(art, str(tmp_path / "nowhere")) is None and "not prepared" in caplog.text
    p = Perceiver.load(art, emotion_tuned_weight=0.5, emotion_tuned_base=str(default_encoder_path()))
    assert p.tuned_emotion is not None and p.tuned_weight == 0.5
    out = p.perceive(DIALOGUE)
    assert abs(sum(out.emotion_probs.values()) - 1.0) < 1e-4 and "@0.5" in out.models["emotion"]
