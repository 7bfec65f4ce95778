"""Emotion head: features, metrics, and a tiny end-to-end train/save/load on synthetic data."""

from __future__ import annotations

import numpy as np

from empathy_nlg.datasets import Conversation, LabelledText, Utterance
from empathy_nlg.perception.emotion import (
    EmotionClassifier, dialogue_features, emotion_metrics, eval_set, result_from_probs, speaker_prefixes, train_emotion,
)
from empathy_nlg.taxonomy import EMOTION_TO_ID, EMOTIONS, POSITIVE_EMOTIONS, polarity_of


def test_dialogue_features_views():
    emb = np.eye(4, 3, dtype=np.float32)  # 4 utterances, dim 3
    roles = ["speaker", "listener", "speaker", "listener"]
    f = dialogue_features(roles, emb)
    assert f.shape == (12,)
    np.testing.assert_allclose(f[:3], (emb[0] + emb[2]) / 2)  # speaker mean
    np.testing.assert_allclose(f[3:6], emb[2])  # last speaker
    np.testing.assert_allclose(f[6:9], emb[0])  # first speaker
    np.testing.assert_allclose(f[9:], (emb[1] + emb[3]) / 2)  # listener mean
    only_speaker = dialogue_features(["speaker"], emb[:1])
    np.testing.assert_allclose(only_speaker[9:], 0)


def test_speaker_prefixes():
    conv = Conversation("c", "sad", [Utterance("speaker", "a"), Utterance("listener", "b"), Utterance("speaker", "c"), Utterance("listener", "d")])
    prefixes = speaker_prefixes(conv)
    assert [len(p) for p in prefixes] == [1, 3]
    assert all(p[-1].role == "speaker" for p in prefixes)


def test_metrics_and_polarity():
    labels = np.array([EMOTION_TO_ID["sad"], EMOTION_TO_ID["joyful"]])
    probs = np.full((2, len(EMOTIONS)), 0.001)
    probs[0, EMOTION_TO_ID["sad"]] = 0.9
    probs[1, EMOTION_TO_ID["proud"]] = 0.5
    probs[1, EMOTION_TO_ID["joyful"]] = 0.4
    probs /= probs.sum(1, keepdims=True)
    m = emotion_metrics(probs, labels)
    assert m["accuracy"] == 50.0 and m["top3_accuracy"] == 100.0 and m["polarity_accuracy"] == 100.0
    r = result_from_probs(probs[1])
    assert r.emotion == "proud" and r.polarity == polarity_of("proud") == "positive"
    assert abs(r.polarity_prob - sum(r.probs[e] for e in POSITIVE_EMOTIONS)) < 1e-6
    assert abs(sum(r.probs.values()) - 1) < 1e-5


def _conv(i: int, emotion: str) -> Conversation:
    return Conversation(f"c{i}", emotion, [
        Utterance("speaker", f"story {i} about {emotion} things"), Utterance("listener", "oh really"),
        Utterance("speaker", f"yes it made me {emotion} today"),
    ])


def test_train_save_load_learns(tmp_path, fake_encoder):
    labels = ["sad", "joyful", "afraid", "proud"]
    train = [_conv(i, labels[i % 4]) for i in range(80)]
    dev = [_conv(100 + i, labels[i % 4]) for i in range(20)]
    sits = [LabelledText(f"i felt {labels[i % 4]} at work", labels[i % 4]) for i in range(20)]
    metrics = train_emotion(train, sits, dev, fake_encoder, tmp_path, epochs=15, hidden=32, lr=5e-3, batch_size=16, progress=False)
    assert metrics["accuracy"] >= 90.0  # 4 separable classes
    assert (tmp_path / "emotion_head.safetensors").is_file() and (tmp_path / "emotion_head.json").is_file()
    clf = EmotionClassifier.load(tmp_path)
    X, y = eval_set(dev, fake_encoder)
    probs = clf.predict_proba(X)
    assert probs.shape == (20, len(EMOTIONS))
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() >= 0.9
