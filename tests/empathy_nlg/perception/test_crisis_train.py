"""Crisis training data and threshold selection (pure functions; no encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from empathy_nlg.perception import crisis_train as CT
from empathy_nlg.perception.crisis import CrisisDetector


def test_threshold_for_recall_keeps_the_target_share_of_positives():
    probs = np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    labels = np.array([1, 1, 1, 1, 0])
    assert CT.threshold_for_recall(probs, labels, 0.75) == 0.7
    assert CT.threshold_for_recall(probs, labels, 1.0) == 0.3
    assert CT.threshold_for_recall(probs, np.zeros(5), 0.9) == 0.5  # no positives: a neutral default


def test_threshold_for_fpr_reaches_the_fine_grid_near_one():
    negatives = np.array([0.995] + [0.1] * 99)
    assert CT.threshold_for_fpr(negatives, 0.0) == 0.998
    assert CT.threshold_for_fpr(negatives, 0.01) == 0.12  # one false alarm in 100 is allowed
    assert CT.threshold_for_fpr(negatives, 0.01, floor=0.5) == 0.5


def test_the_older_heldout_sets_are_training_data_and_heldout_e_to_k_are_not():
    assert set(CT.RETIRED_HELDOUT) <= set(CT.OWN_TRAIN_FILES)
    assert {CT.OWN_TRAIN_C, CT.OWN_TRAIN_D, CT.OWN_TRAIN_E} <= set(CT.OWN_TRAIN_FILES)
    held = {CT.OWN_HELDOUT_E, CT.OWN_HELDOUT_F, CT.OWN_HELDOUT_G, CT.OWN_HELDOUT_H, CT.OWN_HELDOUT_J, CT.OWN_HELDOUT_K,
            CT.OWN_HELDOUT_S, CT.OWN_HELDOUT_T, CT.OWN_HELDOUT_U, CT.OWN_HELDOUT_V, CT.OWN_HELDOUT_W,
            CT.OWN_HELDOUT_X, CT.OWN_HELDOUT_Y, CT.OWN_HELDOUT_Z, CT.OWN_HELDOUT_AA,
            CT.OWN_HELDOUT_AB}
    assert held == set(CT.OWN_HELDOUT_SETS) and not held & set(CT.OWN_TRAIN_FILES)
    assert not set(CT.CHAT_CLEAN) & set(CT.CHAT_CALIBRATION) and all(p.is_file() for p in CT.CHAT_CLEAN)


@pytest.mark.parametrize("heldout", ["OWN_HELDOUT_E", "OWN_HELDOUT_F", "OWN_HELDOUT_G", "OWN_HELDOUT_H", "OWN_HELDOUT_J",
                                     "OWN_HELDOUT_K", "OWN_HELDOUT_S", "OWN_HELDOUT_T", "OWN_HELDOUT_U",
                                     "OWN_HELDOUT_V", "OWN_HELDOUT_W", "OWN_HELDOUT_X", "OWN_HELDOUT_Y",
                                     "OWN_HELDOUT_Z", "OWN_HELDOUT_AA", "OWN_HELDOUT_AB"])
def test_own_phrasings_files_are_complete_and_disjoint(heldout):
    # train_f … train_l: written, not in the default training files (--crisis-own-extra trains with them)
    train = [e for f in (*CT.OWN_TRAIN_FILES, CT.OWN_TRAIN_F, CT.OWN_TRAIN_G, CT.OWN_TRAIN_H, CT.OWN_TRAIN_I,
                         CT.OWN_TRAIN_J, CT.OWN_TRAIN_K, CT.OWN_TRAIN_L)
             for e in CT.read_own(f)]
    held = CT.read_own(getattr(CT, heldout))
    cats = {e.category for e in held if e.label == 1}
    needed = {"ideation", "plan_means", "timing", "farewell", "self_harm", "past_attempt"}
    if heldout in ("OWN_HELDOUT_V", "OWN_HELDOUT_W", "OWN_HELDOUT_X", "OWN_HELDOUT_Y", "OWN_HELDOUT_Z",
                   "OWN_HELDOUT_AA", "OWN_HELDOUT_AB"):  # conversations only
        cats = {c.removeprefix("context:") for c in cats}
    if heldout in ("OWN_HELDOUT_V", "OWN_HELDOUT_W", "OWN_HELDOUT_X"):  # their briefs asked for no past attempts
        needed = needed - {"past_attempt"}
    assert needed <= cats
    assert any(e.context for e in held) and any(e.context for e in train)
    norm = lambda e: " ".join(e.text.lower().split())  # noqa: E731
    assert not {norm(e) for e in train} & {norm(e) for e in held}
    assert not {norm(e) for e in CT.read_old_eval()} & {norm(e) for e in held}
    # nor a near-copy: no held-out message and training message share 80 % of the longer one's words
    # (a two-word held-out "last glass" is not copied by a thirteen-word training sentence that holds both)
    words = lambda e: set(norm(e).split())  # noqa: E731
    for h in held:
        for t in train:
            assert len(words(h) & words(t)) < 0.8 * max(len(words(h)), len(words(t)), 1), (h.text, t.text)


def test_split_data_reads_an_extra_own_file_into_train_and_dev(tmp_path):
    extra = tmp_path / "round.yml"
    texts = [f"zq{i} the plan is set for the night of the {i}th" for i in range(40)]
    extra.write_text("positive:\n  timing:\n" + "".join(f"    - {t}\n" for t in texts) + "negative: {}\n")
    base_train, base_dev = CT.split_data(tmp_path, seed=13)
    train, dev = CT.split_data(tmp_path, seed=13, own_extra=[extra])
    added = [e for e in train + dev if e.text.startswith("zq")]
    # every item once (alone; its 'continued' copy comes only from the train part), as an own positive
    assert sorted({e.text for e in added}) == sorted(texts)
    assert all(e.source == "own" and e.label == 1 for e in added)
    in_dev = {e.text for e in dev if e.text.startswith("zq")}
    assert 0 < len(in_dev) < len(texts)  # the seeded share goes to dev, the rest trains
    assert not {e.text for e in base_train + base_dev if e.text.startswith("zq")}
    assert len(dev) == len(base_dev) + len(in_dev)


def test_read_own_rejects_a_malformed_file(tmp_path):
    bad = tmp_path / "x.yml"
    bad.write_text("positive: {}\n")
    with pytest.raises(ValueError, match="'positive' and 'negative'"):
        CT.read_own(bad)
    bad.write_text("positive: {}\nnegative: {}\ncontexts: [{context: [a]}]\n")
    with pytest.raises(ValueError, match="contexts\\[0\\]"):
        CT.read_own(bad)


def test_chat_turns_and_safe_followups(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"polarity": "positive", "turns": ["a", "b", "c"]}) + "\n")
    turns = CT.chat_turns(script)
    assert [(e.text, e.context, e.label) for e in turns] == [("a", (), 0), ("b", ("a",), 0), ("c", ("a", "b"), 0)]
    pos = [CT.Example("I bought a rope", 1, "plan_means", "own")]
    follow = CT.safe_followups(pos, seed=1, per_message=1)
    assert all(e.label == 0 for e in follow)
    assert sum(1 for e in follow if e.context == ("I bought a rope",)) == len(CT.SAFE_FOLLOWUPS)


def test_continued_crisis_keeps_a_crisis_after_a_crisis_positive():
    pos = [CT.Example(t, 1, "plan_means", "own") for t in ("I bought a rope", "I chose the date", "tonight's the night")]
    pos.append(CT.Example("she's asleep now", 1, "context:timing", "own", ("pills counted",)))
    out = CT.continued_crisis(pos, seed=3)
    # only the statements that stand alone come again, each after a different crisis statement, as positives
    assert out and all(e.label == 1 and e.source == "own" and e.category == "context:continued_crisis" for e in out)
    assert all(len(e.context) == 1 and e.context[0] != e.text and e.context[0] in {p.text for p in pos[:3]} for e in out)
    assert "she's asleep now" not in {e.text for e in out}
    assert out == CT.continued_crisis(pos, seed=3)


def test_cssrs_reader_labels_and_errors(tmp_path):
    f = tmp_path / "posts.jsonl"
    rows = [{"user": "u1", "text": "t1", "label": "ideation"}, {"user": "u2", "text": "t2", "label": "supportive"},
            {"user": "u3", "text": "t3", "label": "indicator"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = CT.read_cssrs(f)
    assert [(u, e.label) for u, e in got] == [("u1", 1), ("u2", 0)]  # indicator is left out
    f.write_text('{"user": "u1"}\n')
    with pytest.raises(ValueError, match=":1:"):
        CT.read_cssrs(f)


def test_evaluate_detector_reports_per_category_and_misses():
    examples = [CT.Example("I want to kill myself", 1, "ideation", "own"), CT.Example("I gave my guitar away", 1, "farewell", "own"),
                CT.Example("this traffic is killing me", 0, "figurative", "own")]
    res = CT.evaluate_detector(CrisisDetector(), examples)  # patterns only
    assert res["per_category"]["ideation"]["recall"] == 100.0 and res["per_category"]["farewell"]["recall"] == 0.0
    assert res["per_category"]["figurative"]["fpr"] == 0.0
    assert [m["text"] for m in res["misses"]] == ["I gave my guitar away"] and res["false_alarms"] == []


def test_evaluate_detector_says_whether_an_earlier_turn_of_a_missed_conversation_reached_the_safety_path():
    ctx = ("I want to kill myself", "I have thought about it for weeks")
    examples = [CT.Example("ok it's time", 1, "context:timing", "own", ctx),             # turn 1 flags (pattern)
                CT.Example("ok it's time", 1, "context:timing", "own", ("my exam is friday", "I'm ready")),  # nothing does
                CT.Example("ok", 0, "context:followup_safe", "own", ctx)]
    res = CT.evaluate_detector(CrisisDetector(), examples)  # patterns only
    reached = {tuple(m["context"]): m["earlier_turn_reached"] for m in res["misses"]}
    assert reached == {ctx: 1, ("my exam is friday", "I'm ready"): None}


def test_eval_opener_puts_an_ordinary_first_turn_before_every_message():
    examples = [CT.Example("got the bbq and the tape", 1, "plan_means", "own"),
                CT.Example("it's loaded", 1, "context:plan_means", "own", ("holding my dad's pistol",))]
    got = CT.with_opener(examples, "hey, long week")
    assert [e.context for e in got] == [("hey, long week",), ("hey, long week", "holding my dad's pistol")]
    assert [(e.text, e.label, e.category) for e in got] == [(e.text, e.label, e.category) for e in examples]
    assert examples[0].context == ()  # the originals untouched


def test_ordinary_openers_copy_every_positive_and_as_many_negatives():
    exs = [CT.Example(f"plan {i}", 1, "plan_means", "own") for i in range(3)] + \
          [CT.Example(f"it's loaded {i}", 1, "context:plan_means", "own", ("holding the pistol",)) for i in range(2)] + \
          [CT.Example(f"nice day {i}", 0, "everyday", "own") for i in range(6)] + \
          [CT.Example("ok", 0, "followup_safe", "own", ("I want to die",)), CT.Example("so tired", 0, "everyday", "cssrs")]
    openers = CT.ordinary_openers(exs)
    assert openers == [f"nice day {i}" for i in range(6)]  # ordinary, said without context, own or ED only
    got = CT.with_ordinary_openers(exs, openers, seed=1)
    assert sum(e.label for e in got) == 5 and len(got) == 10
    assert all(e.context[0] in openers for e in got)
    assert {e.context[1:] for e in got if e.text.startswith("it's loaded")} == {("holding the pistol",)}
    assert got == CT.with_ordinary_openers(exs, openers, seed=1) and CT.with_ordinary_openers(exs, [], 1) == []


def test_train_crisis_with_openers_adds_opener_copies_of_the_chat_register_examples(tmp_path):
    from empathy_nlg.perception.common import load_head
    from empathy_nlg.perception.crisis import HEAD

    (tmp_path / "crisis").mkdir()
    posts = [{"user": f"u{u}", "label": "ideation" if u % 2 == 0 else "supportive",
              "text": f"tonight is the night {u}" if u % 2 == 0 else f"hang in there {u}"} for u in range(40)]
    (tmp_path / "crisis" / "cssrs_reddit_posts.jsonl").write_text("\n".join(json.dumps(r) for r in posts) + "\n")
    ed = tmp_path / "empathetic_dialogues"
    ed.mkdir()
    for split in ("train", "valid"):
        rows = [{"conv_id": f"{split}:{i}", "emotion": "joyful", "situation": "s",
                 "turns": [{"role": "speaker", "text": f"we went to the park number {i} today"},
                           {"role": "listener", "text": "nice!"}]} for i in range(30)]
        (ed / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plain = CT.train_crisis(tmp_path, _hash_encoder(), tmp_path / "a", progress=False)
    opened = CT.train_crisis(tmp_path, _hash_encoder(), tmp_path / "b", progress=False, openers=True)
    train, _ = CT.split_data(tmp_path, 13)
    chat_register = [ex for ex in train if ex.source != "cssrs"]
    # every chat-register positive once more after an ordinary opener, and as many negatives as there
    # are up to that count; no C-SSRS post
    pos = sum(ex.label for ex in chat_register)
    assert plain["train_with_opener"] == 0 and opened["train_with_opener"] == pos + min(pos, len(chat_register) - pos)
    assert opened["train_examples"] == plain["train_examples"] + opened["train_with_opener"]
    assert load_head(tmp_path / "b", HEAD)[1]["version"] == CT.VERSION + "-openers"
    assert load_head(tmp_path / "a", HEAD)[1]["version"] == CT.VERSION
    CT.train_crisis(tmp_path, _hash_encoder(), tmp_path / "c", progress=False, own_extra=[CT.OWN_TRAIN_H])
    assert load_head(tmp_path / "c", HEAD)[1]["version"] == CT.VERSION + "+train_h"  # an extra round is named
    assert plain["dev_own_after_opener"]["n_pos"] == opened["dev_own_after_opener"]["n_pos"] > 0


def test_eval_reads_what_training_embedded_from_the_disk_cache(tmp_path):
    """eval-crisis's warm start: embeddings that training wrote (in a batch) are read back for the
    same texts, equal to a fresh one-at-a-time encoding to float rounding; texts not in the cache
    are left for the encoder; a cache of other weights (another name) is not read."""
    from empathy_nlg.perception.common import EmbeddingCache
    from empathy_nlg.perception.crisis_mpnet import CachedEncoder
    from empathy_nlg.perception.encoder import default_encoder_path

    trained = ["I counted the pills again tonight", "we went to the beach and the dog loved it", "ok"]
    EmbeddingCache(CachedEncoder(default_encoder_path()), tmp_path).encode(trained, progress=False)
    enc = CachedEncoder(default_encoder_path(), cache_size=1)
    assert CT.warm_from_disk(enc, trained + ["never embedded"], tmp_path) == 3
    assert set(enc._cache) == set(trained) and enc.calls == 0
    fresh = CachedEncoder(default_encoder_path())
    for t in trained:
        np.testing.assert_allclose(enc.encode([t])[0], fresh.encode([t])[0], atol=1e-5)
    assert enc.calls == 0  # all three came from the disk cache
    enc.encode(["never embedded"])
    assert enc.calls == 1
    other = CachedEncoder(default_encoder_path())
    other.path = tmp_path / "another-encoder"  # another name: another cache file, nothing to read
    assert CT.warm_from_disk(other, trained, tmp_path) == 0


def test_fill_cache_encodes_only_what_the_disk_cache_lacks(tmp_path):
    """eval-crisis --fill-cache: the evaluation texts go into the disk cache once; a second evaluation
    (a retrained head, same encoder) reads every one of them back and encodes nothing."""
    from empathy_nlg.perception.crisis_mpnet import CachedEncoder
    from empathy_nlg.perception.encoder import default_encoder_path

    enc = CachedEncoder(default_encoder_path())
    assert CT.fill_cache(enc, ["the pills are in my bag", "ok", "ok"], tmp_path, progress=False) == 2
    assert CT.fill_cache(enc, ["ok", "a new one", ""], tmp_path, progress=False) == 2  # "" is stored as "."
    again = CachedEncoder(default_encoder_path())
    assert CT.warm_from_disk(again, ["the pills are in my bag", "ok", "a new one", "."], tmp_path) == 4
    again.encode(["the pills are in my bag", "a new one"])
    assert again.calls == 0


def test_imminent_examples_keep_plan_timing_farewell_against_ordinary_messages():
    exs = [CT.Example("rope", 1, "plan_means", "own"), CT.Example("ok now", 1, "context:timing", "own", ("tonight",)),
           CT.Example("I want to die", 1, "ideation", "own"), CT.Example("cut again", 1, "self_harm", "own"),
           CT.Example("again", 1, "context:continued_crisis", "own", ("rope",)), CT.Example("post", 1, "cssrs:behavior", "cssrs"),
           CT.Example("support", 0, "cssrs:supportive", "cssrs"), CT.Example("my feet are killing me", 0, "figurative", "own"),
           CT.Example("we got a puppy", 0, "ed:joyful", "ed")]
    kept = CT.imminent_examples(exs)
    assert [e.text for e in kept] == ["rope", "ok now", "my feet are killing me", "we got a puppy"]


def _hash_encoder(dim=16):
    import hashlib

    def encode(texts):
        rows = []
        for t in texts:
            h = hashlib.sha1(t.encode("utf-8")).digest()
            v = np.frombuffer(h[:dim], dtype=np.uint8).astype(np.float32) / 255.0
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, np.float32).reshape(len(texts), dim)

    class _Enc:
        pass

    enc = _Enc()
    enc.encode = encode
    return enc


def test_train_imminent_writes_a_head_the_detector_uses_as_a_cue(tmp_path):
    from empathy_nlg.perception.common import load_head
    from empathy_nlg.perception.crisis import IMMINENT_HEAD

    ed = tmp_path / "empathetic_dialogues"
    ed.mkdir()
    for split, n in (("train", 60), ("valid", 40)):
        rows = [{"conv_id": f"{split}:{i}", "emotion": "joyful", "situation": "s",
                 "turns": [{"role": "speaker", "text": f"we went to the park number {i} today"},
                           {"role": "listener", "text": "nice!"}, {"role": "speaker", "text": f"it was sunny {i}"}]}
                for i in range(n)]
        (ed / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "art"
    out.mkdir()
    m = CT.train_imminent(tmp_path, _hash_encoder(), out, "fake-encoder", seed=13, progress=False, ed_train=30)
    model, cfg = load_head(out, IMMINENT_HEAD)
    assert cfg["version"] == CT.IMMINENT_VERSION and cfg["encoder_name"] == "fake-encoder"
    assert cfg["ordinary_openers"] is False and m["train_with_opener"] == 0
    import torch
    from safetensors.torch import load_file

    # stored in fp16 (half the bytes), read back into fp32
    assert {t.dtype for t in load_file(str(out / f"{IMMINENT_HEAD}.safetensors")).values()} == {torch.float16}
    assert all(p.dtype == torch.float32 for p in model.parameters()) and cfg["stored_dtype"] == "float16"
    assert cfg["threshold"] == m["threshold"] and 0.0 < m["threshold"] < 1.0 and cfg["in_dim"] == 3 * 16
    own_imminent = [e for f in (*CT.OWN_TRAIN_FILES, *CT.IMMINENT_OWN_EXTRA) for e in CT.read_own(f)
                    if e.category in CT.IMMINENT]
    # every own plan / timing / farewell statement is a positive of train or dev; nothing else is
    assert m["train_positives"] + m["dev_own"]["n_pos"] == len(own_imminent)
    # the same statements after an ordinary opener are measured on dev (v16 read most of them as ordinary)
    assert m["dev_own_after_opener"]["n_pos"] == m["dev_own"]["n_pos"]
    # the ED messages it learned from: the first ed_train of the split's seeded ones (30), dev all of valid's (40)
    assert m["dev_ed"]["n_neg"] == 40 and m["train_examples"] - m["train_positives"] > 30
    # the chat calibration turns, each in its context, keep at most max_fpr (1 %) at the threshold
    assert m["dev_chat_turns"]["fpr"] <= 100 * CT.IMMINENT_MAX_FPR
    # --imminent-openers: each positive once more after an ordinary opener, and as many negatives
    o = CT.train_imminent(tmp_path, _hash_encoder(), out, "fake-encoder", seed=13, progress=False, ed_train=30,
                          openers=True)
    assert load_head(out, IMMINENT_HEAD)[1]["version"] == CT.IMMINENT_OPENERS_VERSION
    assert o["train_positives"] == 2 * m["train_positives"] and o["train_with_opener"] == o["train_positives"]
    assert o["train_examples"] == m["train_examples"] + o["train_with_opener"]
    with pytest.raises(FileNotFoundError, match="ED messages"):
        CT.train_imminent(tmp_path / "nowhere", _hash_encoder(), out, "fake-encoder", progress=False)


def test_served_judge_counts_a_concern_as_the_check_in_only_where_the_safety_policy_asks():
    from types import SimpleNamespace

    class _Perceiver:
        def perceive(self, dialogue):
            text = dialogue[-1].text
            assert all(u.role == "speaker" for u in dialogue) and len(dialogue) == 1 + ("after" in text)
            return SimpleNamespace(crisis="flag" in text, crisis_score=0.6 if "flag" in text else 0.3,
                                   crisis_concern="flag" not in text and "calm" in text or "sad" in text,
                                   polarity="negative" if "sad" in text else "positive",
                                   crisis_reasons=["cue:imminent-head"] if "plan" in text else [])

    judge = CT.served_judge(_Perceiver())
    assert judge(["calm, glad it is decided"]).concern is False   # concerned, sounds glad, no cue: not asked
    assert judge(["calm, the plan is set"]).concern is True       # a cue: asked however it sounds
    assert judge(["sad and calm"]).concern is True                # a negative feeling: asked
    r = judge(["flag this"])
    assert r.crisis and not r.concern and r.score == 0.6
    examples = [CT.Example("calm, the plan is set", 1, "plan_means", "own"),
                CT.Example("calm, glad it is decided", 1, "timing", "own"),
                CT.Example("all good after", 0, "short_flat", "own", ("before",))]
    res = CT.evaluate_detector(CrisisDetector(), examples, judge)
    assert res["per_category"]["plan_means"]["with_checkin"]["recall"] == 100.0
    assert res["per_category"]["timing"]["with_checkin"]["recall"] == 0.0
    assert [m["text"] for m in res["misses"] if not m["checkin"]] == ["calm, glad it is decided"]
