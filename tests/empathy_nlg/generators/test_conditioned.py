"""The prefix-conditioned backbone shared by IMAGINE and NEC, on tiny random Llama and BART."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.datasets import Utterance  # noqa: E402
from empathy_nlg.generators import conditioned as C  # noqa: E402
from tests.empathy_nlg.tiny_models import three_layer_llama  # noqa: E402


def _lm(path, **lora):
    bb = C.load_base(str(path), device="cpu", dtype="float32")
    peft = C.attach_lora(bb.model, C.LoraSettings.from_mapping(lora or None))
    return C.ConditionedBackbone(peft, bb.tokenizer, bb.is_seq2seq, "cpu")


def _prefix(lm, n=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, lm.hidden_size, generator=g)
    return p.requires_grad_(grad)


def test_face_weights_downweight_frequent_tokens_and_keep_mean_one(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    replies = ["sorry to hear that .", "sorry to hear that !", "how do you feel ?"]
    w = C.face_weights(tok, replies, len(tok))
    ids = lambda word: tok(word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    assert w[ids("sorry")] < w[ids("feel")]  # "sorry" twice, "feel" once
    counts = {}
    for r in replies:
        for t in tok(r, add_special_tokens=False)["input_ids"]:
            counts[t] = counts.get(t, 0) + 1
    counts[tok.eos_token_id] = counts.get(tok.eos_token_id, 0) + len(replies)
    mean = sum(w[t] * c for t, c in counts.items()) / sum(counts.values())
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert min(w) >= 0.0


def test_prompt_keeps_the_last_turns_and_cuts_the_oldest_tokens(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ctx = [Utterance("speaker", "my day was bad"), Utterance("listener", "oh no"), Utterance("speaker", "i am sad")]
    msgs = C.prompt_messages(ctx, turns=2)
    assert [m["role"] for m in msgs] == ["system", "assistant", "user"]
    full = C.encode_prompt(tok, msgs, 10_000)
    cut = C.encode_prompt(tok, msgs, 5)
    assert cut == full[-5:]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_bart"])
def test_forward_aligns_reply_targets_and_prefix_gets_gradients(which, request):
    lm = _lm(request.getfixturevalue(which))
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad today")], 2), 64)] * 2
    replies = [C.encode_reply(tok, "sorry to hear that .", 32, lm.is_seq2seq), C.encode_reply(tok, "oh no", 32, lm.is_seq2seq)]
    prefixes = [_prefix(lm, 3, 0, grad=True), _prefix(lm, 1, 1, grad=True)]
    logits, targets, info = lm.forward(prefixes, prompts, replies, hidden=True)
    assert logits.shape[:2] == targets.shape
    # targets are the reply tokens (seq2seq: shifted past the start token), padding is -100
    expect0 = replies[0] if not lm.is_seq2seq else replies[0][1:]
    assert targets[0, : len(expect0)].tolist() == expect0
    assert (targets[1, len(replies[1]) :] == -100).all()
    C.token_nll(logits, targets).backward()
    assert prefixes[0].grad is not None and prefixes[0].grad.abs().sum() > 0
    assert info["context_hidden"].shape[-1] == lm.hidden_size and info["reply_hidden"].shape[0] == 2


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_bart"])
def test_generation_is_deterministic_depends_on_the_prefix_and_returns_beams(which, request):
    lm = _lm(request.getfixturevalue(which))
    prompts = [C.encode_prompt(lm.tokenizer, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    a, _ = lm.generate([_prefix(lm, 4, 0)], prompts, {"max_new_tokens": 6})
    again, _ = lm.generate([_prefix(lm, 4, 0)], prompts, {"max_new_tokens": 6})
    assert a.shape[0] == 1 and a.shape[1] <= 6 + (1 if lm.is_seq2seq else 0)
    assert a.tolist() == again.tolist()  # greedy: deterministic
    _, s1 = lm.generate([_prefix(lm, 4, 0) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    beams, s2 = lm.generate([_prefix(lm, 4, 7) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    assert beams.shape[0] == 3 and s2.shape == (3,)
    assert not torch.equal(s1, s2)  # the conditioning reaches the output distribution


def test_rank_margin_loss_is_zero_only_when_the_ranking_holds_with_margins():
    anchor = torch.tensor([[1.0, 0.0]])
    good = torch.tensor([[1.0, 0.0]])
    negs_far = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # cos 0 and -1: well below the positive
    loss, sims = C.rank_margin_loss(anchor, good, negs_far, gamma=0.01)
    assert float(loss) == 0.0 and sims.shape == (1, 3)
    negs_close = torch.tensor([[[1.0, 0.01], [0.0, 1.0]]])  # first negative as close as the positive
    loss2, _ = C.rank_margin_loss(anchor, good, negs_close, gamma=0.01)
    assert float(loss2) > 0.0


def test_save_and_load_round_trip(tmp_path, tiny_llama):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    peft = C.attach_lora(bb.model, C.LoraSettings(r=2, alpha=4, dropout=0.0))
    heads = torch.nn.Linear(3, 2)
    C.save_trained(tmp_path / "m", peft, heads, {"generator": "x"}, half=True)
    assert C.read_trained_config(tmp_path / "m") == {"generator": "x"}
    other = torch.nn.Linear(3, 2)
    C.load_heads(tmp_path / "m", other, "cpu")
    assert torch.allclose(other.weight, heads.weight, atol=1e-3) and other.weight.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="no trained generator"):
        C.read_trained_config(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        C.load_heads(tmp_path / "m", torch.nn.Linear(4, 2), "cpu")


def test_lora_targets_must_exist(tiny_llama):
    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="LoRA target"):
        C.attach_lora(bb.model, C.LoraSettings(target_modules=["nope"]))


def test_reply_only_lm_head_gives_the_same_logits_as_the_full_head(tiny_llama):
    lm = _lm(tiny_llama)
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64) for t in ("i am sad", "we won the cup today")]
    replies = [C.encode_reply(tok, "sorry to hear that .", 32, False), C.encode_reply(tok, "congrats", 32, False)]
    prefixes = [_prefix(lm, 2, seed=1), _prefix(lm, 0)]
    lm.reply_head_only = True
    fast, t1, _ = lm.forward(prefixes, prompts, replies)
    lm.reply_head_only = False
    full, t2, _ = lm.forward(prefixes, prompts, replies)
    assert torch.equal(t1, t2)
    assert torch.allclose(fast, full, atol=1e-5)
    # and both equal a plain forward of the model over the whole sequence
    emb = torch.cat([prefixes[0], lm.embed(torch.tensor(prompts[0] + replies[0]))]).unsqueeze(0)
    plain = lm.model(inputs_embeds=emb).logits[0]
    start = 2 + len(prompts[0])
    assert torch.allclose(fast[0, : len(replies[0])], plain[start - 1 : start - 1 + len(replies[0])], atol=1e-5)


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_fp32_weights(tiny_llama):
    lm = _lm(tiny_llama)
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    replies = [C.encode_reply(tok, "oh no", 32, False)]
    lm.autocast = "bf16"
    logits, _, _ = lm.forward([_prefix(lm, 0)], prompts, replies)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    lm.autocast = None
    assert lm.forward([_prefix(lm, 0)], prompts, replies)[0].dtype == torch.float32


def test_without_dropout_turns_dropout_off_for_a_pass_and_restores_training_mode(tiny_llama):
    lm = _lm(tiny_llama, dropout=0.5)
    lm.model.train(True)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero, which hides its dropout
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    drops = [m for m in lm.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.training for m in drops)
    torch.manual_seed(0)
    noisy = [lm.text_vectors(["oh no that is sad"]) for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])  # dropout draws a new mask each pass
    with lm.without_dropout():
        assert not any(m.training for m in drops)
        quiet = [lm.text_vectors(["oh no that is sad", "oh no that is sad"]) for _ in range(2)]
    assert torch.equal(quiet[0], quiet[1]) and torch.equal(quiet[0][0], quiet[0][1])
    assert all(m.training for m in drops) and lm.model.training


def test_frozen_weights_cast_holds_the_frozen_linears_in_bf16_only_inside_and_decodes_the_same(tiny_llama):
    lm = _lm(tiny_llama)
    lm.model.train(False)
    tok = lm.tokenizer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64) for t in ("i am sad", "i won")]
    prefixes = [_prefix(lm, 2, seed=1), _prefix(lm, 2, seed=2)]
    lm.autocast = "bf16"
    with lm._autocast():
        plain, _ = lm.generate(prefixes, prompts, {"max_new_tokens": 6, "num_beams": 1})
    frozen = [m.weight for m in lm.model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    with lm._autocast(), lm.frozen_weights_cast():
        assert frozen and all(w.dtype == torch.bfloat16 for w in frozen if w is not lm.embeddings.weight)
        assert all(p.dtype == torch.float32 for p in trainable) and lm.embeddings.weight.dtype == torch.float32
        cast, _ = lm.generate(prefixes, prompts, {"max_new_tokens": 6, "num_beams": 1})
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert torch.equal(cast, plain)  # autocast computed these matmuls in bf16 anyway
    lm.autocast = None
    with lm.frozen_weights_cast():  # without autocast it leaves everything as it is
        assert all(p.dtype == torch.float32 for p in lm.model.parameters())


def test_lora_on_the_top_layers_only_leaves_the_lower_layers_without_graph(tiny_llama, tmp_path):
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three", top_layers=1, target_modules=["q_proj", "v_proj", "gate_proj"])
    names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n for n in names)
    with pytest.raises(ValueError, match="between 1 and 3"):
        _lm(tmp_path / "three", top_layers=4)
    # the lower layers' outputs carry no autograd graph: only the top layer's do
    seen = {}
    for i, layer in enumerate(lm.model.get_base_model().model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    logits, targets, _ = lm.forward([_prefix(lm, 0)], prompts, [C.encode_reply(tok, "oh no", 32, False)])
    C.token_nll(logits, targets).backward()
    assert seen == {0: False, 1: False, 2: True}


def _outputs_per_layer(lm):
    seen = {}
    for i, layer in enumerate(lm.decoder_layers()):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    return seen


def test_a_prefix_entering_at_layer_0_is_exactly_the_input_embedding_prefix(tiny_llama, tmp_path):
    """The injection adds the prefix to a zero placeholder: at the first layer's input that is the
    prefix as input embeddings, in training (logits) and in beam search (left padding, beams)."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64)
               for t in ("i am sad", "my dog died this morning and i miss him")]
    replies = [C.encode_reply(tok, "oh no", 32, False), C.encode_reply(tok, "i am so sorry", 32, False)]
    prefixes = [_prefix(lm, 3, 0), _prefix(lm, 1, 1)]
    plain, _, _ = lm.forward(prefixes, prompts, replies)
    plain_ids, plain_scores = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=2)
    lm.prefix_layer = 0
    injected, _, _ = lm.forward(prefixes, prompts, replies)
    ids, scores = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=2)
    assert torch.allclose(plain, injected, atol=1e-5)
    assert ids.tolist() == plain_ids.tolist() and torch.allclose(scores, plain_scores, atol=1e-5)


