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


# ----------------------------------------------------------------------------------- persona selection
def pfeat(context, reference, persona, conv="c"):
    return {"conv_id": conv, "turn_index": len(context), "context": context, "reference": reference,
            "emotion": "sad", "persona": persona}


def test_a_fact_stated_in_the_last_turn_is_moved_out_of_it_into_the_persona():
    told = pfeat([["speaker", "I have a beagle called Biscuit. He is at the vet tonight for a lump."]],
                 "I hope Biscuit is okay!", ["I have a beagle called Biscuit"])
    moved = FE.moved_fact(told)
    assert moved["context"] == [["speaker", "He is at the vet tonight for a lump."]]
    assert moved["persona"] == ["I have a beagle called Biscuit"] and moved["moved_fact"] == "I have a beagle called Biscuit"
    assert told["context"][0][1].startswith("I have a beagle")  # the original example is left as it was
    assert FE.uses_persona(moved) and not FE.uses_persona(told)  # the reply names what the prompt no longer shows
    # nothing to move: the fact is the whole turn, the turn is the listener's, or no persona
    assert FE.moved_fact(pfeat([["speaker", "I have a beagle called Biscuit."]], "aw", ["I have a beagle called Biscuit"])) is None
    assert FE.moved_fact(pfeat([["listener", "I have a dog. Tell me more."]], "ok", ["I have a dog"])) is None
    assert FE.moved_fact(pfeat([["speaker", "It rained. I stayed in all day."]], "ok", [])) is None
    # a fact from an earlier turn, outside the prompt's last two turns, counts as brought back; common words do not
    earlier = pfeat([["speaker", "I work as a nurse."], ["listener", "oh"], ["speaker", "long day today"]],
                    "Nursing is hard, and a long shift on the ward even more so. Was it the nurse station?", ["I work as a nurse"])
    assert FE.uses_persona(earlier)
    assert not FE.uses_persona({**earlier, "reference": "I would love to get some rest as well"})


def test_persona_selection_keeps_every_persona_example_adds_moved_copies_repeats_users_and_draws_the_rest():
    with_fact = pfeat([["speaker", "I have a beagle called Biscuit. He is at the vet tonight."]], "I hope Biscuit is fine",
                      ["I have a beagle called Biscuit"], conv="a")
    plain_fact = pfeat([["speaker", "I am a teacher"]], "how was school?", ["I am a teacher"], conv="b")
    others = [pfeat([["speaker", f"nothing lasting {i}"]], "ok", [], conv=f"o{i}") for i in range(20)]
    feats = [with_fact, plain_fact] + others
    chosen = FE.persona_selection(feats, 0.5, seed=1)
    persona_rows = [f for f in chosen if f.get("persona")]
    # a, b and a's moved copy (its reply names Biscuit, which the moved prompt lacks: counted once at repeat 1)
    assert len(persona_rows) == 3 and sum("moved_fact" in f for f in persona_rows) == 1
    assert len(chosen) == 6 and len({f["conv_id"] for f in chosen if not f.get("persona")}) == 3
    assert FE.persona_selection(feats, 0.5, seed=1) == chosen  # the seed decides the draw
    repeated = FE.persona_selection(feats, 0.5, seed=1, use_repeat=3)
    assert sum("moved_fact" in f for f in repeated) == 3 and len(repeated) == 10  # 5 persona rows + 5 drawn
    bare = FE.persona_selection(feats, 1.0, seed=1, move_facts=False)
    assert [f["conv_id"] for f in bare] == ["a", "b"]
    assert len(FE.persona_selection(feats, 0.05, seed=1)) == 3 + 20  # no more others than there are
    with pytest.raises(ValueError, match="persona_share must lie"):
        FE.persona_selection(feats, 0.0, seed=1)
    with pytest.raises(ValueError, match="persona_use_repeat"):
        FE.persona_selection(feats, 0.5, seed=1, use_repeat=0)
    with pytest.raises(ValueError, match="mined persona sentences"):
        FE.persona_selection([{k: v for k, v in f.items() if k != "persona"} for f in feats], 0.5, seed=1)
    with pytest.raises(ValueError, match="no training example has"):
        FE.persona_selection(others, 0.5, seed=1)


def test_a_first_sentence_moves_into_the_persona_and_move_first_draws_that_many_copies():
    told = pfeat([["listener", "hi"], ["speaker", "My dog died yesterday morning. I can't stop crying about it."]],
                 "I'm so sorry about your dog.", ["I have a dog"])
    moved = FE.moved_first_sentence(told)
    assert moved["context"] == [["listener", "hi"], ["speaker", "I can't stop crying about it."]]
    assert moved["persona"] == ["I have a dog", "My dog died yesterday morning"] and FE.uses_persona(moved)
    for text in ("One sentence only, nothing to move.", "Too short. But the rest is long enough.",
                 "My dog died yesterday morning. So sad."):
        assert FE.moved_first_sentence(pfeat([["speaker", text]], "ok", [])) is None, text
    plain = [pfeat([["speaker", f"I went to the park {i}. It was sunny and warm today."]], "nice park!", [], conv=f"m{i}")
             for i in range(6)]
    feats = [told] + plain
    chosen = FE.persona_selection(feats, 1.0, seed=2, move_facts=False, move_first=3)
    firsts = [f for f in chosen if "moved_fact" in f]
    assert len(firsts) == 3 and all(f["context"][-1][1] in ("It was sunny and warm today.", "I can't stop crying about it.")
                                    for f in firsts)
    assert chosen == FE.persona_selection(feats, 1.0, seed=2, move_facts=False, move_first=3)
    assert len([f for f in FE.persona_selection(feats, 1.0, seed=2, move_first=50) if "moved_fact" in f]) == 7 + 1
    with pytest.raises(ValueError, match="persona_move_first"):
        FE.persona_selection(feats, 1.0, seed=2, move_first=-1)
