"""The crisis detector's fine-tuned encoder (MiniLM + LoRA), on the real packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.perception.common import build_mlp, save_head  # noqa: E402
from empathy_nlg.perception.crisis import HEAD, RULES_VERSION, CrisisDetector  # noqa: E402
from empathy_nlg.perception.crisis_encoder import ADAPTER_DIR, TunedEncoder  # noqa: E402
from empathy_nlg.perception.encoder import SentenceEncoder  # noqa: E402

TEXTS = ["I tied the cord to the beam this morning", "we had pancakes for breakfast"]


@pytest.fixture(scope="module")
def frozen() -> SentenceEncoder:
    return SentenceEncoder()


def _train_a_little(enc: TunedEncoder) -> None:
    opt = torch.optim.SGD([p for p in enc.model.parameters() if p.requires_grad], lr=1.0)
    enc.model.train()
    for _ in range(3):
        emb = enc.forward(TEXTS)
        loss = (emb[0] * emb[1]).sum()  # push the two apart: any real gradient step will do
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.model.eval()
    enc.clear_cache()


def test_a_fresh_adapter_is_the_frozen_encoder(frozen):
    enc = TunedEncoder.trainable()
    assert any(p.requires_grad for p in enc.model.parameters())
    base = [n for n, p in enc.model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert base == []  # only the adapter trains
    np.testing.assert_allclose(enc.encode(TEXTS), frozen.encode(TEXTS), atol=1e-5)


def test_training_moves_it_and_the_saved_adapter_loads_merged(tmp_path, frozen):
    enc = TunedEncoder.trainable()
    _train_a_little(enc)
    tuned = enc.encode(TEXTS)
    assert not np.allclose(tuned, frozen.encode(TEXTS), atol=1e-3)
    enc.save(tmp_path)
    assert (tmp_path / ADAPTER_DIR / "adapter_config.json").is_file()
    size = sum(f.stat().st_size for f in (tmp_path / ADAPTER_DIR).iterdir())
    assert size < 3_000_000  # an adapter, not a copy of the encoder
    loaded = TunedEncoder.load(tmp_path)
    assert not any(hasattr(m, "lora_A") for m in loaded.model.modules())  # merged for serving
    np.testing.assert_allclose(loaded.encode(TEXTS), tuned, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(loaded.encode(TEXTS), axis=1), 1.0, atol=1e-5)


def test_encode_caches_texts_and_keeps_order():
    enc = TunedEncoder.trainable()
    enc.cache_size = 2
    a = enc.encode(["one", "two"])
    b = enc.encode(["two", "one", "three"])
    np.testing.assert_allclose(a[0], b[1], atol=1e-6)
    np.testing.assert_allclose(a[1], b[0], atol=1e-6)
    assert len(enc._cache) == 3  # never evicts what the current call needs
    enc.encode(["four"])
    assert len(enc._cache) == 2
    # a text cached before the call and asked for again among more new texts than the cache holds
    # is read before anything is evicted (it was dropped first, a KeyError, once calibration read
    # 909 chat turns)
    enc.encode(["three"])  # the cache now holds "four" (the oldest) and "three"
    old = enc._cache["four"].copy()
    out = enc.encode(["five", "six", "seven", "four"])
    np.testing.assert_allclose(out[3], old, atol=1e-6)
    assert len(enc._cache) == 4 and "four" in enc._cache and "three" not in enc._cache


def test_detector_loads_a_tuned_head_with_its_own_encoder(tmp_path):
    enc = TunedEncoder.trainable()
    _train_a_little(enc)
    enc.save(tmp_path)
    head = build_mlp(3 * enc.dim, 1, 8, 0.0)
    save_head(head, {"in_dim": 3 * enc.dim, "out_dim": 1, "hidden": 8, "dropout": 0.0, "loss": "bce",
                     "threshold": 0.5, "encoder": "tuned", "version": "test-tuned"}, tmp_path, HEAD)
    det = CrisisDetector.load(tmp_path, embed=lambda texts: pytest.fail("the shared encoder must not be used"))
    assert det.own_encoder and det.version == f"{RULES_VERSION}+test-tuned"
    p = det.probability(["hello", TEXTS[0]])
    # an embedding of the shared encoder passed in is of another space: ignored, same answer
    assert det.probability(["hello", TEXTS[0]], message_embedding=np.zeros(enc.dim)) == pytest.approx(p)
    assert 0.0 <= p <= 1.0
    # a head without ``encoder: tuned`` keeps the shared encoder (and ignores a stale adapter)
    save_head(head, {"in_dim": 3 * enc.dim, "out_dim": 1, "hidden": 8, "dropout": 0.0, "loss": "bce",
                     "threshold": 0.5, "version": "test-frozen"}, tmp_path, HEAD)
    calls = []
    det = CrisisDetector.load(tmp_path, embed=lambda texts: calls.append(list(texts)) or np.zeros((len(texts), enc.dim), np.float32))
    assert not det.own_encoder
    det.probability([TEXTS[0]])
    assert calls


def test_finetune_crisis_end_to_end_on_a_tiny_data_folder(tmp_path):
    """A real (small) run: frozen head → fine-tuned adapter + head, thresholds, artefacts, reload."""
    import json

    from empathy_nlg.perception import crisis_train as CT

    data = tmp_path / "data"
    (data / "crisis").mkdir(parents=True)
    rows = []
    for u in range(40):  # enough users that the seeded 20 % dev split holds some
        pos = u % 2 == 0
        rows.append({"user": f"u{u}", "label": "ideation" if pos else "supportive",
                     "text": "I don't want to live anymore, I have the pills ready" if pos else "hang in there, you matter"})
    (data / "crisis" / "cssrs_reddit_posts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    init = tmp_path / "frozen"
    CT.train_crisis(data, SentenceEncoder(), init, progress=False)
    out = tmp_path / "tuned"
    m = CT.finetune_crisis(data, out, epochs=1, batch_size=8, init_head=init, max_train_examples=24, progress=False)
    assert [e["epoch"] for e in m["epochs"]] == [0, 1]
    assert m["epochs"][1]["train_loss"] > 0 and 0 <= m["best_epoch"] <= 1
    assert 0 < m["concern_threshold"] <= m["threshold"] < 1
    config = json.loads((out / f"{HEAD}.json").read_text())
    assert config["encoder"] == "tuned" and config["version"] == CT.TUNED_VERSION
    det = CrisisDetector.load(out)
    assert det.own_encoder
    assert det.detect(["I don't want to live anymore, I have the pills ready"]).crisis  # the pattern floor holds
    # a later chunk goes on from the saved adapter and head: its epoch 0 is the saved best
    again = CT.finetune_crisis(data, tmp_path / "again", epochs=1, init_head=out, max_train_examples=8, progress=False)
    assert again["epochs"][0]["dev_auc"] == pytest.approx(m["dev_auc"], abs=0.05)
    assert (tmp_path / "again" / ADAPTER_DIR / "adapter_model.safetensors").is_file()


def _tiny_crisis_data(root):
    import json

    (root / "crisis").mkdir(parents=True)
    rows = [{"user": f"u{u}", "label": "ideation" if u % 2 == 0 else "supportive",
             "text": "tonight is the night, the rope is ready" if u % 2 == 0 else "hang in there, you matter"}
            for u in range(40)]
    (root / "crisis" / "cssrs_reddit_posts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_the_larger_head_trained_end_to_end_is_served_with_its_adapter_merged(tmp_path, frozen, caplog):
    """v15's path: the larger encoder's head fine-tuned with a LoRA adapter on that encoder
    (``head_name=crisis_head_mpnet``), then served by :class:`CrisisDetector` behind the MiniLM gate
    with the adapter merged into the larger encoder. The packaged MiniLM stands in for
    all-mpnet-base-v2 here (same code path, a fraction of the time)."""
    import json
    import shutil

    from empathy_nlg.perception import crisis_train as CT
    from empathy_nlg.perception.crisis import LARGE_ADAPTER_DIR, LARGE_HEAD
    from empathy_nlg.perception.encoder import default_encoder_path

    data = _tiny_crisis_data(tmp_path / "data")
    base = default_encoder_path()
    init = tmp_path / "frozen"
    CT.train_crisis(data, frozen, init, progress=False)
    CT.train_crisis(data, frozen, init, progress=False, head_name=LARGE_HEAD, version=CT.LARGE_VERSION,
                    extra_config={"encoder_name": base.name, "gate_threshold": 0.0, "cue_gate": 0.02})
    out = tmp_path / "tuned"
    m = CT.finetune_crisis(data, out, epochs=1, batch_size=8, init_head=init, max_train_examples=16, progress=False,
                           encoder_path=base, head_name=LARGE_HEAD, version=CT.LARGE_TUNED_VERSION, bf16="float32")
    assert [e["epoch"] for e in m["epochs"]] == [0, 1]
    config = json.loads((out / f"{LARGE_HEAD}.json").read_text())
    assert config["encoder"] == "tuned" and config["adapter_dir"] == LARGE_ADAPTER_DIR
    assert config["gate_threshold"] == 0.0 and config["cue_gate"] == 0.02  # the gate settings travel with it
    assert not (out / HEAD).with_suffix(".json").exists()  # only the larger head is written
    for name in (f"{HEAD}.json", f"{HEAD}.safetensors"):
        shutil.copy2(init / name, out / name)
    # on this tiny set the best epoch may be epoch 0 (a zero adapter): move the saved adapter for sure
    moved = TunedEncoder.load(out, encoder_path=base, adapter_dir=LARGE_ADAPTER_DIR, trainable=True)
    _train_a_little(moved)
    moved.save(out)

    det = CrisisDetector.load(out, frozen.encode, crisis_encoder=str(base))
    assert det.large is not None and det.large.adapter == out / LARGE_ADAPTER_DIR
    assert LARGE_ADAPTER_DIR in det.large.name  # its embedding cache is not the frozen encoder's
    texts = TEXTS + ["tonight is the night 😭💔"]  # emoji glossed alike in training and serving
    merged = det.large.encode(texts)
    served_like = TunedEncoder.load(out, adapter_dir=LARGE_ADAPTER_DIR)
    served_like.gloss_emoji = True
    tuned = served_like.encode(texts)
    np.testing.assert_allclose(merged, tuned, atol=1e-5)  # served = trained
    assert np.abs(merged - frozen.encode(texts)).max() > 1e-5  # and not the frozen encoder
    assert json.loads((out / f"{LARGE_HEAD}.json").read_text())["emoji_gloss"] is True
    assert det.version == f"{RULES_VERSION}+{CT.LARGE_TUNED_VERSION}"

    # a lost adapter: the MiniLM head decides alone, with a warning (never the tuned head on frozen weights)
    (out / LARGE_ADAPTER_DIR / "adapter_model.safetensors").unlink()
    with caplog.at_level("WARNING"):
        det = CrisisDetector.load(out, frozen.encode, crisis_encoder=str(base))
    assert det.large is None and "could not be loaded" in caplog.text
