"""`empathy-nlg evaluate` end to end, resumability, determinism and input errors.

Every data file here is written by the test (invented conversations, no dataset text).
"""

import json
import random
from pathlib import Path
from typing import List

import pytest

from empathy_nlg.cli import main
from empathy_nlg.datasets import Utterance
from empathy_nlg.evaluation import harness
from empathy_nlg.generators.base import GenerationResult, Generator, register_generator
from empathy_nlg.perception.types import CauseUtterance, Perception
from empathy_nlg.taxonomy import EMOTIONS

CONVS = [
    ("c1", "sad", ["My dog got sick last week.", "Oh no, is he better now?", "Not yet, the vet is worried.", "I hope he pulls through."]),
    ("c2", "joyful", ["I passed my driving test!", "Congratulations, how do you feel?", "Free, finally free.", "Where will you drive first?"]),
    ("c3", "afraid", ["A storm knocked the power out last night.", "That sounds scary.", "I sat in the dark for hours."]),
]
TRAIN = [
    ("t1", "sad", ["I lost my keys.", "What happened?", "I dropped them somewhere.", "Oh no, that is annoying."]),
    ("t2", "proud", ["My son won the race.", "What happened?", "He ran the fastest lap.", "That is wonderful."]),
    ("t3", "angry", ["Someone scratched my car.", "Oh no, that is annoying."]),
]


def write_ed(path: Path, convs) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for cid, emo, turns in convs:
            rec = {
                "conv_id": cid,
                "emotion": emo,
                "situation": turns[0],
                "turns": [{"role": "speaker" if i % 2 == 0 else "listener", "text": t} for i, t in enumerate(turns)],
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def write_ed_cause(path: Path, convs) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for cid, emo, turns in convs:
            utters = [t.lower().replace(",", " ,").replace(".", " .").replace("?", " ?").replace("!", " !").split() for t in turns]
            fh.write(json.dumps({"conv_id": cid, "utters": utters, "context": emo, "emotion_cause": [0]}) + "\n")
    return path


@pytest.fixture()
def files(tmp_path):
    return write_ed(tmp_path / "tiny.jsonl", CONVS), write_ed(tmp_path / "train.jsonl", TRAIN)


class FakePerceiver:
    """Says "sad" for everything (right on c1 only)."""

    def __init__(self):
        self.calls = 0

    def perceive_batch(self, dialogues):
        self.calls += len(dialogues)
        probs = {e: (0.9 if e == "sad" else 0.1 / 31) for e in EMOTIONS}
        return [
            Perception(emotion="sad", emotion_probs=probs, polarity="negative", polarity_prob=0.9, causes=[],
                       cm={"ER": 0.8, "IP": 0.1, "EX": 0.6}, crisis=False, crisis_score=0.0)
            for _ in dialogues
        ]


class FakeCM:
    """ER = the response says "oh no"; IP never; EX = it asks a question."""

    def predict(self, seeker_posts, responses):
        import numpy as np

        assert len(seeker_posts) == len(responses)
        return {
            "ER": np.array(["oh no" in r.lower() for r in responses]),
            "IP": np.zeros(len(responses), dtype=bool),
            "EX": np.array(["?" in r for r in responses]),
        }


class RandomEcho(Generator):
    """Uses python's RNG (so seeding shows) and counts calls (so reuse shows); scores 1 nat/token."""

    name = "test-random-echo"
    version = "t"
    needs_perception = False
    calls = 0

    def generate(self, requests):
        RandomEcho.calls += len(requests)
        return [GenerationResult(text=f"{r.context[-1].text.split()[0]} {random.randint(0, 10**6)}?", generator=self.name, version=self.version)
                for r in requests]

    def score(self, requests, references):
        tokens = sum(len(ref.split()) for ref in references)
        return {"nll": float(tokens), "tokens": tokens, "tokenizer": "whitespace"}


@pytest.fixture(autouse=True)
def _test_generators_registered():
    """Register the fake generators for this module only (the registry is process-global)."""
    from empathy_nlg.generators import base

    for cls in (RandomEcho, PerceivingEcho, CandidateEcho):
        register_generator(cls.name)(cls)
    yield
    for cls in (RandomEcho, PerceivingEcho, CandidateEcho):
        base.GENERATORS.unregister(cls.name)


def _examples(path):
    return harness.load_examples(path, "ed-jsonl")


def test_examples_are_listener_turns_with_context(files):
    data, _ = files
    ex = _examples(data)
    assert [(e.conv_id, e.turn_index) for e in ex] == [("c1", 1), ("c1", 3), ("c2", 1), ("c2", 3), ("c3", 1)]
    assert ex[1].reference == "I hope he pulls through." and len(ex[1].context) == 3
    assert [e.conv_id for e in harness.load_examples(data, "ed-jsonl", limit=2)] == ["c1", "c1"]
    assert harness.seeker_post([Utterance("speaker", "a"), Utterance("listener", "b")]) == "a"


def test_evaluate_with_injected_perceiver_and_cm_scorer(files, tmp_path):
    data, _ = files
    perceiver = FakePerceiver()
    runs = harness.evaluate(_examples(data), {"test-random-echo": RandomEcho()}, tmp_path / "out",
                            perceiver=perceiver, cm_scorer=FakeCM(), batch_size=2, seed=3, progress=False)
    m = json.loads((tmp_path / "out" / "test-random-echo" / "metrics.json").read_text())
    assert m["n"] == 5
    assert m["emotion_acc"] == pytest.approx(40.0)  # c1's two examples are "sad"
    assert m["ppl"] == pytest.approx(2.718281828, rel=1e-6) and m["ppl_tokenizer"] == "whitespace"
    assert m["epitome_er"] == 0.0 and m["epitome_ex"] == 100.0 and m["epitome_ip"] == 0.0
    # references: "Oh no, is he better now?" is ER and EX; 3 of 5 references ask something
    assert m["ref_epitome_er"] == pytest.approx(20.0) and m["ref_epitome_ex"] == pytest.approx(60.0)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "sent_std", "top5_share", "avg_len", "seconds"):
        assert key in m and key in m["definitions"] or key == "seconds"
    rec = json.loads((tmp_path / "out" / "test-random-echo" / "predictions.jsonl").read_text().splitlines()[0])
    for key in ("context", "reference", "reply", "perceived_emotion", "gold_emotion", "causes", "cm", "knowledge", "epitome"):
        assert key in rec
    assert rec["perceived_emotion"] == "sad" and rec["cm"]["ER"] == 0.8
    assert runs["test-random-echo"].generated == 5
    # MIME's Table 4 split by the gold emotion's group: c2 (joyful) is positive, c1 (sad) and c3 (afraid) negative
    split = m["by_polarity"]
    assert split["positive"]["n"] == 2 and split["negative"]["n"] == 3
    assert split["positive"]["emotion_acc"] == 0.0 and split["negative"]["emotion_acc"] == pytest.approx(200 / 3)
    assert split["negative"]["ppl"] == pytest.approx(2.718281828, rel=1e-6) and "seconds" not in split["negative"]


