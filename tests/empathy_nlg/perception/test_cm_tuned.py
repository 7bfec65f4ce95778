"""The EPITOME cross-encoder fine-tuned end to end — on the real packaged MiniLM as the base (the
served base is all-mpnet-base-v2; the code is the same)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import EpitomeExample  # noqa: E402
from empathy_nlg.perception import cm_tuned as T  # noqa: E402
from empathy_nlg.perception.cm import split_by_seeker  # noqa: E402
from empathy_nlg.perception.encoder import default_encoder_path  # noqa: E402
from empathy_nlg.taxonomy import CM_CODES  # noqa: E402

POSTS = ["I failed my exam and I feel worthless", "my dog died last night", "nobody talks to me at work",
         "I can't sleep since the breakup", "my dad is in hospital again", "I lost my job today"]
ER = "I'm so sorry, that must hurt so much."
IP = "It sounds like you feel you let everyone down."
EX = "What happened when you told your family?"
NONE = "Try drinking more water."


def files(n_posts: int = 6):
    """Each post answered four ways; each file rates the same pairs for its mechanism."""
    replies = {"ER": ER, "IP": IP, "EX": EX, "none": NONE}
    out = {c: [] for c in CM_CODES}
    for post in POSTS[:n_posts]:
        for kind, reply in replies.items():
            for code in CM_CODES:
                out[code].append(EpitomeExample(post, reply, 2 if kind == code else 0, []))
    return out


def test_the_three_files_join_into_one_example_per_pair_with_masks():
    f = files()
    f["EX"] = f["EX"][:-1]  # the last pair is not rated for EX
    joined = T.joined_examples(f)
    assert len(joined) == 6 * 4
    er = next(e for e in joined if e.seeker_post == POSTS[0] and e.response_post == ER)
    assert er.labels == (1.0, 0.0, 0.0) and er.mask == (1.0, 1.0, 1.0)
    last = joined[-1]
    assert last.mask == (1.0, 1.0, 0.0) and last.labels[2] == 0.0
    with pytest.raises(ValueError, match="missing"):
        T.joined_examples({"ER": f["ER"]})


def test_the_split_is_the_frozen_heads_split_by_seeker_post():
    f = files()
    train, dev = T.split(T.joined_examples(f), 0.3, seed=13)
    tr, dv = split_by_seeker(f["ER"], 0.3, seed=13)
    assert {e.seeker_post for e in dev} == {f["ER"][i].seeker_post for i in dv}
    assert not {e.seeker_post for e in train} & {e.seeker_post for e in dev}


def test_length_batches_cover_every_example_once_in_similar_lengths():
    joined = T.joined_examples(files())
    batches = T.length_batches(joined, 4, np.random.default_rng(0), pool_batches=3)
    flat = [e for b in batches for e in b]
    assert sorted(map(id, flat)) == sorted(map(id, joined)) and all(len(b) <= 4 for b in batches)


def test_code_metrics_score_each_code_only_where_it_is_rated():
    probs = np.asarray([[0.9, 0.1, 0.9], [0.1, 0.9, 0.1]])
    labels = np.asarray([[1, 0, 0], [0, 1, 1]], dtype=float)
    mask = np.asarray([[1, 1, 1], [1, 1, 0]], dtype=float)
    m = T.code_metrics(probs, labels, mask, {c: 0.5 for c in CM_CODES})
    assert m["er_f1"] == 100.0 and m["ip_f1"] == 100.0 and m["ex_n"] == 1 and m["ex_accuracy"] == 0.0


def test_it_trains_keeps_the_best_epoch_and_serves_what_it_measured(tmp_path):
    f = files()
    result = T.train_cm_tuned(f, tmp_path, default_encoder_path(), epochs=2, batch_size=8, lr=2e-3, head_lr=2e-2,
                              dev_fraction=0.34, progress=False)
    assert [h["epoch"] for h in result["epochs"]] == [1, 2] and result["kept_epoch"] in (1, 2)
    assert result["train_pairs"] + result["dev_pairs"] == 24
    cfg = json.loads((tmp_path / f"{T.HEAD}.json").read_text())
    assert cfg["version"] == T.VERSION and set(cfg["thresholds"]) == set(CM_CODES)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / T.ADAPTER_DIR / "adapter_model.safetensors"))
    assert weights and all(v.dtype == torch.float16 for v in weights.values())
    served = T.TunedResponseCM.load(tmp_path, default_encoder_path())
    _, dev = T.split(T.joined_examples(f), 0.34, seed=13)
    probs = served.proba([e.seeker_post for e in dev], [e.response_post for e in dev])
    assert probs.shape == (len(dev), 3) and ((probs >= 0) & (probs <= 1)).all()
    # what is loaded scores the dev pairs as the kept epoch did (fp16 adapter, bf16 weights where native)
    labels = np.asarray([e.labels for e in dev])
    again = T.code_metrics(probs, labels, np.ones_like(labels), served.thresholds)
    assert abs(again["mean_f1"] - result["dev"]["mean_f1"]) <= 15
    pred = served.predict([dev[0].seeker_post], [dev[0].response_post])
    assert set(pred) == set(CM_CODES) and all(v.dtype == bool for v in pred.values())
    with pytest.raises(ValueError, match="same length"):
        served.predict_proba(["a"], [])


def test_a_time_limit_keeps_the_measured_part_epoch(tmp_path):
    result = T.train_cm_tuned(files(), tmp_path, default_encoder_path(), epochs=3, batch_size=8, max_minutes=0,
                              dev_fraction=0.34, progress=False)
    assert len(result["epochs"]) == 1 and not result["epochs"][0]["complete"]
    assert (tmp_path / f"{T.HEAD}.json").is_file()


def test_load_tuned_is_none_without_the_artefact(tmp_path):
    assert T.load_tuned(tmp_path) is None
