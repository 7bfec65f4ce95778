"""CM response classifiers: split, train/save/load via the harness API, context predictor."""

from __future__ import annotations

import numpy as np

from empathy_nlg.datasets import Conversation, EpitomeExample, Utterance
from empathy_nlg.perception.cm import (
    ContextCMPredictor, listener_examples, load_response_classifiers, split_by_seeker, train_context_predictor,
    train_response_classifiers,
)
from empathy_nlg.taxonomy import CM_CODES


def _examples(code_word: str):
    out = []
    for i in range(120):
        yes = i % 2 == 0
        resp = f"{code_word} reply number {i}" if yes else f"plain answer number {i}"
        out.append(EpitomeExample(seeker_post=f"seeker post {i // 3}", response_post=resp, level=2 if yes else 0, rationales=[]))
    return out


def test_split_by_seeker_groups_and_is_seeded():
    ex = _examples("sorry")
    tr, dv = split_by_seeker(ex, 0.25, seed=13)
    assert sorted(tr + dv) == list(range(len(ex))) and dv
    assert not {ex[i].seeker_post for i in tr} & {ex[i].seeker_post for i in dv}
    assert split_by_seeker(ex, 0.25, seed=13) == (tr, dv)
    assert split_by_seeker(ex, 0.25, seed=14) != (tr, dv)


def test_response_classifiers_learn_and_load(tmp_path, fake_encoder):
    files = {"ER": _examples("sorry"), "IP": _examples("understand"), "EX": _examples("what")}
    metrics = train_response_classifiers(files, fake_encoder, tmp_path, epochs=20, hidden=16, lr=5e-3, dev_fraction=0.3, progress=False)
    for code in CM_CODES:
        assert metrics[f"{code.lower()}_f1"] >= 90
    clf = load_response_classifiers(tmp_path, encoder=fake_encoder)
    seekers, responses = ["seeker post 1", "seeker post 1"], ["sorry reply number 7", "plain answer number 7"]
    pred = clf.predict(seekers, responses)
    proba = clf.predict_proba(seekers, responses)
    assert set(pred) == set(CM_CODES) and pred["ER"].dtype == bool
    assert proba["ER"][0] > proba["ER"][1]  # the ER keyword raises P(ER)
    for code in CM_CODES:
        assert (pred[code] == (proba[code] >= clf.thresholds[code])).all()

    convs = [Conversation(f"c{i}", "sad", [Utterance("speaker", f"bad day {i}"), Utterance("listener", "sorry reply number" if i % 2 else "what happened"),
                                           Utterance("speaker", "it was awful"), Utterance("listener", "plain answer number")]) for i in range(30)]
    ctx, seek, resp = listener_examples(convs)
    assert len(ctx) == 60 and all(c[-1].role == "speaker" for c in ctx) and seek[1] == "it was awful"
    cm_metrics = train_context_predictor(convs, convs, fake_encoder, tmp_path, epochs=3, hidden=8, progress=False, encoder=fake_encoder)
    assert {"context_er_f1", "context_ip_f1", "context_ex_f1"} <= set(cm_metrics)
    predictor = ContextCMPredictor.load(tmp_path)
    assert predictor.predict_proba(np.zeros((2, predictor.config["in_dim"]), np.float32)).shape == (2, 3)