def test_a_prefix_entering_the_top_layer_trains_without_graph_below_and_steers_generation(tiny_llama, tmp_path):
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three", top_layers=1)
    lm.prefix_layer = 2
    seen = _outputs_per_layer(lm)
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "i am sad")], 2), 64)]
    prefix = _prefix(lm, 3, 0, grad=True)
    logits, targets, _ = lm.forward([prefix], prompts, [C.encode_reply(tok, "oh no", 32, False)])
    C.token_nll(logits, targets).backward()
    assert seen == {0: False, 1: False, 2: True}  # the fast path holds with a trained prefix
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    # the prefix reaches the output only through the top layer, in beam search as well
    _, s1 = lm.generate([_prefix(lm, 3, 0) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    again, s1b = lm.generate([_prefix(lm, 3, 0) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    _, s2 = lm.generate([_prefix(lm, 3, 7) * 20], prompts, {"max_new_tokens": 4}, num_return=3)
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)


def test_injected_prefixes_of_a_padded_batch_match_each_example_alone(tiny_llama, tmp_path):
    """Rows of different prefix and prompt lengths: each row's prefix lands on its own positions
    (left padding in generation, right padding in training)."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.prefix_layer = 1
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64)
               for t in ("i am sad", "we adopted a kitten yesterday and she sleeps on my feet")]
    prefixes = [_prefix(lm, 3, 0) * 10, _prefix(lm, 1, 1) * 10]
    batch_ctx = lm.context_vectors(prefixes, prompts)
    batch_ids, _ = lm.generate(prefixes, prompts, {"max_new_tokens": 5})
    for i in range(2):
        alone = lm.context_vectors([prefixes[i]], [prompts[i]])
        assert torch.allclose(batch_ctx[i], alone[0], atol=1e-5)
        ids, _ = lm.generate([prefixes[i]], [prompts[i]], {"max_new_tokens": 5})
        row = [t for t in batch_ids[i].tolist() if t != tok.pad_token_id]
        assert row[: len(ids[0])] == [t for t in ids[0].tolist() if t != tok.pad_token_id]


def test_prefix_top_layers_sets_the_entry_layer_and_is_checked(tiny_llama, tmp_path):
    from dataclasses import dataclass
    from typing import Optional

    three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    assert C.prefix_layer(lm, None) is None
    assert C.prefix_layer(lm, 1) == 2 and C.prefix_layer(lm, 3) == 0
    with pytest.raises(ValueError, match="between 1 and 3"):
        C.prefix_layer(lm, 4)

    @dataclass
    class S:
        prefix_top_layers: Optional[int] = None
        variant: str = "x"

    bb = C.load_base(str(tmp_path / "three"), device="cpu", dtype="float32")
    model = C.TrainedModel(S(prefix_top_layers=2), bb, lora={"r": 2})
    assert model.lm.prefix_layer == 1
    model.settings = S()  # a run branched with other settings: the entry layer follows them
    assert model.lm.prefix_layer is None


@pytest.mark.parametrize("layer", [None, 1])
def test_generate_hands_out_the_prompt_vectors_of_its_first_pass(tiny_llama, tmp_path, layer):
    """``context_out`` gets what ``context_vectors`` computes (NEC's z_x) from the decoding pass
    itself: one row per example, whatever the beams, the padding and where the prefix enters."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.prefix_layer = layer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64)
               for t in ("i am sad", "we adopted a kitten yesterday and she sleeps on my feet")]
    prefixes = [_prefix(lm, 3, 0) * 10, _prefix(lm, 1, 1) * 10]
    expected = lm.context_vectors(prefixes, prompts)
    for beams in (1, 3):
        taken = []
        lm.generate(prefixes, prompts, {"max_new_tokens": 4}, num_return=beams, context_out=taken)
        assert len(taken) == 1 and taken[0].shape == expected.shape
        assert torch.allclose(taken[0], expected, atol=1e-4)
    lm.generate(prefixes, prompts, {"max_new_tokens": 4})  # without the list nothing is captured


@pytest.mark.parametrize("layer", [None, 0, 2])
@pytest.mark.parametrize("decoding, beams", [({"max_new_tokens": 6}, 1), ({"max_new_tokens": 6}, 3),
                                             ({"max_new_tokens": 6, "num_beams": 4}, 2),
                                             ({"max_new_tokens": 6, "do_sample": True, "seed": 3}, 2)])
def test_the_shared_prefill_decodes_exactly_as_generate_alone(tiny_llama, tmp_path, layer, decoding, beams):
    """The prompt run once per example, its cache repeated for the beams: the same tokens, beam
    scores and prompt vectors as ``transformers`` running every beam's copy of the prompt, for a
    padded batch, with the prefix at the bottom or in the upper layers, with a sequence bias."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.model.eval()  # as served (LoRA dropout off): sampling then draws the same numbers both ways
    lm.prefix_layer = layer
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64)
               for t in ("i am sad", "we adopted a kitten yesterday and she sleeps on my feet")]
    prefixes = [_prefix(lm, 3, 0) * 10, _prefix(lm, 1, 1) * 10]
    bias = [[tok("the", add_special_tokens=False)["input_ids"], -3.0]]
    runs = {}
    for shared in (False, True):
        lm.shared_prefill = shared
        calls = _count_body_widths(lm)
        torch.manual_seed(0)
        taken = []
        ids, scores = lm.generate(prefixes, prompts, decoding, num_return=beams, sequence_bias=bias, context_out=taken)
        runs[shared] = (ids, scores, taken[0], calls)
    (ids0, s0, z0, calls0), (ids1, s1, z1, calls1) = runs[False], runs[True]
    assert ids1.tolist() == ids0.tolist()
    assert (s0 is None and s1 is None) or torch.allclose(s0, s1, atol=1e-4)
    assert torch.allclose(z0, z1, atol=1e-4)
    width = max(p.shape[0] + len(t) for p, t in zip(prefixes, prompts))
    expand = max(decoding.get("num_beams", 1), beams)
    # without it the whole prompt runs once per beam; with it, once per example, minus one position
    assert calls0[0] == (2 * expand, width)
    assert calls1[:2] == [(2, width - 1), (2 * expand, 1)]


def _count_body_widths(lm):
    """(batch, positions) of every forward pass of the decoder body, filled in as they run."""
    seen = []

    def hook(_module, args, kwargs):
        x = next(v for v in (kwargs.get("inputs_embeds"), kwargs.get("input_ids"), *args) if v is not None)
        seen.append(tuple(x.shape[:2]))

    lm._decoder_body().register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_serving_merges_the_adapters_exactly(tiny_llama, tmp_path):
    """prepare_for_serving: the merged backbone scores and decodes as the adapters did, with a
    prefix in the upper layers too."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    with torch.no_grad():  # trained-looking adapters, so that merging has something to merge
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lm.model.eval()
    lm.prefix_layer = 1
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "we adopted a kitten")], 2), 64)]
    prefixes = [_prefix(lm, 2, 0) * 10]
    replies = [C.encode_reply(tok, "oh how lovely", 32, False)]
    with torch.no_grad():
        before, _, _ = lm.forward(prefixes, prompts, replies)
        with lm.model.disable_adapter():
            plain = lm.model(input_ids=torch.tensor([prompts[0]])).logits
    ids_before, s_before = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=2)
    lm.prepare_for_serving()
    assert not any("lora" in n for n, _ in lm.model.named_modules())
    with torch.no_grad():
        merged, _, _ = lm.forward(prefixes, prompts, replies)
        after = lm.model(input_ids=torch.tensor([prompts[0]])).logits
    ids_merged, s_merged = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=2)
    assert torch.allclose(before, merged, atol=1e-4)
    assert not torch.allclose(plain, after, atol=1e-3)  # the adapters' change is in the weights now
    assert ids_merged.tolist() == ids_before.tolist() and torch.allclose(s_before, s_merged, atol=1e-4)


