"""Cause extraction: RECCON pair construction, features, spans, and a tiny trained pair head."""

from __future__ import annotations

import json

import numpy as np

from empathy_nlg.datasets import Conversation, Utterance, read_reccon_json
from empathy_nlg.perception.cause import (
    N_SCALARS, ed_cause_pairs, merge_token_spans, pair_features, reccon_pairs, span_char_labels,
)
from empathy_nlg.perception.common import binary_f1s, fit_head, load_head, predict_head, save_head


def _reccon_file(tmp_path):
    data = {"d1": [[
        {"turn": 1, "speaker": "A", "utterance": "I won the lottery today !", "emotion": "happiness",
         "expanded emotion cause evidence": [1], "expanded emotion cause span": ["won the lottery"]},
        {"turn": 2, "speaker": "B", "utterance": "What ? Really ?", "emotion": "surprise",
         "expanded emotion cause evidence": [1, "b"], "expanded emotion cause span": ["won the lottery"]},
        {"turn": 3, "speaker": "A", "utterance": "Yes , really .", "emotion": "neutral"},
    ]]}
    path = tmp_path / "tiny_reccon.json"
    path.write_text(json.dumps(data))
    return path


def test_reccon_pairs_follow_cee_construction(tmp_path):
    dialogues = read_reccon_json(_reccon_file(tmp_path))
    pairs = reccon_pairs(dialogues)
    # targets: turn 1 (1 candidate) and turn 2 (2 candidates); the neutral turn 3 is skipped
    assert list(zip(pairs.target, pairs.candidate, pairs.label)) == [(0, 0, 1), (1, 0, 1), (1, 1, 0)]
    assert pairs.emotion == ["happiness", "surprise", "surprise"]


def test_ed_pairs_use_last_speaker_turn():
    conv = Conversation("c", "sad", [Utterance("speaker", "a"), Utterance("listener", "b"), Utterance("speaker", "c"),
                                      Utterance("listener", "d")], cause_indices=[0])
    pairs = ed_cause_pairs([conv])
    assert set(pairs.target) == {2} and pairs.candidate == [0, 1, 2] and pairs.label == [1, 0, 0]
    assert ed_cause_pairs([conv], speaker_only=True).candidate == [0, 2]


def test_pair_features_shape_and_scalars():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 8)).astype(np.float32)
    f = pair_features(emb, ["A", "B", "A", "B"], 3, [0, 3], rng.standard_normal(8).astype(np.float32))
    assert f.shape == (2, 7 * 8 + N_SCALARS)
    scal = f[:, 7 * 8:]
    assert scal[0, 3] == 1 and scal[1, 0] == 1  # distance buckets 3 and 0
    assert scal[1, 6] == 1  # the target itself has the same speaker


def test_span_labels_and_merge():
    text = "I won the lottery today !"
    mask = span_char_labels(text, ["Won the lottery", "not there"])
    assert mask[2:17].all() and not mask[:2].any() and not mask[17:].any()
    offsets = [(0, 1), (2, 5), (6, 9), (10, 13), (13, 17), (18, 23)]  # "lottery" split in two pieces
    spans = merge_token_spans(offsets, [False, True, True, True, False, False], text)
    assert spans == [[2, 17]]
    assert text[spans[0][0]:spans[0][1]] == "won the lottery"


def test_pair_head_learns_and_roundtrips(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 10)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)
    model, info = fit_head(X, y, loss="bce", out_dim=1, hidden=16, epochs=25, lr=1e-2, X_dev=X, Y_dev=y,
                           score_fn=lambda p, t: binary_f1s(t, p[:, 0] >= 0.5)["macro_f1"], progress=False)
    assert info["best_score"] > 90
    save_head(model, {"in_dim": 10, "out_dim": 1, "hidden": 16, "dropout": 0.2}, tmp_path, "pair")
    loaded, cfg = load_head(tmp_path, "pair")
    np.testing.assert_allclose(predict_head(loaded, X, "bce"), predict_head(model, X, "bce"), atol=1e-6)
