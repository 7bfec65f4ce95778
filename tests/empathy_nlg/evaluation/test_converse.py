"""`empathy-nlg converse-eval`: metrics on hand-made transcripts, input validation, the engine and
REST replay loops (stand-in engine, a local HTTP server) and the written outputs. No models load.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest

from empathy_nlg.cli import main
from empathy_nlg.evaluation import converse as C
from tests.empathy_nlg.conftest import make_perception


# ----------------------------------------------------------------------------------- helpers
def transcript(replies, users=None, polarity="negative", source="script", perceived=None, kinds=None, latencies=None):
    users = users or [f"user turn {i}" for i in range(len(replies))]
    turns = []
    for i, reply in enumerate(replies):
        turns.append({
            "index": i + 1,
            "user": users[i],
            "reply": reply,
            "kind": (kinds or ["generated"] * len(replies))[i],
            "latency_ms": (latencies or [10.0] * len(replies))[i],
            "perceived_polarity": (perceived or [None] * len(replies))[i],
        })
    return {"id": "c", "polarity": polarity, "source": source, "turns": turns}


def scored(*args, **kwargs):
    return C.score_conversation(transcript(*args, **kwargs))


def write_lines(path: Path, lines: List[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- metrics
def test_tokens_lowercase_and_keep_contractions():
    assert C.tokens("That’s GREAT, isn't it? 2 dogs!") == ["that's", "great", "isn't", "it", "2", "dogs"]
    assert C.jaccard([], ["a"]) == 0.0 and C.jaccard(["a", "b"], ["b", "a", "a"]) == 1.0


def test_repeat_uses_any_earlier_reply_and_the_threshold():
    tr = scored([
        "alpha beta gamma delta epsilon",   # B1
        "zeta eta theta iota kappa",        # B2: new
        "alpha beta gamma delta",           # B3: J(B1)=4/5=0.8 → repeat of B1 (not only the previous reply)
        "alpha beta gamma lambda",          # B4: J(B1)=3/6, J(B3)=3/5=0.6 → not a repeat
    ])
    m = [t["metrics"] for t in tr["turns"]]
    assert [x["repeat"] for x in m] == [False, False, True, False]
    assert m[2]["repeat_of"] == 1 and m[2]["max_jaccard"] == 0.8
    assert m[3]["max_jaccard"] == 0.6
    assert tr["metrics"]["repeat_rate"] == 25.0
    assert any(f.startswith("repeat of B1") for f in tr["turns"][2]["flags"])


def test_opening_repeat_compares_the_first_three_tokens():
    tr = scored([
        "I hear you, losing a job is hard.",
        "I hear you. What happened next?",       # same first 3 tokens as B1
        "I hear that you were scared.",          # "i hear that" differs
        "Oh, I hear you.",
    ])
    assert [t["metrics"]["opening_repeat"] for t in tr["turns"]] == [False, True, False, False]
    assert tr["turns"][1]["metrics"]["opening_of"] == 1
    assert tr["metrics"]["opening_repeat_rate"] == 25.0


def test_marker_matching_whole_words_prefixes_and_curly_apostrophes():
    assert C.judge_reply("Congratulations on the new job!")["celebratory"]
    assert C.judge_reply("That’s great news")["celebratory"]
    assert not C.judge_reply("I'm not greatly bothered")["celebratory"]
    assert C.judge_reply("I'm so sorry.")["sympathetic"]
    assert not C.judge_reply("The sorryness of it")["sympathetic"]      # whole words only
    assert C.judge_reply("That must be   really hard")["sympathetic"]
    assert C.judge_reply("Unfortunately it went wrong")["sympathetic"]  # unfortunate*


def test_polarity_judge_fixed_polarity():
    pos = scored(["I'm so sorry to hear that.", "Congratulations! Sorry I missed it.", "Tell me more."], polarity="positive")
    assert [t["metrics"]["polarity_mismatch"] for t in pos["turns"]] == [True, False, False]  # both markers: no mismatch
    assert pos["metrics"]["polarity_judged"] == 3
    assert pos["metrics"]["polarity_mismatch_rate"] == pytest.approx(33.33)
    neg = scored(["That's great!", "Oh no, that's awful."], polarity="negative")
    assert [t["metrics"]["polarity_mismatch"] for t in neg["turns"]] == [True, False]
    assert "polarity mismatch (celebratory reply to a negative turn)" in neg["turns"][0]["flags"]


def test_replacement_judge_counts_offers_to_replace_who_the_user_spoke_of_unless_good_news():
    users = ["my dog died this morning", "I keep expecting him at the door", "I lost my job too"]
    sad = scored(["I'm so sorry.", "I hope you find a new dog soon.", "I hope you find a new job."], users=users)
    assert [t["metrics"]["replaces"] for t in sad["turns"]] == [None, "dog", None]
    assert "offers a new dog" in sad["turns"][1]["flags"]
    assert sad["metrics"]["replacement_rate"] == pytest.approx(33.33)
    happy = scored(["Will you get another kitten?"], users=["we adopted a kitten"], polarity="positive")
    assert happy["turns"][0]["metrics"]["replaces"] is None and happy["metrics"]["replacement_rate"] == 0.0


def test_polarity_judge_mixed_and_ed_use_perception_or_skip():
    mixed = scored(["That's great!", "That's great!", "That's great!"], polarity="mixed",
                   perceived=["negative", "positive", None])
    m = [t["metrics"] for t in mixed["turns"]]
    assert [x["expected_polarity"] for x in m] == ["negative", "positive", None]
    assert [x["polarity_mismatch"] for x in m] == [True, False, None]
    assert mixed["metrics"]["polarity_judged"] == 2 and mixed["metrics"]["polarity_mismatch_rate"] == 50.0
    # an ED replay labelled negative is judged by the perceived polarity of each turn
    ed = scored(["Congrats!"], polarity="negative", source="ed", perceived=["positive"])
    assert ed["turns"][0]["metrics"]["polarity_mismatch"] is False
    none = scored(["Congrats!"], polarity="mixed")
    assert none["metrics"]["polarity_judged"] == 0 and none["metrics"]["polarity_mismatch_rate"] is None


def test_grounding_stopwords_and_normalisation():
    assert C.normalise_word("exams") == "exam" and C.normalise_word("passed") == "pass"
    assert C.normalise_word("passing") == "pass" and C.normalise_word("classes") == "class"
    assert C.normalise_word("class") == "class" and C.normalise_word("dogs") == "dogs"  # ≤ 4 chars kept
    assert C.normalise_word("notes") == "note" and C.normalise_word("wishes") == "wish" and C.normalise_word("stress") == "stress"
    assert C.normalise_word("sister's") == "sister"
    assert C.content_words("I really just feel so tired, you know?") == ["tir"]  # tired → tir (light, not a lemmatiser)
    tr = scored(
        ["Exam stress is the worst.", "I hear you, it really sounds like you feel that.", "Is your sister proud?", ""],
        users=["My exams went badly.", "I just feel so bad about it", "My sister's wedding is soon", "ok"],
    )
    m = [t["metrics"] for t in tr["turns"]]
    assert m[0]["grounded"] and m[0]["shared_words"] == ["exam"]
    assert not m[1]["grounded"]                               # only stopwords / fillers in common
    assert m[2]["grounded"] and m[2]["shared_words"] == ["sister"]
    assert not m[3]["grounded"]
    assert "ungrounded" in tr["turns"][1]["flags"] and "empty" in tr["turns"][3]["flags"]
    assert tr["metrics"]["grounded_rate"] == 50.0
    # what the user said in an *earlier* turn counts too
    later = scored(["Tell me more.", "How did the interview end?"], users=["I had an interview today", "ok"])
    assert later["turns"][1]["metrics"]["shared_words"] == ["interview"]


def test_aggregate_routing_latency_words_and_epitome():
    tr = transcript(["one two", "three four five six", "", "seven"], kinds=["generated", "template", "empty", "crisis"],
                    latencies=[10.0, 20.0, 30.0, 40.0])
    C.score_conversation(tr, epitome=[{"ER": True, "IP": False, "EX": True}, {"ER": False, "IP": False, "EX": True},
                                      {"ER": False, "IP": False, "EX": False}, {"ER": True, "IP": True, "EX": False}])
    m = tr["metrics"]
    assert (m["generated_share"], m["template_turns"], m["crisis_turns"], m["empty_replies"]) == (25.0, 1, 1, 1)
    assert (m["p50_ms"], m["p95_ms"], m["max_ms"]) == (25.0, 38.5, 40.0)
    assert m["mean_reply_words"] == 1.75
    assert (m["er_rate"], m["ip_rate"], m["ex_rate"]) == (50.0, 25.0, 50.0)
    # pooled over conversations; no scorer → null EPITOME rates
    other = scored(["a b c"])
    overall = C.aggregate([tr, other])
    assert overall["conversations"] == 2 and overall["turns"] == 5 and overall["er_rate"] is None


def test_routing_kind_names():
    assert C.routing_kind("hi", "nec") == "generated"
    assert C.routing_kind("hi", "template-fallback") == "template"
    assert C.routing_kind("hi", "crisis-override") == "crisis" and C.routing_kind("hi", "crisis-followup") == "crisis"
    assert C.routing_kind("  ", "nec") == "empty"


def test_percentile_interpolates():
    assert C.percentile([], 50) is None
    assert C.percentile([5.0], 95) == 5.0
    assert C.percentile([1, 2, 3, 4], 50) == 2.5


# ----------------------------------------------------------------------------------- inputs
def test_read_script_valid(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [
        json.dumps({"id": "a", "polarity": "Positive", "turns": [" I got the job! ", "I start Monday."]}),
        "",
        json.dumps({"polarity": "mixed", "turns": ["x"]}),
    ])
    convs = C.read_script(path)
    assert [(c.id, c.polarity, c.turns) for c in convs] == [("a", "positive", ["I got the job!", "I start Monday."]),
                                                           ("line3", "mixed", ["x"])]
    assert not convs[0].judge_by_perception and convs[1].judge_by_perception
    assert len(C.read_script(path, limit=1)) == 1


@pytest.mark.parametrize("lines, message", [
    ([json.dumps({"polarity": "positive", "turns": ["a"]}), "", "{not json"], "line 3: not valid JSON"),
    ([json.dumps({"polarity": "happy", "turns": ["a"]})], "line 1: bad polarity 'happy'"),
    ([json.dumps({"turns": ["a"]})], "line 1: missing 'polarity'"),
    ([json.dumps({"polarity": "negative", "turns": []})], "line 1: 'turns' is empty"),
    ([json.dumps({"polarity": "negative"})], "line 1: missing 'turns'"),
    ([json.dumps({"polarity": "negative", "turns": "hello"})], "line 1: 'turns' must be a list"),
    ([json.dumps({"polarity": "negative", "turns": ["ok", "  "]})], "line 1: turn 2 must be a non-empty string"),
    ([json.dumps(["a"])], "line 1: expected a JSON object"),
    ([json.dumps({"id": "x", "polarity": "mixed", "turns": ["a"]}), json.dumps({"id": "x", "polarity": "mixed", "turns": ["b"]})],
     "line 2: duplicate id 'x' (first on line 1)"),
])
def test_read_script_errors_name_the_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError) as err:
        C.read_script(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_script_is_a_one_line_cli_error(tmp_path, capsys):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"polarity": "positive", "turns": ["a"]}), "{oops"])
    code = main(["converse-eval", "--script", str(path), "--out", str(tmp_path / "o"), "--rest", "http://127.0.0.1:9/x"])
    err = capsys.readouterr().err
    assert code == 2 and "line 2: not valid JSON" in err and "Traceback" not in err


def test_exactly_one_input(tmp_path, capsys):
    code = main(["converse-eval", "--out", str(tmp_path / "o"), "--rest", "http://127.0.0.1:9/x"])
    assert code == 2 and "exactly one of --script FILE or --ed FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["converse-eval", "--script", "a", "--ed", "b", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    s = write_lines(tmp_path / "s.jsonl", [json.dumps({"polarity": "mixed", "turns": ["a"]})])
    code = main(["converse-eval", "--script", str(s), "--out", str(tmp_path / "o"), "--rest", "http://x", "--generator", "nec"])
    assert code == 2 and "engine mode only" in capsys.readouterr().err


def test_ed_replay_reads_speaker_turns(tmp_path):
    path = write_lines(tmp_path / "ed.jsonl", [
        json.dumps({"conv_id": "hit:1", "emotion": "Proud", "situation": "s", "turns": [
            {"role": "speaker", "text": "My son won the race."}, {"role": "listener", "text": "Wow!"},
            {"role": "speaker", "text": "He trained for months."}]}),
        json.dumps({"conv_id": "hit:2", "emotion": "lonely", "situation": "s", "turns": [
            {"role": "speaker", "text": "Nobody called me."}, {"role": "listener", "text": "Oh no."}]}),
        json.dumps({"conv_id": "hit:3", "emotion": "afraid", "situation": "s", "turns": [{"role": "speaker", "text": "Storm!"}]}),
    ])
    convs = C.read_ed_replay(path, limit=2)
    assert [(c.id, c.polarity, c.emotion, c.source, c.turns) for c in convs] == [
        ("hit:1", "positive", "proud", "ed", ["My son won the race.", "He trained for months."]),
        ("hit:2", "negative", "lonely", "ed", ["Nobody called me."]),
    ]
    assert all(c.judge_by_perception for c in convs)
    assert len(C.read_ed_replay(path)) == 3


# ----------------------------------------------------------------------------------- --set
def test_set_parsing_and_nesting():
    flat = C.parse_sets(["generation.generators.nec.rerank=false", "generation.generators.nec.alpha=0.5", "domain=x.yml"])
    assert flat == {"generation.generators.nec.rerank": False, "generation.generators.nec.alpha": 0.5, "domain": "x.yml"}
    assert C.nested_overrides(flat) == {"generation": {"generators": {"nec": {"rerank": False, "alpha": 0.5}}}, "domain": "x.yml"}
    for bad in (["noequals"], ["=1"], ["a..b=1"]):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            C.parse_sets(bad)
    with pytest.raises(ValueError, match="already set"):
        C.nested_overrides({"a": 1, "a.b": 2})


def test_engine_settings_fresh_database_and_overrides(tmp_path, domain_file):
    config = tmp_path / "engine.yml"
    config.write_text(f"domain: {domain_file}\nstate:\n  database_url: sqlite:///shared.db\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / C.STATE_DB).write_text("stale")
    settings, path = C.engine_settings(out, str(config), "prompted", {"generation.generators.nec.rerank": False})
    assert path == config
    assert settings.state.database_url == f"sqlite:///{(out / C.STATE_DB).resolve()}"
    assert not (out / C.STATE_DB).exists()          # a fresh file for every run
    assert settings.generation.generator == "prompted"
    assert settings.generation.section("nec")["rerank"] is False
    assert settings.generation.section("nec")["alpha"] == 0.7  # the rest of the section kept
    with pytest.raises(ValueError):                 # the schema still validates
        C.engine_settings(out, str(config), None, {"server.port": "not a port"})


# ----------------------------------------------------------------------------------- engine mode
class StandInEngine:
    """perceive/nlg like EmpathyEngine; records every call. Turn texts steer the reply."""

    history_turns = 8

    def __init__(self) -> None:
        self.perceive_calls: List[Dict[str, Any]] = []
        self.requests: List[Dict[str, Any]] = []

    def perceive(self, text, history=(), sender_id=None, message_id=None, turn_index=None):
        self.perceive_calls.append({"text": text, "history": [dict(h) for h in history], "sender_id": sender_id,
                                    "message_id": message_id, "turn_index": turn_index})
        emotion = "joyful" if "promot" in text else "sad"
        return make_perception(emotion, crisis="hurt myself" in text), 1.5

    def nlg(self, request):
        self.requests.append(json.loads(json.dumps(request)))
        user = request["tracker"]["events"][-1]
        empathy = user["parse_data"]["empathy"]
        if empathy["crisis"]:
            text, generator = "I'm really glad you told me. You deserve support right now.", "crisis-override"
        elif "hello" in user["text"]:
            text, generator = "That sounds hard. Tell me more?", "template-fallback"
        else:
            text, generator = f"About {user['text'].split()[-1]} — that sounds like a lot.", "stand-in"
        return {"text": text, "custom": {"generator": generator, "response": request["response"],
                                         "polarity": empathy["polarity"], "latency_ms": 1.0}}


class StandInScorer:
    def __init__(self):
        self.calls = []

    def predict(self, seeker_posts, responses):
        self.calls.append((list(seeker_posts), list(responses)))
        return {"ER": [("sound" in r) for r in responses], "IP": [False] * len(responses), "EX": [r.endswith("?") for r in responses]}


def test_engine_replay_sends_rasa_shaped_requests():
    engine = StandInEngine()
    convs = [C.ScriptConversation("a", "negative", ["I lost my wallet", "hello", "and my keys"]),
             C.ScriptConversation("b", "mixed", ["I got promoted"])]
    replayer = C.EngineReplayer(engine)
    trs = [replayer.replay(c) for c in convs]

    assert [c["turn_index"] for c in engine.perceive_calls] == [0, 1, 2, 0]
    assert engine.perceive_calls[0]["history"] == []
    assert engine.perceive_calls[2]["history"] == [
        {"role": "user", "text": "I lost my wallet"}, {"role": "bot", "text": trs[0]["turns"][0]["reply"]},
        {"role": "user", "text": "hello"}, {"role": "bot", "text": trs[0]["turns"][1]["reply"]}]
    senders = {c["sender_id"] for c in engine.perceive_calls[:3]}
    assert len(senders) == 1 and engine.perceive_calls[3]["sender_id"] not in senders

    ids = [c["message_id"] for c in engine.perceive_calls]
    assert len(set(ids)) == len(ids) and all(ids)
    for k, req in enumerate(engine.requests):
        assert set(req) == {"response", "id", "arguments", "tracker", "channel"}
        assert req["response"] == "utter_empathize" and req["arguments"] == {} and req["channel"] == {"name": "collector"}
        assert set(req["tracker"]) == {"sender_id", "slots", "events"} and req["tracker"]["slots"] == {}
        assert req["tracker"]["sender_id"] == engine.perceive_calls[k]["sender_id"]
        events = req["tracker"]["events"]
        assert [e["event"] for e in events] == ["user", "bot"] * (len(events) // 2) + ["user"]
        users = [e for e in events if e["event"] == "user"]
        for e in users:
            assert e["parse_data"]["empathy"]["available"] is True
            assert e["parse_data"]["empathy"]["emotion_probs"]  # Perception.to_dict()
        assert events[-1]["message_id"] == engine.perceive_calls[k]["message_id"]
        assert events[-1]["text"] == engine.perceive_calls[k]["text"]
    # the bot events carry exactly the replies of the earlier turns
    assert [e["text"] for e in engine.requests[2]["tracker"]["events"] if e["event"] == "bot"] == \
        [t["reply"] for t in trs[0]["turns"][:2]]

    t = trs[0]["turns"]
    assert [x["kind"] for x in t] == ["generated", "template", "generated"]
    assert t[1]["generator"] == "template-fallback" and t[0]["response"] == "utter_empathize"
    assert t[0]["perceived_polarity"] == "negative" and trs[1]["turns"][0]["perceived_polarity"] == "positive"
    assert t[0]["custom"]["generator"] == "stand-in" and t[0]["latency_ms"] >= 0


def test_benchmark_writes_outputs_and_report(tmp_path):
    engine = StandInEngine()
    convs = [C.ScriptConversation("a", "negative", ["I lost my wallet", "hello", "I want to hurt myself"]),
             C.ScriptConversation("b", "mixed", ["I got promoted", "I got promoted"])]
    scorer = StandInScorer()
    summary = C.benchmark(convs, C.EngineReplayer(engine), tmp_path / "run", cm_scorer=scorer, label="stand-in",
                          meta={"source": {"kind": "script", "path": "s.jsonl"}}, progress=False)
    assert scorer.calls[0][0] == ["I lost my wallet", "hello", "I want to hurt myself"]  # seeker post = that user turn
    o = summary["overall"]
    assert (o["conversations"], o["turns"], o["template_turns"], o["crisis_turns"]) == (2, 5, 1, 1)
    assert o["generated_share"] == 60.0 and o["er_rate"] == 80.0 and o["repeat_rate"] == 20.0

    lines = (tmp_path / "run" / C.CONVERSATIONS).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["id"] for r in recs] == ["a", "b"] and len(recs[0]["turns"]) == 3
    turn = recs[0]["turns"][0]
    for key in ("user", "reply", "generator", "response", "latency_ms", "metrics", "flags", "custom", "kind"):
        assert key in turn
    saved = json.loads((tmp_path / "run" / C.SUMMARY).read_text())
    assert saved["label"] == "stand-in" and saved["overall"] == o and saved["definitions"]["repeat_rate"]
    assert [c["id"] for c in saved["conversations"]] == ["a", "b"]

    report = (tmp_path / "run" / C.REPORT).read_text()
    assert report.startswith("# Conversation benchmark — stand-in")
    for section in ("## Overall", "## Per conversation", "## Template turns", "## Transcripts", "## Metric definitions"):
        assert section in report
    template_part = report.split("## Template turns")[1].split("## Transcripts")[0]
    assert "I want to hurt myself" in template_part and "crisis-override" in template_part
    assert "| a | 2 | template | template-fallback (utter_empathize) | hello |" in template_part
    assert "I lost my wallet" not in template_part
    assert "- **U1:** I lost my wallet" in report and "- **B3:** I'm really glad you told me." in report
    assert "repeat of B1" in report  # b: the same reply twice
    assert "so sad" in report        # the marker lists are printed


def test_engine_replay_through_the_real_engine_with_stand_in_models(tmp_path, domain_file, sqlite_url):
    from empathy_nlg.domain import DomainResponses
    from empathy_nlg.engine import EmpathyEngine
    from empathy_nlg.settings import load_settings
    from empathy_nlg.state.repository import StateRepository
    from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver

    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    repo = StateRepository(sqlite_url)
    repo.migrate()
    engine = EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo,
                           domain=DomainResponses.load(domain_file))
    conv = C.ScriptConversation("x", "negative", ["I failed my exam", "I got promoted though", "I want to kill myself"])
    tr = C.score_conversation(C.EngineReplayer(engine).replay(conv))
    assert [t["generator"] for t in tr["turns"]] == ["echo", "echo", "crisis-override"]
    assert [t["kind"] for t in tr["turns"]] == ["generated", "generated", "crisis"]
    assert tr["turns"][0]["reply"] == "I hear that you feel sad."
    assert tr["turns"][1]["perceived_emotion"] == "proud"
    stored = repo.conversation(tr["sender_id"])
    assert len(stored["turns"]) == 3                      # perceive + nlg store each turn once
    assert [len(t["replies"]) for t in stored["turns"]] == [1, 1, 1]


# ----------------------------------------------------------------------------------- REST mode
GREETING = "Hi there, it's good to hear from you."
CRISIS = "I'm really glad you told me. You deserve support right now."


class _Handler(BaseHTTPRequestHandler):
    received: List[Dict[str, Any]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        msg = body["message"]
        if msg == "boom":
            self.send_response(500)
            self.end_headers()
            return
        if msg == "slow":
            time.sleep(1.0)
        if msg.startswith("hi"):
            out = [{"recipient_id": body["sender"], "text": "  Hi there,  it's good to hear\nfrom you. "}]
        elif "hurt myself" in msg:
            out = [{"recipient_id": body["sender"], "text": CRISIS}, {"recipient_id": body["sender"], "text": "Please call 988 or your local emergency number."}]
        elif msg == "silence":
            out = []
        elif msg == "hello sam":
            out = [{"recipient_id": body["sender"], "text": "Hi sam!"}]
        else:
            out = [{"recipient_id": body["sender"], "text": f"It sounds like {msg.split()[-1]} matters to you."},
                   {"recipient_id": body["sender"], "text": "What happened next?",
                    "custom": {"generator": "nec", "polarity": "negative", "emotion": [{"label": "sad", "prob": 0.9}]}}]
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def rasa_server():
    _Handler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/rest/webhook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def rest_domain(tmp_path):
    path = tmp_path / "domain.yml"
    path.write_text(
        "responses:\n"
        f"  utter_greet:\n    - text: \"{GREETING}\"\n    - text: \"Hi {{name}}!\"\n"
        f"  utter_crisis_support:\n    - text: \"{CRISIS}\"\n"
        "  utter_crisis_resources:\n    - text: \"Please call 988 or your local emergency number.\"\n",
        encoding="utf-8",
    )
    return path


def test_template_matcher(rest_domain):
    m = C.TemplateMatcher.from_domain(rest_domain)
    assert m.classify([GREETING.replace(" ", "   ")]) == ("template", "utter_greet")
    assert m.classify(["Hi Ana!"]) == ("template", "utter_greet")              # {slot} placeholders
    assert m.classify([CRISIS + " extra"]) == ("crisis", "utter_crisis_support")
    assert m.classify([GREETING, "Please call 988 or your local emergency number."]) == ("template", "utter_greet+utter_crisis_resources")
    assert m.classify(["Hi there, it's good to hear from you. Tell me about the exam."]) == ("generated", None)
    assert m.classify(["", "  "]) == ("empty", None)


def test_rest_replay_against_a_local_server(rasa_server, rest_domain):
    convs = [C.ScriptConversation("r1", "negative", ["hi", "I lost my exam notes", "I want to hurt myself", "silence", "boom"]),
             C.ScriptConversation("r2", "positive", ["hello sam"])]
    replayer = C.RestReplayer(rasa_server, C.TemplateMatcher.from_domain(rest_domain), timeout=5)
    trs = [C.score_conversation(replayer.replay(c)) for c in convs]
    got = _Handler.received
    assert [b["message"] for b in got] == convs[0].turns + convs[1].turns
    assert len({b["sender"] for b in got[:5]}) == 1 and got[5]["sender"] != got[0]["sender"]
    t = trs[0]["turns"]
    assert [x["kind"] for x in t] == ["template", "generated", "crisis", "empty", "empty"]
    assert t[0]["response"] == "utter_greet"
    assert t[1]["reply"] == "It sounds like notes matters to you.\n\nWhat happened next?"
    assert t[1]["generator"] == "nec" and t[1]["perceived_polarity"] == "negative" and t[1]["perceived_emotion"] == "sad"
    assert t[1]["metrics"]["grounded"] and t[1]["metrics"]["shared_words"] == ["note"]
    assert t[4]["error"] == "HTTP 500" and "error" in t[4]["flags"]
    assert trs[0]["metrics"]["empty_replies"] == 2 and trs[0]["metrics"]["errors"] == 1
    assert trs[1]["turns"][0]["kind"] == "template"
    assert all(x["latency_ms"] > 0 for x in t)


def test_rest_timeout_is_an_error_turn_and_refused_connection_stops(rasa_server, rest_domain):
    matcher = C.TemplateMatcher.from_domain(rest_domain)
    tr = C.RestReplayer(rasa_server, matcher, timeout=0.2).replay(C.ScriptConversation("s", "mixed", ["slow"]))
    assert tr["turns"][0]["kind"] == "empty" and "timed out" in tr["turns"][0]["error"]
    dead = C.RestReplayer("http://127.0.0.1:9/webhooks/rest/webhook", matcher, timeout=2)
    with pytest.raises(C.ConverseError, match="cannot reach"):
        dead.replay(C.ScriptConversation("s", "mixed", ["hi"]))


def test_cli_rest_mode_end_to_end(tmp_path, rasa_server, rest_domain, capsys):
    script = write_lines(tmp_path / "s.jsonl", [
        json.dumps({"id": "good-news", "polarity": "positive", "turns": ["hi", "I passed my driving test"]}),
        json.dumps({"id": "bad-news", "polarity": "negative", "turns": ["my cat is sick", "the vet is worried"]}),
    ])
    out = tmp_path / "out"
    code = main(["converse-eval", "--script", str(script), "--rest", rasa_server, "--domain", str(rest_domain),
                 "--out", str(out), "--no-cm-scorer", "--no-progress", "--label", "local"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "conversation benchmark 'local' (rest mode): 2 conversations, 4 turns" in captured.out
    assert "repeat_rate" in captured.out and str(out / C.REPORT) in captured.out
    summary = json.loads((out / C.SUMMARY).read_text())
    assert summary["mode"] == "rest" and summary["rest"]["url"] == rasa_server
    assert summary["overall"]["template_turns"] == 1 and summary["overall"]["er_rate"] is None
    assert summary["source"] == {"kind": "script", "path": str(script), "limit": None, "conversations": 2, "turns": 4}
    assert "| good-news | 1 | template |" in (out / C.REPORT).read_text()


def test_cli_unreachable_rest_endpoint_is_a_clear_error(tmp_path, rest_domain, capsys):
    script = write_lines(tmp_path / "s.jsonl", [json.dumps({"polarity": "mixed", "turns": ["hi"]})])
    code = main(["converse-eval", "--script", str(script), "--rest", "http://127.0.0.1:9/webhooks/rest/webhook",
                 "--domain", str(rest_domain), "--out", str(tmp_path / "o"), "--no-cm-scorer", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach http://127.0.0.1:9/webhooks/rest/webhook" in err and "Traceback" not in err


def test_cli_engine_mode_builds_settings_like_the_server(tmp_path, domain_file, capsys, monkeypatch):
    """The command's engine path end to end; only ``EmpathyEngine.load`` (the model loading) is replaced."""
    from empathy_nlg.domain import DomainResponses
    from empathy_nlg.engine import EmpathyEngine
    from empathy_nlg.state.repository import StateRepository
    from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver

    loaded = {}

    def fake_load(cls, settings):
        loaded["settings"] = settings
        repo = StateRepository(settings["state"]["database_url"])
        repo.migrate()
        return cls(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo,
                   domain=DomainResponses.load(settings["domain"]))

    monkeypatch.setattr(EmpathyEngine, "load", classmethod(fake_load))
    config = tmp_path / "engine.yml"
    config.write_text(f"domain: {domain_file}\n", encoding="utf-8")
    script = write_lines(tmp_path / "s.jsonl", [json.dumps({"id": "m", "polarity": "mixed", "turns": ["I got promoted", "I failed my exam"]})])
    out = tmp_path / "out"
    code = main(["converse-eval", "--script", str(script), "--config", str(config), "--generator", "prompted",
                 "--set", "generation.generators.nec.rerank=false", "--out", str(out), "--no-cm-scorer", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    s = loaded["settings"]
    assert s["state"]["database_url"] == f"sqlite:///{(out / C.STATE_DB).resolve()}"
    assert s["generation"]["generator"] == "prompted" and s["generation"]["generators"]["nec"]["rerank"] is False
    summary = json.loads((out / C.SUMMARY).read_text())
    assert summary["label"] == "echo" and summary["engine"]["set"] == {"generation.generators.nec.rerank": False}
    assert summary["overall"]["polarity_judged"] == 2 and summary["overall"]["generated_share"] == 100.0
    assert (out / C.STATE_DB).is_file()
    assert "conversation benchmark 'echo' (engine mode): 1 conversation, 2 turns" in captured.out


def test_stage_timing_summarises_the_engines_custom_timing_over_generated_turns():
    tr = transcript(["a", "b", "c"], kinds=["generated", "generated", "crisis"])
    for turn, ms in zip(tr["turns"], (100.0, 300.0, 5.0)):
        turn["custom"] = {"timing": {"generator": ms, "generator.decode": ms / 2, "sql": 2.0}}
        turn["perceive_ms"] = 20.0
    timing = C.stage_timing([tr])
    assert set(timing) == {"perceive", "generator", "generator.decode", "sql"}
    assert timing["generator"] == {"p50": 200.0, "p95": 290.0, "mean": 200.0, "n": 2}  # the crisis turn is left out
    assert timing["perceive"]["n"] == 2
    assert C.stage_timing([transcript(["a"])]) == {}  # no custom.timing (REST without forwarding): nothing


def test_cli_rest_concurrency_replays_conversations_at_once_in_script_order(tmp_path, rasa_server, rest_domain, capsys):
    """--concurrency N: N conversations talk at the same time (the server sees them interleaved:
    four 1-second turns take ≈ 1 s, not 4), each conversation's turns stay in order, and the
    transcripts keep the script's order. Engine mode refuses it."""
    lines = [json.dumps({"id": f"c{i}", "polarity": "negative", "turns": ["slow", f"my plant {i} died"]}) for i in range(4)]
    script = write_lines(tmp_path / "s.jsonl", lines)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = main(["converse-eval", "--script", str(script), "--rest", rasa_server, "--domain", str(rest_domain),
                 "--out", str(out), "--no-cm-scorer", "--no-progress", "--concurrency", "4"])
    elapsed = time.perf_counter() - t0
    assert code == 0, capsys.readouterr().err
    assert "4 at once" in capsys.readouterr().out
    assert elapsed < 3.5  # the four 1-second turns overlapped
    trs = [json.loads(line) for line in (out / C.CONVERSATIONS).read_text().splitlines()]
    assert [t["id"] for t in trs] == ["c0", "c1", "c2", "c3"]
    for i, tr in enumerate(trs):
        assert [t["user"] for t in tr["turns"]] == ["slow", f"my plant {i} died"]
    by_sender: Dict[str, List[str]] = {}
    for body in _Handler.received:
        by_sender.setdefault(body["sender"], []).append(body["message"])
    assert len(by_sender) == 4 and all(msgs[0] == "slow" for msgs in by_sender.values())
    assert json.loads((out / C.SUMMARY).read_text())["concurrency"] == 4
    assert main(["converse-eval", "--script", str(script), "--out", str(out), "--concurrency", "2"]) != 0


# ----------------------------------------------------------------------------------- persona probes
PERSONA_LINE = {"id": "p", "polarity": "negative",
                "turns": ["I have a beagle called Biscuit.", "work was long", "he's at the vet tonight", "the bus was late"],
                "persona": {"recall": ["Biscuit", "Beagles", "beagle"], "restart_before": [3], "relevant": [3], "irrelevant": [4]}}


def test_read_script_persona_probes(tmp_path):
    conv = C.read_script(write_lines(tmp_path / "p.jsonl", [json.dumps(PERSONA_LINE)]))[0]
    assert conv.persona.recall == ["biscuit", "beagle"]  # normalised like the grounding words
    assert conv.persona.relevant == [3] and conv.persona.irrelevant == [4]
    assert [conv.restarts_before(i) for i in (1, 2, 3, 4)] == [False, False, True, False]
    assert not C.read_script(write_lines(tmp_path / "q.jsonl", [json.dumps({"polarity": "mixed", "turns": ["a"]})]))[0].restarts_before(1)


@pytest.mark.parametrize("persona, message", [
    ({"recall": []}, "'persona.recall' must be a non-empty list"),
    ({"recall": ["rex"], "relevant": [9]}, "'persona.relevant' names turns [9] outside 1..4"),
    ({"recall": ["rex"], "relevant": [2], "restart_before": [1]}, "'persona.restart_before' names turns [1] outside 2..4"),
    ({"recall": ["rex"], "relevant": [2], "irrelevant": [2]}, "'persona' turns [2] are both relevant and irrelevant"),
    ({"recall": ["rex"]}, "'persona' names no relevant or irrelevant turn"),
    ({"recall": ["rex"], "relevant": ["3"]}, "'persona.relevant' must be a list of turn numbers"),
    ({"recall": ["rex"], "relevant": [2], "facts": []}, "'persona' has unknown keys ['facts']"),
    ({"recall": ["dog", "little"], "relevant": [2]}, "'persona.recall' words ['little'] are stopwords"),
    (["x"], "'persona' must be an object"),
])
def test_read_script_persona_errors_name_the_line(tmp_path, persona, message):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({**PERSONA_LINE, "persona": persona})])
    with pytest.raises(ValueError) as err:
        C.read_script(path)
    assert "line 1: " + message in str(err.value)


