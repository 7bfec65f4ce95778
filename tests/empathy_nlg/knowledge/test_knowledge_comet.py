"""COMET loader end to end with a tiny random BART and a tokenizer built in the test (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from empathy_nlg.knowledge.base import load_knowledge_source
from empathy_nlg.knowledge.comet import CometKnowledgeSource, format_comet_query
from empathy_nlg.taxonomy import IMAGINE_RELATIONS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("to be sad happy go home cry eat cake feel bad keys test fail drive car PersonX "
         "PersonX's PersonY I my lost failed driving the a").split()


def build_tiny_comet(folder: Path) -> Path:
    """A 1-layer, d_model 16 BART and a WordLevel tokenizer with COMET's [GEN] + relation tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + ["[GEN]"] + list(IMAGINE_RELATIONS) + ["ObjectUse", "AtLocation", "MadeUpOf"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    config = BartConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None,
        task_specific_params={"summarization": {"no_repeat_ngram_size": 3, "min_length": 3, "max_length": 8,
                                                "length_penalty": 1.0, "early_stopping": True}},
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_comet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_comet(tmp_path_factory.mktemp("tiny-comet"))


def test_query_format() -> None:
    assert format_comet_query("PersonX fails a test", "xReact") == "PersonX fails a test xReact [GEN]"


def test_tiny_comet_generates_through_the_real_code_path(tiny_comet: Path) -> None:
    source = load_knowledge_source({"type": "comet", "path": str(tiny_comet), "batch_size": 2, "device": "cpu"})
    assert isinstance(source, CometKnowledgeSource)
    # the release's task-specific decoding settings are applied, beams/returns are COMET's 5/5
    assert source.generation_kwargs["no_repeat_ngram_size"] == 3 and source.generation_kwargs["max_length"] == 8
    override = CometKnowledgeSource(tiny_comet, device="cpu", max_new_tokens=4)
    assert "max_length" not in override.generation_kwargs and override.generation_kwargs["max_new_tokens"] == 4
    assert override.version != source.version
    assert source.device == "cpu" and source.num_beams == 5 and source.num_return_sequences == 5
    heads = ["I failed my driving test", "PersonX eats cake", "I lost my keys"]
    out = source.infer(heads, ["xReact", "xWant"], k=5)
    assert len(out) == 3
    for answer in out:
        assert list(answer) == ["xReact", "xWant"]
        for tails in answer.values():
            assert len(tails) <= 5
            assert all(isinstance(t, str) and t and t.lower() != "none" for t in tails)
            assert len({t.lower() for t in tails}) == len(tails)
            assert not any("PersonX" in t for t in tails)  # mapped back to first person
    assert any(tails for answer in out for tails in answer.values())  # a random model still says something
    # Second call is served from the cache, with identical answers.
    misses = source.cache_misses
    assert source.infer(heads, ["xReact", "xWant"], k=5) == out
    assert source.cache_misses == misses


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="COMET checkpoint"):
        load_knowledge_source({"type": "comet", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="path"):
        load_knowledge_source({"type": "comet"})