def _serving_lm(tiny_llama, tmp_path):
    """A three-layer backbone prepared for serving (adapters merged), its prefix entering layer 1,
    with one prompt and one prefix: ``(tokenizer, lm, prompts, prefixes)``."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.prepare_for_serving()
    lm.prefix_layer = 1
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "we adopted a kitten")], 2), 64)]
    return tok, lm, prompts, [_prefix(lm, 2, 0) * 10]


def test_serving_cast_to_bf16_keeps_the_heads_fp32_and_decodes_close_to_fp32(tiny_llama, tmp_path, monkeypatch):
    """cast_for_serving: ``float32`` leaves the weights alone; ``auto`` casts to bf16 only where
    the CPU multiplies bf16 natively; ``bf16`` casts; a prefix (fp32, as the heads make it) still
    enters, and the reply scores stay close to the fp32 ones."""
    tok, lm, prompts, prefixes = _serving_lm(tiny_llama, tmp_path)
    replies = [C.encode_reply(tok, "oh how lovely", 32, False)]
    with torch.no_grad():
        fp32, _, _ = lm.forward(prefixes, prompts, replies)
    assert lm.cast_for_serving("float32") == "float32"
    from empathy_nlg import hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert lm.cast_for_serving("auto") == "float32"  # no native bf16: emulated bf16 would be slower
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert lm.cast_for_serving("auto") == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert prefixes[0].dtype == torch.float32
    with torch.no_grad():
        bf16, _, _ = lm.forward(prefixes, prompts, replies)
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.float().log_softmax(-1), fp32.log_softmax(-1), atol=0.15)
    ids, scores = lm.generate(prefixes, prompts, {"max_new_tokens": 5}, num_return=2)
    assert ids.shape[0] == 2 and torch.isfinite(scores).all()


def test_the_attention_kernel_is_chosen_for_serving_and_decodes_the_same_in_fp32(tiny_llama, tmp_path):
    """use_attention: eager and sdpa give the same beams in fp32 (the kernels differ in speed, and
    in bf16 in rounding); None / auto leave the kernel as loaded."""
    _tok, lm, prompts, prefixes = _serving_lm(tiny_llama, tmp_path)
    loaded = lm.use_attention(None)
    assert lm.use_attention("auto") == loaded
    runs = {}
    for kernel in ("sdpa", "eager"):
        assert lm.use_attention(kernel) == kernel
        torch.manual_seed(0)
        runs[kernel] = lm.generate(prefixes, prompts, {"max_new_tokens": 6}, num_return=3)
    assert runs["eager"][0].tolist() == runs["sdpa"][0].tolist()
    assert torch.allclose(runs["eager"][1], runs["sdpa"][1], atol=1e-4)


def test_early_stopping_ends_beam_search_once_the_beams_are_complete(tiny_llama, tmp_path):
    """``decoding.early_stopping`` reaches beam search (off by default, never for greedy); with the
    end-of-reply token made likely, beams complete at different lengths, and stopping once
    ``num_beams`` replies are complete never takes more decoding steps than the default."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.model.eval()
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", "we adopted a kitten")], 2), 64)]
    prefixes = [_prefix(lm, 2, 0) * 10]
    seen = []
    plain_generate = lm.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("early_stopping"))
        return plain_generate(*args, **kwargs)

    lm.model.generate = spy
    eos = [[[tok.eos_token_id], 4.0]]
    steps = {}
    for early in (False, True):
        calls = _count_body_widths(lm)
        ids, scores = lm.generate(prefixes, prompts, {"max_new_tokens": 12, "num_beams": 4, "early_stopping": early},
                                  num_return=4, sequence_bias=eos)
        steps[early] = len(calls)
        assert ids.shape[0] == 4 and scores.shape == (4,)
    assert seen == [False, True]
    assert steps[True] <= steps[False]
    lm.generate(prefixes, prompts, {"max_new_tokens": 3})  # greedy: transformers is not given the flag
    assert seen[-1] is None


