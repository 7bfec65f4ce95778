"""``empathy-nlg train``: config validation, a whole tiny run, checkpoints and resume, ablations."""

from __future__ import annotations

import argparse
import json

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.training import generator as T  # noqa: E402
from tests.empathy_nlg.generators import knowledge_fixtures as K  # noqa: E402  (registers "fixed")


@pytest.fixture
def config(tmp_path, tiny_llama):
    data = K.write_ed(tmp_path / "ed.jsonl")

    def make(out="run", **over):
        cfg = {
            "generator": "imagine", "out_dir": str(tmp_path / out), "seed": 3, "device": "cpu",
            "backbone_path": str(tiny_llama),
            "data": {"train": str(data), "valid": str(data), "max_train_examples": 8, "max_valid_examples": 4},
            "causes": "speaker", "knowledge": {"type": "fixed"},
            "settings": {"max_prompt_tokens": 48},
            "lora": {"r": 2, "alpha": 4, "dropout": 0.1},
            "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 2},
        }
        for k, v in over.items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
        return cfg

    return make


def write_yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_is_validated_with_clear_errors(tmp_path, config):
    bad = config(optim={"batch_size": 0})
    with pytest.raises(ValueError, match="optim.batch_size"):
        T.load_config(write_yaml(tmp_path / "a.yml", bad), "imagine")
    with pytest.raises(ValueError, match="not 'nec'"):
        T.load_config(write_yaml(tmp_path / "b.yml", config()), "nec")
    with pytest.raises(ValueError, match="bogus"):
        T.load_config(write_yaml(tmp_path / "c.yml", {**config(), "bogus": 1}), "imagine")
    with pytest.raises(FileNotFoundError):
        T.load_config(tmp_path / "missing.yml", "imagine")


def test_tiny_run_trains_logs_checkpoints_and_exports(tmp_path, config):
    summary = T.train(config(), progress=False)
    out = tmp_path / "run"
    assert summary["stopped"] == "done" and summary["step"] == 4 and summary["examples"] == 8
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"gen", "emotion", "cm", "face"} <= set(log[0])
    final = out / "final"
    saved = json.loads((final / "generator.json").read_text())
    assert saved["training"]["step"] == 4 and saved["variant"] == "imagine"
    assert summary["valid_ppl"] > 1 and summary["export_mb"] > 0
    assert (final / "adapter" / "adapter_config.json").is_file() and (final / "heads.safetensors").is_file()
    feats = list(out.glob("features-train-*.jsonl"))
    assert len(feats) == 1
    first = json.loads(feats[0].read_text().splitlines()[0])
    assert set(first["knowledge"]) == {"affect", "behaviour", "physical", "events"} and len(first["cm"]) == 3
    with pytest.raises(ValueError, match="--resume"):
        T.train(config(), progress=False)  # a checkpoint exists: never silently overwritten


def test_interrupted_run_resumes_to_the_same_model(tmp_path, config, monkeypatch):
    from safetensors.torch import load_file

    T.train(config("straight"), progress=False)
    real_loss = T.recipe_for("imagine").new_model

    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        model = real_loss(*args, **kwargs)
        original = model.loss

        def loss(batch, step=0):
            calls["n"] += 1
            if step == 3:
                raise KeyboardInterrupt
            return original(batch, step)

        model.loss = loss
        return model

    monkeypatch.setattr(T.recipe_for("imagine"), "new_model", interrupting)
    with pytest.raises(KeyboardInterrupt):
        T.train(config("broken"), progress=False)
    state = json.loads((tmp_path / "broken" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    monkeypatch.undo()
    summary = T.train(config("broken"), resume=True, progress=False)
    assert summary["step"] == 4
    a = load_file(str(tmp_path / "straight" / "final" / "heads.safetensors"))
    b = load_file(str(tmp_path / "broken" / "final" / "heads.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        T.train(config("never"), resume=True, progress=False)


def test_cli_ablation_switch_names_the_run_and_reaches_the_model(tmp_path, config, capsys):
    path = write_yaml(tmp_path / "cfg.yml", config(optim={"max_steps": 2}))
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    args = parser.parse_args(["--generator", "imagine", "--config", str(path), "--ablate", "cm", "--quiet"])
    assert T.run(args) == 0
    saved = json.loads((tmp_path / "run-no-cm" / "final" / "generator.json").read_text())
    assert saved["variant"] == "imagine-no-cm" and saved["settings"]["cm"] is False
    assert "imagine: 2/2 steps" in capsys.readouterr().out
    bad = parser.parse_args(["--generator", "imagine", "--config", str(path), "--ablate", "entity"])
    with pytest.raises(ValueError, match="cause, cm, knowledge, face"):
        T.run(bad)


def test_nec_runs_its_nll_then_contrastive_stage_and_branches(tmp_path, config):
    cfg = config("nec", generator="nec", settings={"nll_steps": 2, "max_prompt_tokens": 96, "y_prime_tokens": 4})
    summary = T.train(cfg, progress=False)
    log = [json.loads(l) for l in (tmp_path / "nec" / "log.jsonl").read_text().splitlines()]
    assert "contrastive" not in log[1] and "contrastive" in log[2] and "contrastive" in log[3]
    assert summary["stopped"] == "done"
    saved = json.loads((tmp_path / "nec" / "final" / "generator.json").read_text())
    assert saved["generator"] == "nec"
    # branch off the checkpoint with one negative kind switched off: step count carries over
    branch = config("nec-no-b", generator="nec", init_from=str(tmp_path / "nec" / "checkpoint"),
                    settings={"nll_steps": 2, "max_prompt_tokens": 96, "neg_b": False}, optim={"max_steps": 5})
    out = T.train(branch, progress=False)
    assert out["step"] == 5
    assert json.loads((tmp_path / "nec-no-b" / "final" / "generator.json").read_text())["variant"] == "nec-no-b"
