"""Training features: the cache, and extra features built only for the examples a run still trains."""

from __future__ import annotations

import json

import pytest

from empathy_nlg.training import features as FE
from tests.empathy_nlg.generators import knowledge_fixtures as K


def counting_extra(calls):
    def extra(feats, progress):
        calls.append([(f["conv_id"], f["turn_index"]) for f in feats])
        for f in feats:
            f["knowledge"] = [f["conv_id"], f["turn_index"], len(f["reference"])]

    return extra


def build(tmp_path, extra, needed=None, split="train"):
    return FE.build_features(K.write_ed(tmp_path / "ed.jsonl"), None, 3, "speaker", tmp_path / "feats", split,
                             extra=extra, extra_key={"k": 1}, progress=False, cm=False, needed=needed)


def test_extras_are_built_for_the_needed_examples_only_and_a_later_run_adds_what_it_lacks(tmp_path):
    calls = []
    feats = build(tmp_path, counting_extra(calls), needed=lambda fs: [3, 1, 1])
    assert len(calls) == 1 and len(calls[0]) == 2  # examples 1 and 3, once each
    assert [i for i, f in enumerate(feats) if "knowledge" in f] == [1, 3]
    assert feats[3]["knowledge"] == [feats[3]["conv_id"], feats[3]["turn_index"], len(feats[3]["reference"])]
    assert all(set(f) >= {"conv_id", "context", "reference", "emotion", "cause_indices"} for f in feats)
    # a later chunk (another process, the same folder) needs 0..4: only 0, 2 and 4 are computed
    calls.clear()
    again = build(tmp_path, counting_extra(calls), needed=lambda fs: range(5))
    assert len(calls) == 1 and sorted(calls[0]) == sorted((again[i]["conv_id"], again[i]["turn_index"]) for i in (0, 2, 4))
    assert [i for i, f in enumerate(again) if "knowledge" in f] == [0, 1, 2, 3, 4]
    assert [f["conv_id"] for f in again] == [f["conv_id"] for f in feats]  # the same examples, the same order
    # nothing new needed: no call at all
    calls.clear()
    build(tmp_path, counting_extra(calls), needed=lambda fs: [1, 4])
    assert calls == []


def test_a_line_cut_by_a_killed_run_is_computed_again_and_bad_indices_are_refused(tmp_path):
    calls = []
    build(tmp_path, counting_extra(calls), needed=lambda fs: [0, 1])
    extras = next((tmp_path / "feats").glob("extras-train-*.jsonl"))
    lines = extras.read_text().splitlines()
    extras.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # the second line cut mid-way
    calls.clear()
    feats = build(tmp_path, counting_extra(calls), needed=lambda fs: [0, 1])
    assert len(calls) == 1 and len(calls[0]) == 1 and "knowledge" in feats[1]
    with pytest.raises(ValueError, match="needed example indices"):
        build(tmp_path, counting_extra(calls), needed=lambda fs: [len(fs)])


def test_a_complete_cache_of_the_same_fingerprint_is_used_as_it_is(tmp_path):
    calls = []
    full = build(tmp_path, counting_extra(calls))
    assert len(calls) == 1 and all("knowledge" in f for f in full)
    calls.clear()
    again = build(tmp_path, counting_extra(calls), needed=lambda fs: [0])
    assert calls == [] and all("knowledge" in f for f in again)
    assert json.dumps(again, sort_keys=True) == json.dumps(full, sort_keys=True)