def test_resumable_second_run_reuses_predictions(files, tmp_path):
    data, _ = files
    out = tmp_path / "out"
    ex = _examples(data)
    RandomEcho.calls = 0
    harness.evaluate(ex, {"test-random-echo": RandomEcho()}, out, seed=1, progress=False)
    first = (out / "test-random-echo" / "predictions.jsonl").read_text()
    assert RandomEcho.calls == 5
    runs = harness.evaluate(ex, {"test-random-echo": RandomEcho()}, out, seed=99, progress=False)
    assert RandomEcho.calls == 5  # nothing generated again
    assert runs["test-random-echo"].reused == 5 and runs["test-random-echo"].generated == 0
    assert (out / "test-random-echo" / "predictions.jsonl").read_text() == first
    # an interrupted run: two good records and a half-written line -> only the other three are made
    lines = first.splitlines()
    (out / "test-random-echo" / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:20])
    runs = harness.evaluate(ex, {"test-random-echo": RandomEcho()}, out, seed=1, progress=False)
    assert RandomEcho.calls == 8 and runs["test-random-echo"].generated == 3
    again = (out / "test-random-echo" / "predictions.jsonl").read_text().splitlines()
    assert again[:2] == lines[:2] and len(again) == 5  # the kept records are untouched, in example order
    assert [json.loads(l)["turn_index"] for l in again] == [json.loads(l)["turn_index"] for l in lines]
    # the label's model replaced (another version): every reply is made again, none mixed in
    newer = RandomEcho()
    newer.version = "t2"
    runs = harness.evaluate(ex, {"test-random-echo": newer}, out, seed=1, progress=False)
    assert RandomEcho.calls == 13 and runs["test-random-echo"].generated == 5
    recs = [json.loads(l) for l in (out / "test-random-echo" / "predictions.jsonl").read_text().splitlines()]
    assert {r["version"] for r in recs} == {"t2"}

