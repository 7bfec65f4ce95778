"""Emotion-cause gated attention (Gao et al. 2021) on a tiny random Llama with the real (frozen)
MiniLM encoder and perception's committed cause span head."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator  # noqa: E402
from empathy_nlg.generators import cause_gated as G  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.perception.types import CauseUtterance  # noqa: E402
from empathy_nlg.taxonomy import EMOTIONS  # noqa: E402
from tests.empathy_nlg.conftest import make_perception  # noqa: E402
from tests.empathy_nlg.tiny_models import three_layer_llama  # noqa: E402

# words of the tiny tokenizer's vocabulary, so that the prompt's tokens are words of the turns
CONTEXT = [["speaker", "my day was bad today"], ["listener", "oh no , how do you feel ?"], ["speaker", "i am sad"]]
#: silver cause words: "day" and "bad" of the first turn, "sad" of the last one
WORDS = [[0, 3, 6, 0.9, 1], [0, 11, 14, 0.8, 1], [0, 0, 2, 0.1, 0], [2, 5, 8, 0.7, 1]]


def feature(**over):
    f = {"context": CONTEXT, "reference": "sorry to hear that .", "emotion": "sad", "cause_indices": [0, 2],
         "cm": None, "cause_words": WORDS}
    f.update(over)
    return f


def contexts():
    return [[Utterance(r, t) for r, t in CONTEXT]]


def words():
    return [[G.CauseWord(*w[:3], w[3], bool(w[4])) for w in WORDS]]


def make_model(path, encoder, **settings):
    bb = C.load_base(str(path), device="cpu", dtype="float32")
    settings.setdefault("reasoner_dim", 32)
    settings.setdefault("context_turns", 3)
    settings.setdefault("max_prompt_tokens", 64)
    torch.manual_seed(0)
    return G.CauseGatedModel(G.CauseGatedSettings.from_mapping(settings), bb, encoder, lora={"r": 2, "alpha": 4, "dropout": 0.0})


def test_registered_variant_names_and_checked_settings():
    from empathy_nlg.training.generator import RECIPES

    assert "cause_gated" in available_generators() and "cause_gated" in RECIPES.names()
    S = G.CauseGatedSettings.from_mapping
    assert S({}).variant == "cause_gated" and S({}).strategy == "soft"
    assert S({"gating": "hard"}).variant == "cause_gated-hard"
    assert S({"gate": False}).variant == "cause_gated-no-gate" and S({"gate": False}).strategy == "none"
    assert S({"gating": "none"}).variant == "cause_gated-no-gate"
    assert S({"gating": "hard", "emotion": False}).variant == "cause_gated-hard-no-emotion"
    assert G.RECIPE.ABLATIONS == ("gate", "emotion")
    with pytest.raises(ValueError, match="gating must be one of soft, hard, none"):
        S({"gating": "medium"})
    with pytest.raises(ValueError, match="soft_floor"):
        S({"soft_floor": 0})
    with pytest.raises(ValueError, match="unknown cause_gated settings"):
        S({"bogus": 1})


def test_pieces_become_whole_words_and_the_prompt_map_keeps_the_backbone_ids(tiny_llama):
    from transformers import AutoTokenizer

    assert G.words_from_pieces("my dogs died !", [(3, 6), (6, 7), (13, 14)], [0.2, 0.9, 0.99]) == [(3, 7, 0.9)]
    assert G.utterance_words("it's ok_now") == [(0, 2), (3, 4), (5, 7), (8, 11)]
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ctx = contexts()[0]
    messages = C.prompt_messages(ctx, 3)
    m = G.map_prompt(tok, messages, 0, 64, words()[0])
    assert m.ids == C.encode_prompt(tok, messages, 64)  # exactly the prompt the other papers see
    by_text = {(t, turn): (p, c) for t, turn, p, c in zip(m.texts, m.turns, m.probs, m.causes) if turn is not None}
    assert by_text[("day", 0)] == (0.9, True) and by_text[("bad", 0)] == (0.8, True) and by_text[("sad", 2)] == (0.7, True)
    assert by_text[("today", 0)] == (0.0, False) and by_text[("how", 1)] == (0.0, False)
    assert by_text[("my", 0)] == (0.1, False)
    template = [t for t, turn in zip(m.texts, m.turns) if turn is None]
    assert "<|im_start|>" in template and "assistant" in template and "Reply" in template  # system prompt, markers
    assert m.turns[-1] is None  # the generation prompt predicts the first reply token: never gated
    cut = G.map_prompt(tok, messages, 0, 10, words()[0])  # the oldest tokens are cut, as encode_prompt does
    assert cut.ids == C.encode_prompt(tok, messages, 10) and cut.turns == m.turns[-10:]


def test_gates_per_strategy_and_their_bias():
    m = G.PromptGates(ids=[1, 2, 3, 4, 5], turns=[None, 0, 0, 2, None], probs=[0.0, 0.9, 0.01, 0.0, 0.0],
                      causes=[False, True, False, False, False], texts=list("abcde"))
    assert m.gates("soft", 0.05, keep_turn=2) == [1.0, 0.9, 0.05, 0.05, 1.0]
    assert m.gates("hard", 0.05, keep_turn=2) == [1.0, 1.0, 0.0, 1.0, 1.0]  # the last user turn stays
    assert m.gates("none", 0.05, keep_turn=2) == [1.0] * 5
    bias = G.gate_bias(m.gates("hard", 0.05, 2), n_prefix=1)
    assert bias.tolist()[:3] == [0.0, 0.0, 0.0] and bias[3] == float("-inf")
    assert torch.allclose(G.gate_bias([0.5], 0), torch.tensor([math.log(0.5)]))


def _attention(model, strategy):
    """The gated layer's attention probabilities of the reply's queries over the keys, the keys'
    gates and the reply logits, for one example (eager kernel, right padding, no padding)."""
    lm = model.lm
    lm.use_attention("eager")
    ctx = contexts()
    prompts, bias, maps, gates = model.gated_prompts(ctx, words(), strategy)
    prefixes = model.prefixes([EMOTIONS.index("sad")])
    reply = C.encode_reply(lm.tokenizer, "sorry to hear that .", 16, False)
    seen = {}
    layers = lm.decoder_layers()
    handles = [layer.self_attn.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, out[1].detach()))
               for i, layer in enumerate(layers)]
    with torch.no_grad():
        logits, _, _ = lm.forward(prefixes, prompts, [reply], attention_bias=bias)
    for h in handles:
        h.remove()
    n = 1 + len(prompts[0])  # [prefix ; prompt]
    key_gates = torch.tensor([1.0] + gates[0])
    return {i: a[0, :, n - 1 :, :n] for i, a in seen.items()}, key_gates, maps[0], logits


def test_soft_gating_moves_attention_to_cause_words_and_hard_gating_blocks_the_rest(tiny_llama, tmp_path, encoder):
    """The bias really changes attention in the gated layers only: with soft gates the reply's
    queries put more of their attention on the cause words than without, with hard gates exactly
    none outside the cause words, the last user turn and the template; the logits differ."""
    three_layer_llama(tiny_llama, tmp_path / "three")
    model = make_model(tmp_path / "three", encoder, gate_top_layers=2, prefix_top_layers=2)
    model.train(False)
    assert model.lm.bias_layers == [1, 2]
    none, gates_none, m, logits_none = _attention(model, "none")
    soft, gates_soft, _, logits_soft = _attention(model, "soft")
    hard, gates_hard, _, logits_hard = _attention(model, "hard")
    cause = torch.tensor([False] + [p >= 0.5 for p in m.probs])  # "day", "bad", "sad"
    assert int(cause.sum()) == 3
    # layer 0 is not gated: the same attention whatever the strategy
    assert torch.allclose(none[0], soft[0]) and torch.allclose(none[0], hard[0])
    for layer in (1, 2):
        mass_none = none[layer][..., cause].sum(-1)
        mass_soft = soft[layer][..., cause].sum(-1)
        assert bool((mass_soft > mass_none).all()), layer
        blocked = gates_hard == 0.0
        assert bool(blocked.any()) and bool((hard[layer][..., blocked] == 0).all())
        assert bool((none[layer][..., blocked] > 0).all())
        # what stays open: the cause words, every token of the user's last turn, the template, the prefix
        assert bool((gates_hard[cause] == 1).all())
        last_turn = torch.tensor([False] + [t == 2 for t in m.turns])
        assert bool((gates_hard[last_turn] == 1).all()) and gates_hard[0] == 1
    assert not torch.allclose(logits_none, logits_soft) and not torch.allclose(logits_soft, logits_hard)


def test_beam_search_applies_the_bias_at_every_step_over_the_shared_prefill(tiny_llama, tmp_path, encoder):
    """With beams (the prompt run once, its cache repeated), the first decoding step's logits are
    those of a teacher-forced pass with the same bias, and the whole decoding is what
    transformers gives without the shared prefill."""
    three_layer_llama(tiny_llama, tmp_path / "three")
    model = make_model(tmp_path / "three", encoder, gate_top_layers=2, prefix_top_layers=2)
    model.train(False)
    lm = model.lm
    ctx = contexts() + [[Utterance("speaker", "good day !")]]
    ws = words() + [[G.CauseWord(0, 0, 4, 0.9, True)]]
    prompts, bias, _, _ = model.gated_prompts(ctx, ws, "hard")
    prefixes = model.prefixes([EMOTIONS.index("sad"), EMOTIONS.index("joyful")])
    head = lm.model.get_output_embeddings()
    first = []
    handle = head.register_forward_hook(lambda mod, args, out: first.append(out.detach()) if not first else None)
    runs = {}
    for shared in (True, False):
        lm.shared_prefill = shared
        first.clear()
        runs[shared] = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=3, attention_bias=bias)
        runs[shared] = (runs[shared][0].tolist(), runs[shared][1], first[0][:, -1])
    handle.remove()
    plain = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=3)
    assert runs[True][0] == runs[False][0] and torch.allclose(runs[True][1], runs[False][1], atol=1e-4)
    assert runs[True][1].tolist() != plain[1].tolist()  # the bias reaches the beams' scores
    reply = [[lm.tokenizer.eos_token_id]] * 2
    with torch.no_grad():
        tf, _, _ = lm.forward(prefixes, prompts, reply, attention_bias=bias)
        tf_plain, _, _ = lm.forward(prefixes, prompts, reply)
    step = runs[True][2]  # [2 examples × 3 beams, V]: the beams of an example start alike
    for i in range(2):
        assert torch.allclose(step[3 * i], tf[i, 0], atol=1e-5)
    assert (step[0] - tf_plain[0, 0]).abs().max() > 1e-3
    # the second dialogue is the user's last turn alone: hard gating keeps all of it, nothing changes
    assert torch.allclose(step[3], tf_plain[1, 0], atol=1e-5)


def test_loss_has_gen_emotion_and_cause_terms_and_trains_every_part(tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.train(True)
    loss, parts = model.loss([feature(), feature(emotion="joyful", cause_words=None)])  # the 2nd: Gao's labels
    assert set(parts) == {"gen", "emotion", "cause"} and all(v == v and v > 0 for v in parts.values())
    loss.backward()
    heads = dict(model.heads.named_parameters())
    for name in ("emotion_emb.weight", "prefix_norm.weight", "inp.weight", "cls", "role.weight", "emotion_out.weight",
                 "cause_out.weight", "encoder.self_attn.in_proj_weight"):
        assert heads[name].grad is not None and heads[name].grad.abs().sum() > 0, name
    lora = [p for n, p in model.peft.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)

    ablated = make_model(tiny_llama, encoder, gate=False, emotion=False)
    ablated.train(True)
    loss, parts = ablated.loss([feature()])
    assert set(parts) == {"gen", "emotion"}  # w/o ec: no cause task; w/o el: no emotion prefix
    loss.backward()
    assert ablated.heads.emotion_emb.weight.grad is None
    prompts, bias, _, _ = ablated.gated_prompts(contexts(), words(), ablated.settings.strategy)
    assert bias is None and ablated.prefixes([3])[0].shape == (0, ablated.lm.hidden_size)


def test_reasoner_scores_and_cause_targets(tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    ctx = contexts()
    reasoned = model.reason(ctx, model.windows(ctx))
    target = model.cause_targets(reasoned, words())
    spans = {pos: float(t) for pos, t in zip(reasoned.positions[0], target[0])}
    assert spans[(0, (3, 6))] == pytest.approx(0.9) and spans[(2, (5, 8))] == pytest.approx(0.7)
    assert spans[(1, (0, 2))] == 0.0  # "oh": no cause word
    scores = model.reasoner_scores([feature(), feature(emotion="joyful")], ks=(1, 32))
    assert scores["emotion_acc"]["top32"] == 100.0 and 0.0 <= scores["cause_f1"] <= 100.0
    own = model.reasoner_words(ctx, reasoned, 0)
    assert own and any(w.cause for w in own) and {w.turn for w in own} == {0, 1, 2}


def test_the_span_head_labels_the_words_of_the_cause_utterances(encoder):
    scorer = G.SpanScorer.load(encoder=encoder)
    feats = [feature(cause_indices=[0], cause_words=None), feature(cause_indices=[], cause_words=None)]
    G.annotate_cause_words(feats, encoder, scorer, turns=3)
    got = feats[0]["cause_words"]
    assert got and {w[0] for w in got} == {0} and all(0.0 <= w[3] <= 1.0 for w in got) and any(w[4] for w in got)
    assert {CONTEXT[0][1][w[1]:w[2]] for w in got} <= {"my", "day", "was", "bad", "today"}
    assert feats[1]["cause_words"] == []


@pytest.fixture()
def saved(tmp_path, tiny_llama, encoder):
    model = make_model(tiny_llama, encoder)
    model.save(tmp_path / "m", extra={"trained_at": "test"}, half=True)
    return {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu", "num_beams": 2,
            "decoding": {"max_new_tokens": 5}}


def test_generator_serves_the_gated_tokens_and_the_emotion_in_details(saved):
    gen = create_generator("cause_gated", saved)
    assert gen.version == "cause_gated/test" and gen.gating == "soft" and gen.scorer is not None
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    perceived = make_perception("sad", causes=[CauseUtterance(index=0, text=CONTEXT[0][1], score=0.9, spans=[[3, 14]])])
    with_p, without_p = gen.generate([GenerationRequest(context=ctx, perception=perceived), GenerationRequest(context=ctx)])
    d = with_p.details
    assert d["emotion"] == "sad" and d["emotion_source"] == "perception" and d["cause_source"] == "perception"
    assert d["gating"] == "soft" and d["gate_layers"] == "all" and d["variant"] == "cause_gated"
    assert {w["turn"] for w in d["cause_words"]} == {0} and {w["word"] for w in d["cause_words"]} >= {"day", "bad"}
    tokens = d["gated_tokens"]
    assert tokens and {t["turn"] for t in tokens} == {0, 1, 2}
    assert all(0.05 <= t["gate"] <= 1.0 for t in tokens)
    assert max(t["gate"] for t in tokens if t["turn"] == 0) > 0.05 and all(t["gate"] == 0.05 for t in tokens if t["turn"] == 2)
    assert without_p.details["emotion_source"] == "reasoner" and without_p.details["cause_source"] == "reasoner"
    assert without_p.details["emotion"] in EMOTIONS and without_p.details["gated_tokens"]
    assert 1 <= len(with_p.candidates) <= 2

    hard = create_generator("cause_gated", {**saved, "gating": "hard"})
    assert hard.version == "cause_gated/test+hard"
    h = hard.generate([GenerationRequest(context=ctx, perception=perceived)])[0].details["gated_tokens"]
    assert {t["token"] for t in h if t["gate"] == 1.0} >= {"day", "bad", "i", "am", "sad"}  # spans + the last turn
    assert {t["token"] for t in h if t["gate"] == 0.0} >= {"today", "oh", "how"}
    none = create_generator("cause_gated", {**saved, "gating": "none"})
    assert none.generate([GenerationRequest(context=ctx, perception=perceived)])[0].details["gated_tokens"] == []
    # the strategies score the same reference differently (the bias reaches the reply's logits)
    ref = ["sorry to hear that ."]
    nll = {g.gating: g.score([GenerationRequest(context=ctx, perception=perceived)], ref)["nll"] for g in (gen, hard, none)}
    assert len({round(v, 6) for v in nll.values()}) == 3
    with pytest.raises(ValueError, match="gating must be one of"):
        create_generator("cause_gated", {**saved, "gating": "medium"})


def test_without_the_span_head_the_perceived_spans_are_the_gates(saved):
    gen = create_generator("cause_gated", saved)
    gen.scorer = None
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    perceived = make_perception("sad", causes=[CauseUtterance(index=0, text=CONTEXT[0][1], score=0.9, spans=[[3, 6]])])
    d = gen.inputs([GenerationRequest(context=ctx, perception=perceived)]).details[0]
    assert d["cause_source"] == "perception-spans"
    assert {w["word"]: w["p"] for w in d["cause_words"]} == {"my": 0.0, "day": 1.0, "was": 0.0, "bad": 0.0, "today": 0.0}


def test_missing_or_foreign_model_folder_is_a_clear_error(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError, match="empathy-nlg train"):
        create_generator("cause_gated", {"model_dir": str(tmp_path), "backbone_path": str(tiny_llama), "device": "cpu"})
    (tmp_path / "generator.json").write_text('{"generator": "mime"}')
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match="not a cause_gated"):
        G.RECIPE.load_model(tmp_path, None, None, trainable=False)


def test_a_seq2seq_backbone_or_too_many_gated_layers_is_refused(tiny_bart, tiny_llama, encoder):
    with pytest.raises(ValueError, match="decoder-only"):
        make_model(tiny_bart, encoder)
    with pytest.raises(ValueError, match="gate_top_layers must be between 1 and 1"):
        make_model(tiny_llama, encoder, gate_top_layers=2)


class _OnePerceiver:
    """Perception says "sad" with the last turn as its cause utterance (never a gold one below)."""

    def perceive_batch(self, dialogues):
        return [make_perception("sad", causes=[CauseUtterance(index=len(d) - 1, text=d[-1].text, score=0.9, spans=[[5, 8]])])
                for d in dialogues]


class _Recording:
    """Wraps a generator and keeps the requests the harness gives it."""

    def __init__(self, gen):
        self.gen, self.requests = gen, []
        self.needs_perception, self.version = True, gen.version

    def generate(self, requests):
        self.requests.extend(requests)
        return self.gen.generate(requests)

    def score(self, requests, references):
        return self.gen.score(requests, references)


def test_gold_causes_from_the_harness_gate_exactly_the_gold_utterances(saved, tmp_path):
    """`causes: gold`: the request carries the gold cause utterances (a speaker and a listener turn
    here), not perception's (the last turn); the gates open on words of exactly those utterances,
    the words' probabilities and hard labels being perception's span head's."""
    from empathy_nlg.datasets import GenerationExample
    from empathy_nlg.evaluation import harness

    ctx = [Utterance(r, t) for r, t in CONTEXT]
    ex = [GenerationExample(conv_id="c", turn_index=3, context=ctx, reference="sorry to hear that .", emotion="sad",
                            cause_indices=[0, 1])]
    floor = 0.05
    details = {}
    for gating in ("soft", "hard"):
        gens = {f"{gating}-gold": _Recording(create_generator("cause_gated", {**saved, "gating": gating})),
                f"{gating}-perceived": _Recording(create_generator("cause_gated", {**saved, "gating": gating}))}
        runs = harness.evaluate(ex, gens, tmp_path / gating, perceiver=_OnePerceiver(), progress=False, write_report=False,
                                causes={f"{gating}-gold": "gold"})
        req = gens[f"{gating}-gold"].requests[0]
        assert [c.index for c in req.perception.causes] == [0, 1] and all(c.spans == [] for c in req.perception.causes)
        assert [c.index for c in gens[f"{gating}-perceived"].requests[0].perception.causes] == [2]
        for label in gens:
            details[label] = runs[label].records[0]["details"]  # = the reply's custom.generation
    # soft: the cause words lie in the gold utterances; every token outside them keeps the floor
    d = details["soft-gold"]
    assert d["cause_source"] == "gold" and d["cause_utterances"] == [0, 1]
    assert {w["turn"] for w in d["cause_words"]} == {0, 1}
    opened = {t["turn"] for t in d["gated_tokens"] if t["gate"] > floor}
    assert opened and opened <= {0, 1} and all(t["gate"] == floor for t in d["gated_tokens"] if t["turn"] == 2)
    p = details["soft-perceived"]
    assert p["cause_source"] == "perception" and p["cause_utterances"] == [2] and {w["turn"] for w in p["cause_words"]} == {2}
    assert all(t["gate"] == floor for t in p["gated_tokens"] if t["turn"] in (0, 1))
    # the words inside a gold utterance: the span head's probabilities and its own hard labels
    gen = create_generator("cause_gated", saved)
    window = gen.model.windows([ctx])[0]
    head = {(0, s, e): (round(pw, 4), k) for s, e, pw, k in
            gen.scorer.words(window.utterances[0], ctx[0].text, window.target.numpy(), "sad")}
    assert {(w["turn"], w["start"], w["end"]): (w["p"], w["cause"]) for w in d["cause_words"] if w["turn"] == 0} == head
    kept = {ctx[0].text[s:e] for (_, s, e), (_, k) in head.items() if k}
    # hard: open are the head's words of the gold utterances and the user's last turn; nothing else
    h = details["hard-gold"]
    assert h["cause_utterances"] == [0, 1]
    open0 = {t["token"] for t in h["gated_tokens"] if t["turn"] == 0 and t["gate"] == 1.0}
    assert open0 and open0 <= kept
    assert all(t["gate"] == 1.0 for t in h["gated_tokens"] if t["turn"] == 2)  # the last user turn stays
    hard_words1 = {w["word"] for w in h["cause_words"] if w["turn"] == 1 and w["cause"]}
    assert hard_words1 and {t["token"] for t in h["gated_tokens"] if t["turn"] == 1 and t["gate"] == 1.0} <= hard_words1
    hp = details["hard-perceived"]
    assert all(t["gate"] == 0.0 for t in hp["gated_tokens"] if t["turn"] in (0, 1))  # perception's cause is turn 2 only


