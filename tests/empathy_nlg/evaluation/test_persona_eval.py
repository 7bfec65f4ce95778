"""eval-persona end to end (the real extractor and spaCy pipeline) on tiny files of both kinds, and
its error paths."""

from __future__ import annotations

import json

import pytest

from empathy_nlg.cli import main
from empathy_nlg.evaluation.persona_eval import load_items, score


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_an_extractor_set_and_a_script_are_scored_with_misses_and_false_facts_listed(tmp_path, capsys):
    items = _write(tmp_path / "items.jsonl", [
        {"text": "I work as a nurse on a children's ward.", "fact": True, "keys": ["nurse"]},
        {"text": "I keep bees in my back garden.", "fact": True, "keys": ["bees"]},
        {"text": "Do you have any kids?", "fact": True, "keys": ["kids"]},  # nothing to find: a miss
        {"text": "I'm so tired today.", "fact": False},
        {"text": "I have two kids.", "fact": False},  # labelled wrong on purpose: counted as a false fact
    ])
    script = _write(tmp_path / "script.jsonl", [
        {"id": "s-dog", "turns": ["My dog is called Max.", "he was sick today"],
         "persona": {"recall": ["max", "dog"], "relevant": [2]}},
    ])
    out = tmp_path / "out"
    assert main(["eval-persona", "--data", str(items), "--data", str(script), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "facts found 2/3 (66.7 %), false facts 1/2 (50.0 %)" in printed
    assert "facts found 1/1 (100.0 %)" in printed
    assert "missed   items.jsonl:3: 'Do you have any kids?' -> []" in printed
    assert "false    items.jsonl:5: 'I have two kids.' -> ['I have two kids']" in printed
    assert "summary: 2 file(s), 6 messages; facts found 3/4 (75.0 %)" in printed
    report = json.loads((out / "persona_eval.json").read_text())
    assert report["total"] == {"with_fact": 4, "found": 3, "found_pct": 75.0, "any_fact": 3, "any_fact_pct": 75.0,
                               "without_fact": 2, "false_facts": 1, "false_facts_pct": 50.0}
    assert [i["extracted"] for i in report["items"]][-1] == ["My dog is called Max"]


def test_a_fact_counts_only_when_a_key_is_a_whole_word_of_it():
    items = [{"fact": True, "keys": ["cat"]}, {"fact": True, "keys": ["Nurse"]}, {"fact": False, "keys": []}]
    totals = score(items, [["I work in catering"], ["I am a nurse"], []])
    assert (totals["found"], totals["any_fact"], totals["false_facts"]) == (1, 2, 0)


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    (json.dumps({"text": "I am a nurse", "fact": True}), "needs a non-empty 'keys'"),
    (json.dumps({"turns": ["hi"], "persona": {}}), "persona.recall"),
    (json.dumps({"text": "hi"}), "neither an extractor item"),
])
def test_bad_lines_are_clear_errors_with_file_and_line(tmp_path, capsys, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok", "fact": False}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_items(path)
    assert main(["eval-persona", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "Traceback" not in err


def test_a_missing_or_empty_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval-persona", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["eval-persona", "--data", str(tmp_path / "empty.jsonl")]) == 2
    assert "no items" in capsys.readouterr().err