def test_deterministic_given_seed(files, tmp_path):
    data, _ = files
    ex = _examples(data)
    outs = []
    for d, seed in (("a", 7), ("b", 7), ("c", 8)):
        harness.evaluate(ex, {"test-random-echo": RandomEcho()}, tmp_path / d, seed=seed, progress=False)
        outs.append([json.loads(l)["reply"] for l in (tmp_path / d / "test-random-echo" / "predictions.jsonl").read_text().splitlines()])
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def _real_components_available() -> str:
    """'' when the real perceiver and CM scorer load, else the reason they do not."""
    perceiver = harness.load_perceiver({})
    if perceiver is None:
        return "the real Perceiver (empathy_nlg.perception.perceiver) or its artefacts are not available yet"
    if harness.load_cm_scorer({}) is None:
        return "the real EPITOME response classifiers (empathy_nlg.perception.cm) or their artefacts are not available yet"
    return ""


def test_command_end_to_end_with_frequent_baseline(files, tmp_path, capsys):
    data, train = files
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(data), "--format", "ed-jsonl", "--generator", "frequent",
               "--limit", "4", "--seed", "5", "--batch-size", "3", "--out", str(out),
               "--train-data", str(train), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "frequent" in printed and "B-1" in printed and "report:" in printed
    m = json.loads((out / "frequent" / "metrics.json").read_text())
    assert m["n"] == 4
    assert m["ppl"] is None  # the baseline cannot score text
    assert m["top5_share"] == 100.0 and m["sent_std"] == pytest.approx(3 ** 0.5)
    recs = [json.loads(l) for l in (out / "frequent" / "predictions.jsonl").read_text().splitlines()]
    assert {r["reply"] for r in recs} in ({"what happened ?"}, {"oh no , that is annoying ."})
    report = (out / "report.md").read_text()
    assert "published" in report and "NEC" in report and "MIME" in report and "IMAGINE" in report
    assert "Gao et al. (soft gate)" in report and "Gao et al. (hard gate)" in report and "Human" in report
    split = report.split("### By the context's polarity")[1].split("## Plots")[0]
    assert "**frequent · positive contexts** (this run) | 2 |" in split and "**frequent · negative contexts** (this run) | 2 |" in split
    assert "published" not in split
    assert (out / "metrics.png").stat().st_size > 0 and (out / "reply_length_hist.png").stat().st_size > 0
    # the real perception components, once built, are what the command uses
    if not _real_components_available():
        assert m["emotion_acc"] is not None and m["epitome_er"] is not None and m["ref_epitome_er"] is not None


def test_command_uses_real_perceiver_and_cm_scorer(files, tmp_path):
    reason = _real_components_available()
    if reason:
        pytest.skip(reason)
    data, train = files
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--generator", "frequent", "--out", str(out),
                 "--train-data", str(train), "--no-progress"]) == 0
    m = json.loads((out / "frequent" / "metrics.json").read_text())
    assert m["n"] == 5
    assert 0.0 <= m["emotion_acc"] <= 100.0
    for key in ("epitome_er", "epitome_ip", "epitome_ex", "ref_epitome_er", "ref_epitome_ip", "ref_epitome_ex"):
        assert 0.0 <= m[key] <= 100.0
    rec = json.loads((out / "frequent" / "predictions.jsonl").read_text().splitlines()[0])
    assert rec["perceived_emotion"] in EMOTIONS and set(rec["epitome"]) == {"ER", "IP", "EX"}


def test_cause_format_is_accepted(tmp_path):
    data = write_ed_cause(tmp_path / "tiny_cause.jsonl", CONVS)
    runs = harness.evaluate(harness.load_examples(data, "ed-cause-jsonl"), {"test-random-echo": RandomEcho()},
                            tmp_path / "o", progress=False, write_report=False)
    rec = runs["test-random-echo"].records[0]
    assert rec["reference"] == "oh no , is he better now ?" and rec["gold_cause_indices"] == [0]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_malformed_file_gives_one_line_error_naming_the_line(files, tmp_path, capsys):
    data, train = files
    bad = tmp_path / "bad.jsonl"
    good_line = data.read_text().splitlines()[0]
    bad.write_text(good_line + "\n{not json\n")
    rc = main(["evaluate", "--data", str(bad), "--generator", "frequent", "--out", str(tmp_path / "o"), "--train-data", str(train)])
    assert rc == 2
    line = _error_line(capsys)
    assert line.startswith("empathy-nlg evaluate: error:") and "bad.jsonl: line 2" in line and "JSON" in line
    bad.write_text(good_line + "\n" + json.dumps({"conv_id": "x", "emotion": "sleepy", "turns": []}) + "\n")
    assert main(["evaluate", "--data", str(bad), "--generator", "frequent", "--out", str(tmp_path / "o")]) == 2
    assert "line 2" in _error_line(capsys)


