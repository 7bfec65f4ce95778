"""eval-perception end to end on tiny files for every task/format, and its error paths."""

from __future__ import annotations

import csv
import json

import pytest

from empathy_nlg.cli import main

SPEAKER_TURNS = ["I got a puppy for my birthday and I love him!", "My car broke down on the highway last night."]


def _ed_jsonl(path):
    rows = [
        {"conv_id": "a", "emotion": "joyful", "situation": "x", "turns": [
            {"role": "speaker", "text": SPEAKER_TURNS[0]}, {"role": "listener", "text": "That is wonderful!"}]},
        {"conv_id": "b", "emotion": "Annoyed", "situation": "y", "turns": [
            {"role": "speaker", "text": SPEAKER_TURNS[1]}, {"role": "listener", "text": "Oh no, are you ok?"},
            {"role": "speaker", "text": "Yes, but I had to wait three hours for a tow truck."}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _ed_cause_jsonl(path):
    rows = [
        {"conv_id": "a", "utters": [SPEAKER_TURNS[0].lower().split(), ["that", "is", "wonderful", "!"]], "context": "joyful", "emotion_cause": [0]},
        {"conv_id": "b", "utters": [SPEAKER_TURNS[1].lower().split(), ["oh", "no", "."], ["i", "waited", "hours", "."]],
         "context": "annoyed", "emotion_cause": [0, 2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _situations(path):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["situation", "paraphrase", "emotion"])
        w.writerow([SPEAKER_TURNS[0], "p", "joyful"])
        w.writerow(["I was scared walking home alone in the dark.", "p", "afraid"])


def _reccon(path):
    data = {"d1": [[
        {"turn": 1, "speaker": "A", "utterance": "I passed my exam !", "emotion": "happiness", "expanded emotion cause evidence": [1]},
        {"turn": 2, "speaker": "B", "utterance": "Great news , congratulations !", "emotion": "happy", "expanded emotion cause evidence": [1]},
    ]]}
    path.write_text(json.dumps(data))


def _epitome(path):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales"])
        w.writerow(["s1", "r1", "I lost my job today.", "I'm so sorry, that must feel awful.", "2", "so sorry|"])
        w.writerow(["s2", "r2", "I can't sleep at night.", "Have you tried tea?", "0", ""])


CASES = [
    ("emotion", "ed-jsonl", "ed.jsonl", _ed_jsonl, {"n", "accuracy", "macro_f1", "top3_accuracy", "polarity_accuracy"}),
    ("emotion", "ed-cause-jsonl", "edc.jsonl", _ed_cause_jsonl, {"n", "accuracy", "macro_f1", "top3_accuracy", "polarity_accuracy"}),
    ("emotion", "situations-csv", "sit.csv", _situations, {"n", "accuracy", "macro_f1", "top3_accuracy", "polarity_accuracy"}),
    ("cause", "reccon-json", "rec.json", _reccon, {"n", "pos_f1", "neg_f1", "macro_f1"}),
    ("cause", "ed-cause-jsonl", "edc.jsonl", _ed_cause_jsonl, {"n", "pos_f1", "neg_f1", "macro_f1", "utterance_accuracy"}),
    ("cm", "epitome-csv", "emotional-reactions-test.csv", _epitome, {"n", "er_f1"}),
]


@pytest.mark.parametrize("task,fmt,name,writer,keys", CASES)
def test_eval_perception_end_to_end(tmp_path, task, fmt, name, writer, keys):
    data = tmp_path / name
    writer(data)
    out = tmp_path / "out"
    rc = main(["eval-perception", "--task", task, "--data", str(data), "--format", fmt, "--out", str(out), "--quiet"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert keys <= set(metrics)
    assert all(0 <= metrics[k] <= 100 for k in keys if k != "n")
    assert metrics["n"] == {"emotion": 2, "cause": 3 if fmt == "reccon-json" else 4, "cm": 2}[task]
    report = (out / "report.md").read_text()
    assert "percentages" in report
    if task == "emotion":
        assert (out / "confusion_matrix.png").stat().st_size > 1000
    if task == "cm":
        assert "ip_f1" not in metrics and "ex_f1" not in metrics


def test_invalid_combination_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "sit.csv"
    _situations(data)
    rc = main(["eval-perception", "--task", "cause", "--data", str(data), "--format", "situations-csv", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "does not accept --format situations-csv" in capsys.readouterr().err


def test_malformed_file_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"conv_id": "a", "emotion": "joyful", "turns": [{"role": "speaker", "text": "hi"}]}\n{not json\n')
    rc = main(["eval-perception", "--task", "emotion", "--data", str(data), "--format", "ed-jsonl", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err


def test_missing_mechanism_in_filename(tmp_path, capsys):
    data = tmp_path / "responses.csv"
    _epitome(data)
    rc = main(["eval-perception", "--task", "cm", "--data", str(data), "--format", "epitome-csv", "--out", str(tmp_path / "o")])
    assert rc == 2 and "mechanism" in capsys.readouterr().err


def _chat(path):
    rows = [{"id": "good", "polarity": "positive", "turns": ["I passed my exam!", "my mom cried when I told her"]},
            {"id": "bad", "polarity": "negative", "turns": ["my dog died this morning"]},
            {"id": "both", "polarity": "mixed", "turns": ["got the job but my dad is in hospital"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _artefacts_without_a_tuned_model(tmp_path):
    """A copy of the committed artefacts without the fine-tuned emotion model."""
    import shutil

    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
    from empathy_nlg.perception.emotion_tuned import ADAPTER_DIR, HEAD

    art = tmp_path / "art"
    shutil.copytree(DEFAULT_ARTIFACTS_DIR, art, ignore=shutil.ignore_patterns(ADAPTER_DIR, f"{HEAD}.*"))
    return art


def _artefacts_with_a_tuned_model(tmp_path):
    """A copy of the committed artefacts with a real (one-step, MiniLM-based) fine-tuned emotion model
    in place of the committed one."""
    from empathy_nlg.datasets import Conversation, Utterance
    from empathy_nlg.perception.emotion_tuned import HEAD, train_emotion_tuned
    from empathy_nlg.perception.encoder import default_encoder_path

    art = _artefacts_without_a_tuned_model(tmp_path)
    convs = [Conversation("a", "joyful", [Utterance("speaker", "I passed!")]), Conversation("b", "sad", [Utterance("speaker", "my dog died")])]
    train_emotion_tuned(convs, [], convs, art, tmp_path / "run", default_encoder_path(), max_minutes=0, progress=False)
    # served from the path it was trained on (a test base is no prepared encoder name)
    head = json.loads((art / f"{HEAD}.json").read_text())
    head["base_encoder"] = str(default_encoder_path())
    (art / f"{HEAD}.json").write_text(json.dumps(head))
    return art


def test_chat_scripts_measure_polarity_per_turn_and_a_tuned_model_side_by_side(tmp_path):
    data = tmp_path / "chat.jsonl"
    _chat(data)
    out = tmp_path / "out"
    plain = _artefacts_without_a_tuned_model(tmp_path / "plain")
    assert main(["eval-perception", "--task", "emotion", "--data", str(data), "--format", "chat-jsonl", "--out", str(out),
                 "--artifacts", str(plain), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3  # the mixed script is not judged
    assert {"polarity_accuracy", "first_turn_polarity_accuracy"} <= set(metrics) and "side_by_side" not in metrics
    assert not (out / "confusion_matrix.png").exists()

    art = _artefacts_with_a_tuned_model(tmp_path)
    out = tmp_path / "side"
    assert main(["eval-perception", "--task", "emotion", "--data", str(data), "--format", "chat-jsonl", "--out", str(out),
                 "--artifacts", str(art), "--tuned-weights", "0.5,1", "--emotion-tuned-weight", "0", "--quiet"]) == 0
    side = json.loads((out / "metrics.json").read_text())
    assert list(side["side_by_side"]) == ["frozen head", "blend 0.5", "tuned alone"]
    assert side["side_by_side"]["frozen head"] == {k: v for k, v in side.items() if k not in ("side_by_side", "served_tuned_weight")}
    assert all(m["n"] == 3 for m in side["side_by_side"].values())
    assert "| tuned alone |" in (out / "report.md").read_text()
    ed = tmp_path / "ed.jsonl"
    _ed_jsonl(ed)
    assert main(["eval-perception", "--task", "emotion", "--data", str(ed), "--format", "ed-jsonl", "--out", str(tmp_path / "ed"),
                 "--artifacts", str(art), "--emotion-tuned-weight", "0.5", "--quiet"]) == 0
    ed_metrics = json.loads((tmp_path / "ed" / "metrics.json").read_text())
    assert ed_metrics["served_tuned_weight"] == 0.5
    assert ed_metrics["side_by_side"]["blend 0.5"] == {k: v for k, v in ed_metrics.items() if k not in ("side_by_side", "served_tuned_weight")}


def test_cm_puts_the_fine_tuned_cross_encoder_beside_the_frozen_heads(tmp_path):
    import shutil

    from empathy_nlg.datasets import EpitomeExample
    from empathy_nlg.perception.cm_tuned import ADAPTER_DIR, HEAD, train_cm_tuned
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
    from empathy_nlg.perception.encoder import default_encoder_path

    data = tmp_path / "emotional-reactions-test.csv"
    _epitome(data)
    plain = tmp_path / "plain"
    shutil.copytree(DEFAULT_ARTIFACTS_DIR, plain, ignore=shutil.ignore_patterns(ADAPTER_DIR, f"{HEAD}.*"))
    assert main(["eval-perception", "--task", "cm", "--data", str(data), "--format", "epitome-csv", "--out",
                 str(tmp_path / "o1"), "--artifacts", str(plain), "--quiet"]) == 0
    frozen = json.loads((tmp_path / "o1" / "metrics.json").read_text())
    assert frozen["model"] == "frozen" and "side_by_side" not in frozen

    # a real (MiniLM-based, two-epoch) cross-encoder beside the committed frozen heads
    posts = ["I lost my job today.", "I can't sleep at night.", "my dog died", "I failed the exam"]
    files = {c: [EpitomeExample(p, r, lvl if c == "ER" else 0, []) for p in posts
                 for r, lvl in (("I'm so sorry, that must feel awful.", 2), ("Have you tried tea?", 0))]
             for c in ("ER", "IP", "EX")}
    train_cm_tuned(files, plain, default_encoder_path(), epochs=1, batch_size=4, dev_fraction=0.3, progress=False)
    head = json.loads((plain / f"{HEAD}.json").read_text())
    head["base_encoder"] = str(default_encoder_path())  # a test base is no prepared encoder name
    (plain / f"{HEAD}.json").write_text(json.dumps(head))
    assert main(["eval-perception", "--task", "cm", "--data", str(data), "--format", "epitome-csv", "--out",
                 str(tmp_path / "o2"), "--artifacts", str(plain), "--quiet"]) == 0
    both = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert both["model"] == "cm_tuned"
    side = both["side_by_side"]
    assert list(side) == ["frozen heads (MiniLM pair MLP)", "fine-tuned cross-encoder (MPNet + LoRA)"]
    assert side["frozen heads (MiniLM pair MLP)"] == {k: v for k, v in frozen.items() if k != "model"}
    assert side["fine-tuned cross-encoder (MPNet + LoRA)"] == {k: v for k, v in both.items() if k not in ("model", "side_by_side")}
    assert "| fine-tuned cross-encoder (MPNet + LoRA) |" in (tmp_path / "o2" / "report.md").read_text()