def test_persona_metrics_count_words_the_user_did_not_say_and_what_reached_the_generator():
    tr = transcript(["Tell me more.", "Long days are hard.", "I hope the vet is kind to Biscuit.", "Oh no, how is Biscuit?"],
                    users=PERSONA_LINE["turns"])
    tr["persona"] = {"recall": ["biscuit", "dog"], "restart_before": [3], "relevant": [3], "irrelevant": [4]}
    tr["turns"][2]["custom"] = {"generation": {"persona_sentences": ["I have a beagle called Biscuit"]}}
    tr["turns"][3]["custom"] = {"generation": {"persona_sentences": []}}
    m = C.score_conversation(tr)["metrics"]
    assert m["persona_relevant_probes"] == 1 and m["persona_recall_rate"] == 100.0
    assert m["persona_irrelevant_probes"] == 1 and m["persona_intrusion_rate"] == 100.0
    assert m["persona_reached_rate"] == 50.0
    assert tr["turns"][2]["metrics"]["persona_used"] == ["biscuit"]
    assert any(f.startswith("persona probe (irrelevant): uses biscuit; the generator was not given it") for f in tr["turns"][3]["flags"])
    # a recall word the user says in that very turn is not a memory
    tr2 = transcript(["Poor Biscuit.", "ok"], users=["Biscuit is at the vet", "fine"])
    tr2["persona"] = {"recall": ["biscuit"], "restart_before": [], "relevant": [1], "irrelevant": [2]}
    m2 = C.score_conversation(tr2)["metrics"]
    assert m2["persona_recall_rate"] == 0.0 and m2["persona_intrusion_rate"] == 0.0 and m2["persona_reached_rate"] is None
    assert "persona_recall_rate" not in scored(["a", "b"])["metrics"]  # ordinary scripts report no persona metrics