def test_unknown_generator_and_format_are_clear_errors(files, tmp_path, capsys):
    data, _ = files
    assert main(["evaluate", "--data", str(data), "--generator", "nope", "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert "unknown generator 'nope'" in line and "frequent" in line
    assert main(["evaluate", "--data", str(data), "--format", "csv", "--generator", "frequent", "--out", str(tmp_path / "o")]) == 2
    assert "unknown format 'csv'" in _error_line(capsys)
    assert main(["evaluate", "--data", str(tmp_path / "missing.jsonl"), "--generator", "frequent", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in _error_line(capsys)
    assert main(["evaluate", "--data", str(data), "--generator", "frequent", "--limit", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--limit" in _error_line(capsys)


def test_labels_compare_configured_variants_side_by_side(files, tmp_path, capsys):
    data, train = files
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("generators:\n  freq-a: {generator: frequent}\n  freq-b: {generator: frequent, reply: hello there}\n")
    rc = main(["evaluate", "--data", str(data), "--generator", "freq-a", "--generator", "freq-b", "--limit", "3",
               "--config", str(cfg), "--out", str(tmp_path / "o"), "--train-data", str(train), "--no-progress",
               "--no-perception", "--no-cm-scorer"])
    assert rc == 0
    b = [json.loads(l) for l in (tmp_path / "o" / "freq-b" / "predictions.jsonl").read_text().splitlines()]
    assert {r["reply"] for r in b} == {"hello there"}
    assert (tmp_path / "o" / "freq-a" / "metrics.json").is_file()
    assert main(["evaluate", "--data", str(data), "--generator", "freq-c", "--config", str(cfg),
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown generator 'freq-c'" in _error_line(capsys)


class PerceivingEcho(RandomEcho):
    name = "test-perceiving-echo"
    needs_perception = True

    def generate(self, requests):
        RandomEcho.calls += len(requests)
        return [GenerationResult(text=f"you feel {r.perception.emotion if r.perception else 'something'}", generator=self.name,
                                 version=self.version) for r in requests]


def test_resume_adds_perception_and_epitome_later_without_regenerating(files, tmp_path):
    data, _ = files
    ex, out = _examples(data), tmp_path / "out"
    RandomEcho.calls = 0
    gens = lambda: {"test-random-echo": RandomEcho(), "test-perceiving-echo": PerceivingEcho()}
    first = harness.evaluate(ex, gens(), out, progress=False)  # no perceiver, no CM scorer yet
    assert first["test-random-echo"].metrics["emotion_acc"] is None and first["test-random-echo"].metrics["epitome_er"] is None
    assert RandomEcho.calls == 10
    perceiver = FakePerceiver()
    runs = harness.evaluate(ex, gens(), out, perceiver=perceiver, cm_scorer=FakeCM(), progress=False)
    # the perception-free generator keeps its replies and only gains the labels ...
    assert runs["test-random-echo"].generated == 0
    assert runs["test-random-echo"].metrics["emotion_acc"] == pytest.approx(40.0)
    assert runs["test-random-echo"].metrics["epitome_ex"] == 100.0
    # ... the one that conditions on perception is regenerated with it; each context perceived once
    assert runs["test-perceiving-echo"].generated == 5
    assert {r["reply"] for r in runs["test-perceiving-echo"].records} == {"you feel sad"}
    assert perceiver.calls == 5 and RandomEcho.calls == 15


def test_config_file_sections_reach_the_generator(files, tmp_path, capsys):
    data, _ = files
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"generators": {"frequent": {"reply": "Tell me more."}}}))
    out = tmp_path / "o"
    # a configured reply needs no training data: point --train-data at nothing to prove it is not read
    assert main(["evaluate", "--data", str(data), "--generator", "frequent", "--config", str(cfg), "--out", str(out),
                 "--train-data", str(tmp_path / "absent.jsonl"), "--no-progress", "--no-perception", "--no-cm-scorer"]) == 0
    assert {json.loads(l)["reply"] for l in (out / "frequent" / "predictions.jsonl").read_text().splitlines()} == {"Tell me more."}
    cfg.write_text(json.dumps({"generators": {"frequent": {"colour": "blue"}}}))
    assert main(["evaluate", "--data", str(data), "--generator", "frequent", "--config", str(cfg), "--out", str(out)]) == 2
    assert "bad config for generator 'frequent'" in _error_line(capsys)
    cfg.write_text("{oops")
    assert main(["evaluate", "--data", str(data), "--generator", "frequent", "--config", str(cfg), "--out", str(out)]) == 2
    assert "not valid JSON" in _error_line(capsys)


# ----------------------------------------------------------------------------------- gold causes
#: Gao et al.'s format: `utters` are *all* turns (speaker first, alternating), `emotion_cause`
#: indexes them — here the first speaker turn (0), a listener turn (1) and the last turn (4)
GAO = {"conv_id": "g1", "context": "afraid", "emotion_cause": [4, 0, 1],
       "utters": [["a", "storm", "hit", "my", "town", "."], ["oh", "no", ",", "are", "you", "safe", "?"],
                  ["yes", ",", "but", "the", "roof", "is", "gone", "."], ["that", "is", "awful", "."],
                  ["we", "sleep", "at", "my", "sister", "'s", "now", "."], ["i", "hope", "it", "gets", "fixed", "soon", "."]]}


def write_gao(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (records or (GAO,))), encoding="utf-8")
    return path


class CausePerceiver(FakePerceiver):
    """Perception's causes: the context's last speaker turn, with a word span (never the gold ones here)."""

    def perceive_batch(self, dialogues):
        out = super().perceive_batch(dialogues)
        for p, d in zip(out, dialogues):
            last = max(i for i, u in enumerate(d) if u.role == "speaker")
            p.causes = [CauseUtterance(index=last, text=d[last].text, score=0.7, spans=[[0, 2]])]
        return out


class CauseRecorder(RandomEcho):
    """Conditions on perception and keeps every request it is given."""

    name = "test-cause-recorder"
    needs_perception = True

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        return [GenerationResult(text="causes " + " ".join(str(c.index) for c in r.perception.causes), generator=self.name,
                                 version=self.version) for r in requests]


def test_gold_cause_indices_map_onto_the_context_the_harness_builds(tmp_path):
    """`emotion_cause` indexes Gao's `utters` (speaker and listener turns), so an index is the index
    of that utterance in the example's context; only the causes before the reply's turn are kept."""
    ex = harness.load_examples(write_gao(tmp_path / "g.jsonl"), "ed-cause-jsonl")
    assert [(e.turn_index, e.cause_indices) for e in ex] == [(1, [0]), (3, [0, 1]), (5, [0, 1, 4])]
    last = ex[-1]
    for i in last.cause_indices:
        assert last.context[i].text == " ".join(GAO["utters"][i])
    assert [last.context[i].role for i in last.cause_indices] == ["speaker", "listener", "speaker"]
    assert last.reference == "i hope it gets fixed soon ." and len(last.context) == 5


def test_causes_gold_puts_exactly_the_gold_cause_utterances_in_the_request(tmp_path):
    ex = harness.load_examples(write_gao(tmp_path / "g.jsonl"), "ed-cause-jsonl")
    gold, perceived = CauseRecorder(), CauseRecorder()
    perceiver = CausePerceiver()
    runs = harness.evaluate(ex, {"gold": gold, "perceived": perceived}, tmp_path / "o", perceiver=perceiver,
                            progress=False, write_report=False, causes={"gold": "gold"})
    assert [[c.index for c in r.perception.causes] for r in gold.requests] == [e.cause_indices for e in ex]
    for r, e in zip(gold.requests, ex):
        assert [c.text for c in r.perception.causes] == [e.context[i].text for i in e.cause_indices]
        assert all(c.spans == [] and c.score == 1.0 for c in r.perception.causes)  # the words are the generator's
        assert r.perception.emotion == "sad" and r.perception.cm["ER"] == 0.8  # the rest is still perceived
        assert r.perception.models["cause"] == "gold"
    # the perception shared by the labels is not touched: the other label gets perception's causes
    assert [[c.index for c in r.perception.causes] for r in perceived.requests] == [[0], [2], [4]]
    assert perceiver.calls == 3  # each context perceived once for both labels
    recs = runs["gold"].records
    assert [r["request_cause_indices"] for r in recs] == [[0], [0, 1], [0, 1, 4]]
    assert {r["cause_source"] for r in recs} == {"gold"} and [r["reply"] for r in recs] == ["causes 0", "causes 0 1", "causes 0 1 4"]
    assert [[c["index"] for c in r["causes"]] for r in recs] == [[0], [2], [4]]  # the record keeps what perception said
    assert "cause_source" not in runs["perceived"].records[0]
    assert runs["gold"].metrics["cause_source"] == "gold" and runs["perceived"].metrics["cause_source"] == "perception"
    # perception's causes against the gold ones: TP 0→0 and 4→4; FP 2; FN 0 and 1 (turn 3), 1 (turn 5)
    m = runs["perceived"].metrics
    assert m["cause_n"] == 3 and m["cause_p"] == pytest.approx(200 / 3) and m["cause_r"] == pytest.approx(100 * 2 / 6)
    assert m["cause_f1"] == pytest.approx(100 * 4 / 9) and m["cause_exact"] == pytest.approx(100 / 3)
    # switching a label's cause source regenerates its predictions instead of reusing them
    again = harness.evaluate(ex, {"gold": CauseRecorder()}, tmp_path / "o", perceiver=perceiver, progress=False, write_report=False)
    assert again["gold"].generated == 3 and "cause_source" not in again["gold"].records[0]


def test_causes_gold_is_refused_without_gold_labels_or_without_perception(files, tmp_path, capsys):
    data, _ = files
    gen = CauseRecorder()
    with pytest.raises(ValueError, match="no gold cause labels.*ed-cause-jsonl"):
        harness.evaluate(_examples(data), {"g": gen}, tmp_path / "o", perceiver=CausePerceiver(), progress=False,
                         causes={"g": "gold"})
    assert gen.requests == []  # refused before anything is generated
    gao = harness.load_examples(write_gao(tmp_path / "g.jsonl"), "ed-cause-jsonl")
    with pytest.raises(ValueError, match="needs the perceiver"):
        harness.evaluate(gao, {"g": gen}, tmp_path / "o", progress=False, causes={"g": "gold"})
    with pytest.raises(ValueError, match="causes must be one of perception, gold"):
        harness.evaluate(gao, {"g": gen}, tmp_path / "o", progress=False, causes={"g": "silver"})
    # plain ED has no labels: no agreement metrics
    runs = harness.evaluate(_examples(data), {"g": gen}, tmp_path / "p", perceiver=CausePerceiver(), progress=False,
                            write_report=False)
    assert runs["g"].metrics["cause_f1"] is None and runs["g"].metrics["cause_n"] is None
    # through the command: a one-line error naming the label and the way out
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("generators:\n  freq-gold: {generator: frequent, reply: hello, causes: gold}\n")
    assert main(["evaluate", "--data", str(data), "--generator", "freq-gold", "--config", str(cfg),
                 "--out", str(tmp_path / "o2"), "--no-cm-scorer"]) == 2
    line = _error_line(capsys)
    assert "'freq-gold' has causes: gold" in line and "--format ed-cause-jsonl" in line


def test_causes_is_a_harness_option_not_a_generator_argument(tmp_path):
    cfg = {"generators": {"freq-gold": {"generator": "frequent", "reply": "hi", "causes": "gold"},
                          "freq-bad": {"generator": "frequent", "reply": "hi", "causes": "silver"}}}
    gens = harness.build_generators(["freq-gold"], cfg)  # `causes` does not reach the constructor
    assert gens["freq-gold"].generate([harness.GenerationRequest(context=[Utterance("speaker", "x")])])[0].text == "hi"
    assert harness.harness_options(["freq-gold", "frequent"], cfg) == {"freq-gold": {"causes": "gold", "conversation": None},
                                                                      "frequent": {"causes": "perception", "conversation": None}}
    with pytest.raises(ValueError, match="'freq-bad': causes must be one of"):
        harness.harness_options(["freq-bad"], cfg)


def test_the_eval_config_has_the_gold_cause_and_hard_serving_labels():
    from empathy_nlg.settings import read_config_file

    root = Path(__file__).resolve().parents[3]
    cfg = read_config_file(str(root / "configs" / "eval" / "generators.yml"))
    labels = ["cause_gated-gold", "cause_gated-hard-serve", "cause_gated-hard-gold", "cause_gated-hard-trained", "cause_gated-hard"]
    opts = harness.harness_options(labels, cfg)
    g = cfg["generators"]
    assert opts["cause_gated-gold"]["causes"] == "gold" and g["cause_gated-gold"].get("gating") is None
    assert opts["cause_gated-hard-gold"]["causes"] == "gold" and g["cause_gated-hard-gold"]["gating"] == "hard"
    assert opts["cause_gated-hard-serve"]["causes"] == "perception" and g["cause_gated-hard-serve"]["gating"] == "hard"
    for label in ("cause_gated-gold", "cause_gated-hard-serve", "cause_gated-hard-gold", "cause_gated-hard"):
        assert g[label]["generator"] == "cause_gated" and "model_dir" not in g[label]  # the committed model
    assert g["cause_gated-hard-trained"]["model_dir"] == "training_runs/cause_gated-hard/final"
    # the epoch continuation serves its run's best checkpoint, with perception's or the gold causes
    opts = harness.harness_options(["cause_gated-epoch-run", "cause_gated-epoch-run-gold"], cfg)
    for label, causes in (("cause_gated-epoch-run", "perception"), ("cause_gated-epoch-run-gold", "gold")):
        assert g[label]["model_dir"] == "training_runs/cause_gated-epoch/best" and opts[label]["causes"] == causes
    # the matched-budget runs: each label serves its own run's final model, the gold rows with gold causes
    runs = {"cause_gated-400": "cause_gated-400", "cause_gated-400-gold": "cause_gated-400",
            "cause_gated-400-hard-serve": "cause_gated-400", "cause_gated-hard-400": "cause_gated-hard-400",
            "cause_gated-hard-400-gold": "cause_gated-hard-400", "cause_gated-no-gate-400": "cause_gated-no-gate-400",
            "cause_gated-no-emotion-400": "cause_gated-no-emotion-400"}
    opts = harness.harness_options(list(runs), cfg)
    for label, run in runs.items():
        assert g[label]["model_dir"] == f"training_runs/{run}/final", label
        assert opts[label]["causes"] == ("gold" if label.endswith("-gold") else "perception"), label
    assert g["cause_gated-400-hard-serve"]["gating"] == "hard" and "gating" not in g["cause_gated-hard-400"]


# ----------------------------------------------------------------------------------- conversation decoding
class CandidateEcho(RandomEcho):
    """Proposes two candidates per request and records the requests (what the history bias would read)."""

    name = "test-candidate-echo"
    needs_perception = True

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            first = r.context[-1].text.split()[0]
            cands = [{"text": "Oh no, is he better now?", "score": 0.0}, {"text": f"{first}, tell me more?", "score": -1.0}]
            out.append(GenerationResult(text=cands[0]["text"], generator=self.name, version=self.version, candidates=cands))
        return out


class NoRepeatReranker:
    """Takes the first candidate that is not an earlier reply, and remembers what it was shown."""

    def __init__(self):
        self.seen = []

    def choose(self, candidates, user_turns, perception, earlier):
        self.seen.append((list(user_turns), list(earlier), [c.text for c in candidates], perception))
        return next((c for c in candidates if c.text not in earlier), None)

    def describe(self, candidates, chosen):
        return {"chosen": chosen.text, "n": len(candidates)}


def test_conversation_label_decodes_with_the_contexts_listener_turns_as_earlier_replies(files, tmp_path):
    data, _ = files
    ex = _examples(data)
    plain, conv = CandidateEcho(), CandidateEcho()
    rr = NoRepeatReranker()
    dec = harness.ConversationDecoding(rr, key="conversation")
    runs = harness.evaluate(ex, {"plain": plain, "conv": conv}, tmp_path / "o", perceiver=FakePerceiver(), progress=False,
                            write_report=False, conversation={"conv": dec})
    # the requests carry the assistant's earlier replies (the context's listener turns) only with conversation:
    assert [r.earlier_replies for r in plain.requests] == [[]] * len(ex)
    assert [r.earlier_replies for r in conv.requests] == [[u.text for u in e.context if u.role == "listener"] for e in ex]
    # the reranker saw the speaker's turns, those replies and the generator's candidates, with perception
    assert [s[0] for s in rr.seen] == [[u.text for u in e.context if u.role == "speaker"] for e in ex]
    assert all(s[2] == ["Oh no, is he better now?", s[2][1]] and s[3].emotion == "sad" for s in rr.seen)
    plain_replies = [r["reply"] for r in runs["plain"].records]
    conv_recs = runs["conv"].records
    assert plain_replies == ["Oh no, is he better now?"] * len(ex)
    # c1's third turn already said "Oh no, is he better now?": the conversation label answers otherwise
    i = next(k for k, e in enumerate(ex) if "Oh no, is he better now?" in [u.text for u in e.context])
    assert conv_recs[i]["reply"] == "Not, tell me more?" and conv_recs[i]["conversation"]["generator_reply"] == "Oh no, is he better now?"
    assert conv_recs[i]["conversation"]["source"] == "generator" and conv_recs[i]["conversation"]["rerank"]["n"] == 2
    assert {r["decoding"] for r in conv_recs} == {"conversation"} and all("decoding" not in r for r in runs["plain"].records)
    assert runs["conv"].metrics["decoding"] == "conversation" and runs["plain"].metrics["decoding"] == "turn"
    # a rerun with the same decoding reuses every record; another decoding regenerates them all
    again = harness.evaluate(ex, {"conv": CandidateEcho()}, tmp_path / "o", perceiver=FakePerceiver(), progress=False,
                             write_report=False, conversation={"conv": dec})
    assert again["conv"].generated == 0
    other = harness.ConversationDecoding(NoRepeatReranker(), key='conversation:{"rerank": {"enabled": false}}')
    changed = harness.evaluate(ex, {"conv": CandidateEcho()}, tmp_path / "o", perceiver=FakePerceiver(), progress=False,
                               write_report=False, conversation={"conv": other})
    assert changed["conv"].generated == len(ex)
    # nor does a plain run reuse conversation records (or the reverse)
    assert harness.evaluate(ex, {"conv": CandidateEcho()}, tmp_path / "o", perceiver=FakePerceiver(), progress=False,
                            write_report=False)["conv"].generated == len(ex)


def test_conversation_option_is_checked_and_needs_perception(files, tmp_path):
    cfg = {"generators": {"a": {"generator": "frequent", "reply": "hi", "conversation": True},
                          "b": {"generator": "frequent", "reply": "hi", "conversation": {"rerank": {"enabled": False}}},
                          "c": {"generator": "frequent", "reply": "hi", "conversation": "yes"},
                          "d": {"generator": "frequent", "reply": "hi", "conversation": {"exemplars": {"k": "three"}}}}}
    opts = harness.harness_options(["a", "b", "frequent"], cfg)
    assert [opts[n]["conversation"] for n in ("a", "b", "frequent")] == [{}, {"rerank": {"enabled": False}}, None]
    assert harness.build_generators(["a"], cfg)["a"].generate([harness.GenerationRequest(context=[Utterance("speaker", "x")])])[0].text == "hi"
    with pytest.raises(ValueError, match="'c': conversation must be true, false or a mapping"):
        harness.harness_options(["c"], cfg)
    with pytest.raises(ValueError, match="'a' has conversation:.*needs the perceiver"):
        harness.conversation_decodings({"a": {}}, None, cfg)
    with pytest.raises(ValueError, match="'d': bad conversation settings"):
        harness.conversation_decodings({"d": {"exemplars": {"k": "three"}}}, FakePerceiver(), cfg)
    with pytest.raises(ValueError, match="needs the perceiver"):
        harness.evaluate(_examples(files[0]), {"a": CandidateEcho()}, tmp_path / "o", progress=False, write_report=False,
                         conversation={"a": harness.ConversationDecoding(NoRepeatReranker())})


def test_conversation_labels_with_the_real_reranker(files, tmp_path):
    """The labels of configs/eval/generators.yml build the engine's reranker on the real perceiver;
    a conversation label's reply is one of the generator's candidates or an exemplar."""
    reason = _real_components_available()
    if reason:
        pytest.skip(reason)
    from empathy_nlg.settings import read_config_file

    root = Path(__file__).resolve().parents[3]
    cfg = read_config_file(str(root / "configs" / "eval" / "generators.yml"))
    labels = ["nec-conv", "nec-conv-no-history", "nec-conv-no-rerank", "nec-conv-no-exemplars"]
    opts = harness.harness_options(labels, cfg)
    assert cfg["generators"]["nec-conv-no-history"]["history_bias"] == 0
    perceiver = harness.load_perceiver({})
    decs = harness.conversation_decodings({n: opts[n]["conversation"] for n in labels}, perceiver, {})
    assert decs["nec-conv"].reranker is not None and decs["nec-conv-no-rerank"].reranker is None
    assert decs["nec-conv-no-exemplars"].exemplars is None and decs["nec-conv-no-exemplars"].reranker is not None
    assert len({d.key for d in decs.values()}) == 3  # no-history differs in the generator, not the decoding
    gen = CandidateEcho()
    runs = harness.evaluate(_examples(files[0]), {"conv": gen}, tmp_path / "o", perceiver=perceiver, progress=False,
                            write_report=False, conversation={"conv": decs["nec-conv-no-exemplars"]})
    for rec in runs["conv"].records:
        assert rec["reply"] in {c["text"] for c in rec["conversation"]["rerank"]["candidates"]}
        assert rec["conversation"]["source"] == "generator"


def test_generator_emotion_acc_reads_the_emotion_in_the_generators_details():
    def rec(reply, gold, perceived, own):
        return {"reply": reply, "reference": "ok then", "gold_emotion": gold, "perceived_emotion": perceived,
                "details": {} if own is None else {"emotion": own}}

    records = [rec("a b", "sad", "sad", "angry"), rec("c d", "joyful", "sad", "joyful"),
               rec("e f", "afraid", "afraid", "afraid"), rec("g h", "proud", "sad", "sad")]
    m = harness.compute_metrics(records, 1.0)
    assert m["emotion_acc"] == pytest.approx(50.0)            # perception: sad, afraid right
    assert m["generator_emotion_acc"] == pytest.approx(50.0)  # the generator's own: joyful, afraid right
    records[0] = rec("a b", "sad", "sad", "sad")
    assert harness.compute_metrics(records, 1.0)["generator_emotion_acc"] == pytest.approx(75.0)
    # a reply whose details name no emotion (another generator, or the emotion ablated): no figure
    records[1] = rec("c d", "joyful", "sad", None)
    assert harness.compute_metrics(records, 1.0)["generator_emotion_acc"] is None
