"""NEC on a tiny random Llama with the real MiniLM: fact scorer, negatives, contrastive loss, reranking."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import GenerationRequest, available_generators, create_generator  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from empathy_nlg.generators import nec as N  # noqa: E402
from tests.empathy_nlg.generators import knowledge_fixtures  # noqa: E402,F401  (registers "fixed")

CONTEXT = [["speaker", "my dog died yesterday in the park"], ["listener", "oh no"], ["speaker", "i am sad today"]]


def feature(**over):
    f = {"context": CONTEXT, "reference": "sorry to hear that .", "emotion": "sad", "cm": [0.5, 0.5, 0.5],
         "facts": [["dog", "AtLocation", "park"]], "social": {"xReact": "sad", "xWant": "to talk"}}
    f.update(over)
    return f


def make_model(tiny_llama, encoder, lora_dropout=0.0, **settings):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    model = N.NecModel(N.NecSettings(**settings), bb, encoder, lora={"r": 2, "alpha": 4, "dropout": lora_dropout})
    feats = [feature(), feature(emotion="joyful", reference="that is great !"), feature(emotion="angry", reference="oh no")]
    model.pool_by_emotion = {"sad": ["sorry to hear that ."], "joyful": ["that is great !"], "angry": ["oh no"]}
    model.frequent = ["that is great !"]
    return model, feats


def test_registered_and_settings():
    assert "nec" in available_generators()
    assert N.NecSettings(neg_b=False, social=False).variant == "nec-no-social-b"
    assert N.NecSettings(neg_d=False).negatives == ["neg_y", "neg_b", "neg_h"]
    with pytest.raises(ValueError, match="alpha"):
        N.NecSettings.from_mapping({"alpha": 2})


def test_fact_scorer_learns_a_separable_relevance_and_reports_auc(encoder):
    rng = np.random.default_rng(0)
    d = rng.normal(size=(400, 8)).astype(np.float32)
    f = rng.normal(size=(400, 8)).astype(np.float32)
    labels = ((d * f).sum(1) > 0).astype(float)  # relevance = agreement of the two vectors
    scorer = N.FactScorer(encoder)
    report = scorer.fit(d, f, labels)
    assert report["auc"] > 0.9 and report["pairs"] == 400
    assert N.FactScorer(encoder).fit(d, f, np.zeros(400))["auc"] is None  # nothing to learn: cosine kept
    assert N.content_words("The dog is at the park!") == {"dog", "park"}


class Counting:
    """The encoder, recording every batch it is asked to embed."""

    def __init__(self, encoder, calls):
        self.encoder, self.calls, self.dim = encoder, calls, encoder.dim

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        return self.encoder.encode(texts)


def test_cached_encoder_embeds_each_text_once(encoder):
    calls = []
    cached = N.CachedEncoder(Counting(encoder, calls), size=10)
    a = cached.encode(["dog", "park", "dog"])
    b = cached.encode(["park", "cat"])
    assert calls == [["dog", "park"], ["cat"]]
    assert np.allclose(a[1], b[0]) and a.shape == (3, encoder.dim)


def test_prefetch_gives_the_same_knowledge_in_a_few_batched_queries(encoder):
    """Feature building warms the caches a block at a time: the knowledge per dialogue is the
    same as without, and the source and the encoder are each asked once per block."""
    from empathy_nlg.knowledge.base import load_knowledge_source

    contexts = [[Utterance("speaker", turns[0]), Utterance("listener", turns[1])] + ([Utterance("speaker", turns[2])] if len(turns) > 2 else [])
                for _, _, turns in knowledge_fixtures.CONVERSATIONS]
    settings = N.NecSettings()
    plain_source = load_knowledge_source({"type": "fixed"})
    plain = N.NecKnowledge(plain_source, encoder, settings, N.FactScorer(encoder))
    expected = [(plain.social(c), plain.candidates(c)) for c in contexts]

    source = load_knowledge_source({"type": "fixed"})
    calls = []
    warm = N.NecKnowledge(source, Counting(encoder, calls), settings, N.FactScorer(encoder))
    warm.prefetch(contexts)
    queries_after_prefetch, encodes_after_prefetch = len(source.queries), len(calls)
    got = [(warm.social(c), warm.candidates(c)) for c in contexts]
    assert got == expected
    assert any(soc for soc, _ in got) and any(cands for _, cands in got)  # the fixture yields knowledge
    assert len(source.queries) == queries_after_prefetch  # every later lookup came from the cache
    assert encodes_after_prefetch == 1 and len(calls) == 1  # one batched encoding for the block
    assert warm._entities == {}  # the warmed entities are consumed, not kept


def test_negatives_follow_the_switches(tiny_llama, encoder):
    model, feats = make_model(tiny_llama, encoder, y_prime_tokens=3)
    prefixes, prompts = model._inputs(feats)
    negs = model.negatives(feats, prefixes, prompts)
    assert all(len(n) == 4 for n in negs)
    assert negs[0][0] in ("that is great !", "oh no")  # D: another emotion's reply
    assert negs[0][2] == feats[1]["reference"]  # B: the next gold reply in the batch
    assert negs[0][3] == "that is great !"  # H: a frequent reply
    only_b, _ = make_model(tiny_llama, encoder, neg_d=False, neg_y=False, neg_h=False)
    assert only_b.negatives(feats, prefixes, prompts) == [[f["reference"]] for f in feats[1:] + feats[:1]]


def test_contrastive_stage_adds_the_ranking_loss_with_gradients(tiny_llama, encoder):
    model, feats = make_model(tiny_llama, encoder, nll_steps=1, y_prime_tokens=3)
    model.train(True)
    _, parts0 = model.loss(feats, step=0)
    assert set(parts0) == {"gen"}
    loss, parts1 = model.loss(feats, step=1)
    assert set(parts1) == {"gen", "contrastive"} and parts1["contrastive"] >= 0
    loss.backward()
    assert model.heads.z_proj.weight.grad is not None
    assert model.heads.social_proj.weight.grad.abs().sum() > 0  # social prefix reaches the loss
    none, _ = make_model(tiny_llama, encoder, nll_steps=0, neg_d=False, neg_y=False, neg_b=False, neg_h=False)
    assert set(none.loss(feats, step=5)[1]) == {"gen"}


def test_the_contrastive_loss_encodes_each_distinct_reply_once_without_dropout(tiny_llama, encoder, monkeypatch):
    """B negatives are other examples' golds and H negatives repeat: one pass over the distinct
    replies, in which dropout is off (the same reply, the same vector)."""
    model, feats = make_model(tiny_llama, encoder, lora_dropout=0.3, nll_steps=0, y_prime_tokens=3)
    model.train(True)
    assert any(m.training for m in model.lm.model.modules() if isinstance(m, torch.nn.Dropout))
    passes = []
    real = model.lm.text_vectors

    def spy(texts, max_tokens=32):
        drops = [m for m in model.lm.model.modules() if isinstance(m, torch.nn.Dropout)]
        passes.append((list(texts), any(m.training for m in drops)))
        return real(texts, max_tokens)

    monkeypatch.setattr(model.lm, "text_vectors", spy)
    loss, parts = model.loss(feats, step=0)
    assert "contrastive" in parts and len(passes) == 1
    texts, dropout_on = passes[0]
    assert not dropout_on and len(texts) == len(set(texts))
    assert {f["reference"] for f in feats} <= set(texts)  # the golds, which are also the B negatives
    loss.backward()
    assert model.heads.z_proj.weight.grad.abs().sum() > 0
    passes.clear()
    model.fast_contrastive = False  # the path before (bench-train --nec's baseline): golds, then negatives
    assert "contrastive" in model.loss(feats, step=0)[1]
    assert [texts for texts, _ in passes][0] == [f["reference"] for f in feats] and len(passes) == 2
    assert all(dropout_on for _, dropout_on in passes)


def test_prompt_carries_entity_facts_only_when_enabled(tiny_llama, encoder):
    model, _ = make_model(tiny_llama, encoder)
    off, _ = make_model(tiny_llama, encoder, entity=False)
    ctx = [[Utterance(r, t) for r, t in CONTEXT]]
    with_facts = model.prompts(ctx, [[["dog", "AtLocation", "park"]]])[0]
    without = off.prompts(ctx, [[["dog", "AtLocation", "park"]]])[0]
    assert len(with_facts) > len(without)
    assert "dog, AtLocation, park" in N.entity_system_text([["dog", "AtLocation", "park"]])


def test_generator_reranks_by_alpha_and_reports_candidates(tmp_path, tiny_llama, encoder):
    model, _ = make_model(tiny_llama, encoder)
    model.save(tmp_path / "m", extra={"trained_at": "test"})
    common = {"model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu",
              "knowledge": {"type": "fixed"}, "decoding": {"max_new_tokens": 5}}
    ctx = [Utterance(r, t) for r, t in CONTEXT]
    for alpha in (0.7, 1.0, 0.0):
        gen = create_generator("nec", {**common, "alpha": alpha, "num_beams": 3})
        out = gen.generate([GenerationRequest(context=ctx)])[0]
        cands = out.details["nec_rerank"]["candidates"]
        assert len(cands) == 3
        best = max(cands, key=lambda c: c["score"])
        assert out.text == best["text"] or not best["text"]
        for c in cands:
            assert c["score"] == pytest.approx(alpha * c["sim"] + (1 - alpha) * c["lm"], abs=2e-4)
    assert out.details["social"]["xReact"] == "sad"
    assert out.knowledge["social"] and isinstance(out.knowledge["entity"], list)
    plain = create_generator("nec", {**common, "rerank": False})
    single = plain.generate([GenerationRequest(context=ctx)])[0]
    assert single.details["nec_rerank"] is None and plain.version.endswith("/no-rerank")
    assert plain.score([GenerationRequest(context=ctx)], ["oh no"])["tokens"] > 0