def test_engine_replay_restarts_the_session_with_the_same_sender():
    engine = StandInEngine()
    conv = C.ScriptConversation("p", "negative", PERSONA_LINE["turns"], persona=C.parse_persona_probes(PERSONA_LINE["persona"], 4))
    tr = C.EngineReplayer(engine).replay(conv)
    assert len({c["sender_id"] for c in engine.perceive_calls}) == 1
    assert engine.perceive_calls[2]["history"] == [] and len(engine.perceive_calls[3]["history"]) == 2
    events = engine.requests[2]["tracker"]["events"]
    assert [e["event"] for e in events] == ["action", "session_started", "user"]
    assert [t.get("restart", False) for t in tr["turns"]] == [False, False, True, False]


def test_rest_replay_restarts_with_session_start(rasa_server, rest_domain, tmp_path):
    conv = C.ScriptConversation("p", "negative", ["my dog Rex", "long day", "Rex is ill"],
                                persona=C.parse_persona_probes({"recall": ["rex"], "restart_before": [3], "relevant": [3]}, 3))
    summary = C.benchmark([conv], C.RestReplayer(rasa_server, C.TemplateMatcher.from_domain(rest_domain), timeout=5),
                          tmp_path / "run", progress=False)
    assert [b["message"] for b in _Handler.received] == ["my dog Rex", "long day", "/session_start", "Rex is ill"]
    assert len({b["sender"] for b in _Handler.received}) == 1
    assert summary["overall"]["persona_relevant_probes"] == 1
    report = (tmp_path / "run" / C.REPORT).read_text()
    assert "## Persona probes" in report and "a new session for the same sender" in report