@pytest.mark.parametrize("decoding, beams", [({"max_new_tokens": 8}, 1), ({"max_new_tokens": 8, "num_beams": 4}, 4)])
def test_per_example_biases_decode_a_batch_as_each_example_alone(tiny_llama, tmp_path, decoding, beams):
    """``row_bias``: one request's own entries on its own rows. Alone, it decodes exactly as
    transformers' ``sequence_bias`` (same tokens and beam scores: the same processors in the same
    order); in a padded batch of requests with different biases, every request gets the replies
    it gets alone."""
    tok = three_layer_llama(tiny_llama, tmp_path / "three")
    lm = _lm(tmp_path / "three")
    lm.model.eval()
    texts = ("i am sad", "we adopted a kitten yesterday and she sleeps on my feet", "my exam went well")
    prompts = [C.encode_prompt(tok, C.prompt_messages([Utterance("speaker", t)], 2), 64) for t in texts]
    prefixes = [_prefix(lm, 2, i) * 10 for i in range(3)]
    ids_of = lambda w: tok(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    own = [[[ids_of("the"), -3.0], [ids_of("kitten"), 2.0]],                       # single tokens
           [[ids_of("so sorry"), -5.0], [ids_of("she"), 1.5], [ids_of("the"), 4.0]],  # a two-token sequence
           []]                                                                         # none at all
    alone = []
    for i in range(3):
        builtin = lm.generate([prefixes[i]], [prompts[i]], decoding, num_return=beams, sequence_bias=own[i] or None)
        rowwise = lm.generate([prefixes[i]], [prompts[i]], decoding, num_return=beams, row_bias=[own[i]])
        assert rowwise[0].tolist() == builtin[0].tolist()
        assert (builtin[1] is None and rowwise[1] is None) or torch.allclose(builtin[1], rowwise[1], atol=1e-5)
        alone.append(builtin)
    unsteered = lm.generate([prefixes[1]], [prompts[1]], decoding, num_return=beams)
    assert unsteered[0].tolist() != alone[1][0].tolist()  # the entries do steer
    ids, scores = lm.generate(prefixes, prompts, decoding, num_return=beams, row_bias=own)
    for i, (ids_i, scores_i) in enumerate(alone):
        block = ids[i * beams : (i + 1) * beams]
        width = min(block.shape[1], ids_i.shape[1])
        assert block[:, :width].tolist() == ids_i[:, :width].tolist(), i
        if scores is not None:
            assert torch.allclose(scores[i * beams : (i + 1) * beams], scores_i, atol=1e-4)
    with pytest.raises(ValueError, match="3 prompts"):
        lm.generate(prefixes, prompts, decoding, num_return=beams, row_bias=own[:2])
    with pytest.raises(ValueError, match="sampling"):
        lm.generate(prefixes, prompts, {"max_new_tokens": 4, "do_sample": True}, row_bias=own)