def test_a_gold_cause_without_the_span_head_gates_every_word_of_its_utterance(saved):
    gen = create_generator("cause_gated", saved)
    gen.scorer = None
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    perceived = make_perception("sad", causes=[CauseUtterance(index=0, text=CONTEXT[0][1], score=1.0, spans=[])])
    perceived.models["cause"] = "gold"
    d = gen.inputs([GenerationRequest(context=ctx, perception=perceived)]).details[0]
    assert d["cause_source"] == "gold-utterances" and d["cause_utterances"] == [0]
    assert {w["word"]: w["p"] for w in d["cause_words"]} == {"my": 1.0, "day": 1.0, "was": 1.0, "bad": 1.0, "today": 1.0}


class _BestWordOnly:
    """The real span head's probabilities, but only its best word kept (a stricter threshold)."""

    def __init__(self, scorer):
        self.scorer = scorer

    def words(self, *args):
        words = self.scorer.words(*args)
        best = max(range(len(words)), key=lambda k: words[k][2])
        return [(s, e, p, k == best) for k, (s, e, p, _) in enumerate(words)]


def test_hard_gates_in_a_gold_utterance_follow_the_span_heads_labels_not_every_word(saved):
    gen = create_generator("cause_gated", {**saved, "gating": "hard"})
    gen.scorer = _BestWordOnly(gen.scorer)
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    gold = make_perception("sad", causes=[CauseUtterance(index=0, text=CONTEXT[0][1], score=1.0, spans=[])])
    gold.models["cause"] = "gold"
    d = gen.inputs([GenerationRequest(context=ctx, perception=gold)]).details[0]
    words = d["cause_words"]
    best = max(words, key=lambda w: w["p"])["word"]
    assert [w["word"] for w in words if w["cause"]] == [best] and len(words) == 5
    assert {t["token"] for t in d["gated_tokens"] if t["turn"] == 0 and t["gate"] == 1.0} == {best}
    assert {t["token"] for t in d["gated_tokens"] if t["turn"] == 0 and t["gate"] == 0.0} == {"my", "day", "was", "bad", "today"} - {best}
