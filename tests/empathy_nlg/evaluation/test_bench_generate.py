"""``empathy-nlg bench-generate`` prints and writes measured latencies."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from empathy_nlg.cli import main
from tests.empathy_nlg.generators.knowledge_fixtures import write_ed


def test_bench_generate_measures_each_generator(tmp_path, capsys):
    data = write_ed(tmp_path / "ed.jsonl")
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("generators:\n  canned: {generator: frequent, reply: i see}\n")
    out = tmp_path / "bench.json"
    rc = main(["bench-generate", "--generator", "canned", "--config", str(cfg), "--data", str(data),
               "--n", "3", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    figures = json.loads(out.read_text())
    row = figures["canned"]
    assert figures["n"] == 3 and 0 <= row["p50_s"] <= row["p95_s"] and row["mean_words"] == 2.0
    assert "p95" in capsys.readouterr().out
    assert main(["bench-generate", "--generator", "canned", "--config", str(cfg), "--data", str(data), "--n", "0"]) == 2


@pytest.mark.parametrize("native_bf16", [False, True])
def test_speedups_time_each_serving_step_on_the_same_contexts(tmp_path, tiny_llama, capsys, monkeypatch, native_bf16):
    """--speedups: plain generate, + shared prefill, + merged adapters, each timed with its ratio
    against plain and the count of replies that stayed the same (all of them: these steps are
    exact); + bf16 weights only on a CPU with native bf16 (``serve_dtype: auto``)."""
    import torch
    import yaml

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.generators import finetuned as F

    from empathy_nlg import hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)

    bb = C.load_base(str(tiny_llama), device="cpu", dtype="float32")
    model = F.FinetunedModel(F.FinetunedSettings(max_prompt_tokens=48), bb, None, lora={"r": 2, "alpha": 4, "dropout": 0.0})
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save(tmp_path / "m", extra={"trained_at": "test"})
    data = write_ed(tmp_path / "ed.jsonl")
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"generators": {"ft": {
        "generator": "finetuned", "model_dir": str(tmp_path / "m"), "backbone_path": str(tiny_llama), "device": "cpu",
        "num_beams": 3, "grounding_bias": 0, "tone_bias": 0, "decoding": {"max_new_tokens": 5}}}}))
    out = tmp_path / "bench.json"
    assert main(["bench-generate", "--generator", "ft", "--config", str(cfg), "--data", str(data),
                 "--n", "3", "--warmup", "1", "--speedups", "--json", str(out)]) == 0
    steps = json.loads(out.read_text())["speedups"]["ft"]
    exact = ["plain", "+ shared prefill", "+ merged adapters"]
    assert list(steps) == exact + (["+ bfloat16 weights"] if native_bf16 else [])
    assert steps["plain"]["ratio_p50"] == 1.0
    for label in exact:
        assert steps[label]["same_replies"] == "3/3" and steps[label]["p50_s"] > 0
    if native_bf16:
        assert steps["+ bfloat16 weights"]["p50_s"] > 0 and steps["+ bfloat16 weights"]["same_replies"].endswith("/3")
    assert "same replies as plain" in capsys.readouterr().out
    cfg.write_text(yaml.safe_dump({"generators": {"c": {"generator": "frequent"}}}))
    assert main(["bench-generate", "--generator", "c", "--config", str(cfg), "--data", str(data), "--speedups"]) == 2


def test_batched_calls_without_perception_report_replies_per_second(tmp_path, capsys):
    """--batch 2 on 5 contexts: three timed calls (2, 2, 1), every reply counted; --no-perception
    sends requests without perception; bad combinations are clear errors."""
    from empathy_nlg.generators import frequent

    seen = []
    real = frequent.MostFrequentReplyGenerator.generate

    def spy(self, requests):
        seen.append([r.perception for r in requests])
        return real(self, requests)

    data = write_ed(tmp_path / "ed.jsonl")
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("generators:\n  canned: {generator: frequent, reply: i see}\n")
    out = tmp_path / "bench.json"
    with mock.patch.object(frequent.MostFrequentReplyGenerator, "generate", spy):
        rc = main(["bench-generate", "--generator", "canned", "--config", str(cfg), "--data", str(data),
                   "--n", "5", "--warmup", "1", "--batch", "2", "--no-perception", "--json", str(out)])
    assert rc == 0
    figures = json.loads(out.read_text())
    row = figures["canned"]
    assert figures["batch"] == 2 and figures["perception"] is False
    assert row["calls"] == 3 and row["replies_per_s"] > 0
    assert [len(c) for c in seen] == [1, 2, 2, 1]  # the warm-up call, then 2 + 2 + 1 timed contexts
    assert all(p is None for call in seen for p in call)
    assert "without perception" in capsys.readouterr().out
    assert main(["bench-generate", "--generator", "canned", "--config", str(cfg), "--data", str(data), "--batch", "0"]) == 2
    assert main(["bench-generate", "--generator", "canned", "--config", str(cfg), "--data", str(data),
                 "--batch", "2", "--speedups"]) == 2
