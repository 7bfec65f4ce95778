"""``empathy-nlg train``: config validation, a whole tiny run, checkpoints and resume, ablations."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from empathy_nlg.settings import TrainSettings  # noqa: E402
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


def trained_features(out):
    """The training features of a run folder that carry the generator's extra keys (the examples of
    the batches the run trained), merged from the base file and the extras file."""
    base = [json.loads(l) for l in next(out.glob("features-train-base-*.jsonl")).read_text().splitlines()]
    rows = [json.loads(l) for f in out.glob("extras-train-*.jsonl") for l in f.read_text().splitlines()]
    return [{**base[r["i"]], **r["keys"]} for r in sorted(rows, key=lambda r: r["i"])]


def test_config_is_validated_with_clear_errors(tmp_path, config):
    bad = config(optim={"batch_size": 0})
    with pytest.raises(ValueError, match="optim.batch_size"):
        TrainSettings.load(write_yaml(tmp_path / "a.yml", bad), "imagine")
    with pytest.raises(ValueError, match="not 'nec'"):
        TrainSettings.load(write_yaml(tmp_path / "b.yml", config()), "nec")
    with pytest.raises(ValueError, match="bogus"):
        TrainSettings.load(write_yaml(tmp_path / "c.yml", {**config(), "bogus": 1}), "imagine")
    with pytest.raises(FileNotFoundError):
        TrainSettings.load(tmp_path / "missing.yml", "imagine")
    without_name = {k: v for k, v in config().items() if k != "generator"}
    loaded = TrainSettings.load(write_yaml(tmp_path / "d.yml", without_name), "imagine")
    assert loaded.generator == "imagine" and loaded.optim.batch_size == 2 and loaded.optim.grad_clip == 1.0


def test_the_typed_train_settings_mirror_the_schema():
    """TrainSettings has a field for every key the train schema allows (top level, data, optim);
    the committed configs load; ``updated`` merges a section key by key and validates."""
    import pydantic

    from empathy_nlg.paths import PACKAGE_DIR
    from empathy_nlg.settings import TRAIN_SCHEMA_FILE, TrainData, TrainOptim

    schema = json.loads(TRAIN_SCHEMA_FILE.read_text())
    assert set(schema["properties"]) == set(TrainSettings.model_fields)
    assert set(schema["properties"]["data"]["properties"]) == set(TrainData.model_fields)
    assert set(schema["properties"]["optim"]["properties"]) == set(TrainOptim.model_fields)
    configs = sorted((PACKAGE_DIR.parent / "configs" / "train").glob("*.yml"))
    assert len(configs) >= 4
    for path in configs:  # every committed config loads for the generator it names (cause_gated_hard: cause_gated)
        name = max((n for n in T.RECIPES.names() if path.stem == n or path.stem.startswith(n + "_")), key=len)
        assert TrainSettings.load(path, name).generator == name
    nec = TrainSettings.load(PACKAGE_DIR.parent / "configs" / "train" / "nec_ed.yml", "nec")
    assert nec.optim.batch_size == 16 and nec.settings["prefix_top_layers"] == 8 and nec.causes == "speaker"
    longer = nec.updated(optim={"max_steps": 400}, settings={"neg_h": False})
    assert longer.optim.max_steps == 400 and longer.optim.batch_size == 16
    assert longer.settings["neg_h"] is False and longer.settings["prefix_top_layers"] == 8
    assert nec.optim.max_steps == 200  # the original is unchanged
    with pytest.raises(pydantic.ValidationError):
        nec.updated(causes="oracle")


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
    base = list(out.glob("features-train-base-*.jsonl"))
    extras = [json.loads(l) for f in out.glob("extras-train-*.jsonl") for l in f.read_text().splitlines()]
    assert len(base) == 1 and len(json.loads(base[0].read_text().splitlines()[0])["cm"]) == 3
    assert sorted(r["i"] for r in extras) == list(range(8))  # 4 steps of 2: every example's knowledge
    assert set(extras[0]["keys"]["knowledge"]) == {"affect", "behaviour", "physical", "events"}
    with pytest.raises(ValueError, match="--resume"):
        T.train(config(), progress=False)  # a checkpoint exists: never silently overwritten
    # the checkpoint gone, a new run in the folder starts its own log and keeps the earlier one aside
    first_log = (out / "log.jsonl").read_text()
    shutil.rmtree(out / "checkpoint")
    assert T.train(config(), progress=False)["stopped"] == "done"
    assert (out / "log.previous.jsonl").read_text() == first_log
    assert [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


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
    # the same batches, randomness and optimiser state: the same loss at every step, and the same
    # fp32 weights (adapter and heads) at the end
    losses = lambda run: [json.loads(l)["loss"] for l in (tmp_path / run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses("broken") == losses("straight")
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / name))
        b = load_file(str(tmp_path / "broken" / "checkpoint" / name))
        assert a.keys() == b.keys() and a
        assert all(a[k].dtype == torch.float32 and torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        T.train(config("never"), resume=True, progress=False)


def test_a_run_from_a_trained_model_can_start_where_its_data_order_stopped(tmp_path, config, monkeypatch):
    """optim.start_step: a model continued from init_model trains the batches its earlier run had not
    reached (the same order), never the ones it had; its warm-up counts from there."""
    first = T.train(config("first"), progress=False)
    assert first["stopped"] == "done"
    seen = []
    real_new = T.recipe_for("imagine").new_model

    def spying(*args, **kwargs):
        model = real_new(*args, **kwargs)
        original = model.loss

        def loss(batch, step=0):
            seen.append((step, [(f["conv_id"], f["turn_index"]) for f in batch]))
            return original(batch, step)

        model.loss = loss
        return model

    monkeypatch.setattr(T.recipe_for("imagine"), "new_model", spying)
    cfg = config("more", init_model=str(tmp_path / "first" / "final"), optim={"start_step": 2, "warmup_steps": 2})
    summary = T.train(cfg, progress=False)
    assert summary["stopped"] == "done" and summary["step"] == 4 and summary["examples"] == 4
    assert summary["start_step"] == 2 and [s for s, _ in seen] == [2, 3]
    feats = [json.loads(l) for l in next((tmp_path / "more").glob("features-train-*.jsonl")).read_text().splitlines()]
    lengths = [T.example_length(f) for f in feats]
    expected = [[(feats[i]["conv_id"], feats[i]["turn_index"]) for i in T._batch_at(s, len(feats), 2, 3, lengths)]
                for s in (2, 3)]
    assert [b for _, b in seen] == expected
    log = [json.loads(l) for l in (tmp_path / "more" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 4]
    assert log[0]["lr"] == pytest.approx(3e-4 * 0.5)  # warm-up from the start step: 1 of 2
    monkeypatch.undo()
    with pytest.raises(ValueError, match="init_model"):
        T.train(config("nowhere", optim={"start_step": 2}), progress=False)
    with pytest.raises(ValueError, match="below optim.max_steps"):
        T.train(config("past", init_model=str(tmp_path / "first" / "final"), optim={"start_step": 4}), progress=False)


def test_a_checkpoint_kept_without_its_optimiser_resumes_at_its_position_with_a_new_warm_up(tmp_path, config):
    """What a session commits to go on elsewhere: the model and the position, not the 10 MB of AdamW
    moments. --resume then trains the next batches of the same order, warming a fresh optimiser up."""
    cfg = config("kept", optim={"max_steps": 6, "warmup_steps": 2, "checkpoint_every": 2})
    T.train({**cfg, "optim": {**cfg["optim"], "max_steps": 3}}, progress=False)  # a chunk that stopped at step 3
    ckpt = tmp_path / "kept" / "checkpoint"
    (ckpt / "optimizer.pt").unlink()
    summary = T.train(cfg, resume=True, progress=False)
    assert summary["step"] == 6
    log = [json.loads(l) for l in (tmp_path / "kept" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    resumed = {r["step"]: r["lr"] for r in log[3:]}
    full = lambda step: 3e-4 * T._lr_factor(step, 2, 6)  # noqa: E731  (the schedule without the re-warm)
    assert resumed[4] == pytest.approx(full(3) * 0.5, abs=1e-7)  # step index 3: 1 of 2 warm-up steps (lr logged to 7 places)
    assert resumed[5] == pytest.approx(full(4), abs=1e-7) and resumed[6] == pytest.approx(full(5), abs=1e-7)


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

    # a trained NEC continues on more data: adapter and heads from its folder, optimiser and step afresh
    from safetensors.torch import load_file

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.perception.encoder import SentenceEncoder

    final = tmp_path / "nec" / "final"
    more = TrainSettings.model_validate(config("nec-more", generator="nec", init_model=str(final),
                                               settings={"nll_steps": 0, "max_prompt_tokens": 96, "y_prime_tokens": 4},
                                               optim={"max_steps": 1}))
    recipe = T.recipe_for("nec")
    model = T._new_model(recipe, more, recipe.settings_from(more.settings), C.load_base(more.backbone_path, device="cpu"),
                         SentenceEncoder(device="cpu"))
    saved = load_file(str(final / C.HEADS_FILE))
    own = model.heads.state_dict()
    assert set(saved) == set(own) and all(torch.equal(own[k], saved[k].float()) for k in saved)
    assert model.settings.nll_steps == 0  # this config's settings, not the folder's
    assert T.train(more, progress=False)["step"] == 1
    with pytest.raises(ValueError, match="not both"):
        T.train(more.updated(init_adapter=str(final), out_dir=str(tmp_path / "x")), progress=False)
    with pytest.raises(ValueError, match="holds a 'nec' model"):
        T.train(config("wrong", init_model=str(final)), progress=False)  # an IMAGINE run from a NEC folder


def test_length_bucketed_batches_cover_each_example_once_per_epoch_with_little_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(1000)]
    bs = 8
    per_epoch = 1000 // bs
    batches = [T._batch_at(s, 1000, bs, 3, lengths) for s in range(per_epoch)]
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == per_epoch * bs  # each example at most once, the remainder dropped
    spread = lambda b: max(lengths[i] for i in b) - min(lengths[i] for i in b)  # noqa: E731
    plain = [T._batch_at(s, 1000, bs, 3) for s in range(per_epoch)]
    assert sum(map(spread, batches)) < 0.2 * sum(map(spread, plain))
    # deterministic (a resumed run draws the same batches), and the next epoch is another order
    assert T._batch_at(5, 1000, bs, 3, list(lengths)) == batches[5]
    assert T._batch_at(per_epoch + 5, 1000, bs, 3, lengths) != batches[5]


def test_finetuned_run_validates_keeps_the_best_and_seeds_a_paper_generator(tmp_path, config):
    from safetensors.torch import load_file

    cfg = config("ft", generator="finetuned", knowledge=None, settings={"max_prompt_tokens": 48},
                 optim={"max_steps": 4, "eval_every": 3, "autocast": "bf16"})
    cfg.pop("knowledge")
    summary = T.train(cfg, progress=False)
    out = tmp_path / "ft"
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "valid_ppl" in r]
    assert [r["step"] for r in evals] == [3, 4] and evals[0]["best"] is True  # every 3 steps and at the end
    best = min(evals, key=lambda r: r["valid_ppl"])
    assert summary["valid_ppl"] == best["valid_ppl"] and summary["exported_step"] == best["step"]
    saved = json.loads((out / "final" / "generator.json").read_text())
    assert saved["generator"] == "finetuned" and saved["training"]["exported_step"] == best["step"]
    # best/ itself is servable and versioned even when a time budget ends the run before an export
    kept = json.loads((out / "best" / "generator.json").read_text())
    assert kept["training"]["step"] == best["step"] and kept["trained_at"].endswith("Z")
    feats = json.loads(next(out.glob("features-train-*.jsonl")).read_text().splitlines()[0])
    assert feats["cm"] is None  # the silver CM labels are skipped for a generator that does not use them

    # NEC starts its LoRA from the finetuned adapter (heads new)
    nec = config("nec-on-ft", generator="nec", init_adapter=str(out / "final"),
                 settings={"nll_steps": 10, "max_prompt_tokens": 96}, optim={"max_steps": 1})
    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.perception.encoder import SentenceEncoder

    backbone = C.load_base(nec["backbone_path"], device="cpu")
    model = T.recipe_for("nec").new_model(T.recipe_for("nec").settings_from(nec["settings"]), backbone,
                                          SentenceEncoder(device="cpu"), None, adapter_dir=out / "final")
    start = {k: v for k, v in model.peft.state_dict().items() if "lora_" in k}
    saved_adapter = load_file(str(out / "final" / "adapter" / "adapter_model.safetensors"))
    assert len(start) == len(saved_adapter) > 0
    for k, v in saved_adapter.items():
        match = [s for n, s in start.items() if n.replace(".default", "") == k]
        assert match and torch.allclose(match[0].float(), v.float())
    assert any(p.requires_grad for p in model.trainable_parameters())
    assert T.train(nec, progress=False)["stopped"] == "done"
    missing = config("nec-bad", generator="nec", init_adapter=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="init_adapter"):
        T.train(missing, progress=False)


def test_a_branch_run_with_an_ablation_switches_it_off_in_the_heads_too(tmp_path, config, monkeypatch):
    import dataclasses

    T.train(config("base"), progress=False)
    captured = {}
    real = T.recipe_for("imagine").load_model

    def capture(*args, **kwargs):
        captured["model"] = model = real(*args, **kwargs)
        return model

    monkeypatch.setattr(T.recipe_for("imagine"), "load_model", capture)
    branch = config("branch", init_from=str(tmp_path / "base" / "checkpoint"),
                    settings={"max_prompt_tokens": 48, "cm": False}, optim={"max_steps": 5})
    assert T.train(branch, progress=False)["step"] == 5
    model = captured["model"]
    assert model.settings.cm is False and model.heads.settings is model.settings
    # behaviour, not just the attribute: the prefix loses its CM signal row
    emo, cm = torch.zeros(1, 32), torch.full((1, 3), 0.5)
    rows = lambda: model.conditioning(["speaker: my dog died"], [{}], emo.clone(), cm.clone())[0][0].shape[0]  # noqa: E731
    without = rows()
    model.settings = dataclasses.replace(model.settings, cm=True)
    assert rows() == without + 1
    saved = json.loads((tmp_path / "branch" / "final" / "generator.json").read_text())
    assert saved["variant"] == "imagine-no-cm" and saved["settings"]["cm"] is False


def test_mime_run_logs_its_elbo_and_emotion_accuracy_and_an_ablation_drops_the_kl(tmp_path, config, capsys):
    cfg = config("mime", generator="mime", knowledge=None,
                 settings={"max_prompt_tokens": 48, "heads_dim": 32, "latent_dim": 8, "encoder_ff": 64},
                 optim={"max_steps": 2, "eval_every": 2})
    cfg.pop("knowledge")
    summary = T.train(cfg, progress=False)
    assert summary["stopped"] == "done"
    out = tmp_path / "mime"
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert {"gen", "emotion", "recon", "kl"} <= set(log[0])
    evals = [r for r in log if "valid_ppl" in r]
    assert evals and set(evals[0]["emotion_acc"]) == {"top1", "top2", "top5"}
    feats = trained_features(out)[0]
    assert len(feats["reply_emotion"]) == 32 and abs(sum(feats["reply_emotion"]) - 1) < 0.01
    assert json.loads((out / "final" / "generator.json").read_text())["variant"] == "mime"

    path = write_yaml(tmp_path / "mime.yml", {**cfg, "out_dir": str(tmp_path / "m2")})
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    assert T.run(parser.parse_args(["--generator", "mime", "--config", str(path), "--ablate", "stochastic", "--quiet"])) == 0
    ablated = [json.loads(l) for l in (tmp_path / "m2-no-stochastic" / "log.jsonl").read_text().splitlines()]
    assert "kl" not in ablated[0] and "recon" in ablated[0]
    assert "mime: 2/2 steps" in capsys.readouterr().out


def test_cause_gated_run_logs_its_reasoner_and_an_ablation_drops_the_cause_task(tmp_path, config, capsys):
    cfg = config("cause_gated", generator="cause_gated", knowledge=None,
                 settings={"max_prompt_tokens": 48, "reasoner_dim": 16, "max_reasoner_tokens": 32, "gating": "hard"},
                 optim={"max_steps": 2, "eval_every": 2})
    cfg.pop("knowledge")
    summary = T.train(cfg, progress=False)
    assert summary["stopped"] == "done"
    out = tmp_path / "cause_gated"
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert {"gen", "emotion", "cause"} <= set(log[0])
    evals = [r for r in log if "valid_ppl" in r]
    assert evals and set(evals[0]["emotion_acc"]) == {"top1", "top2", "top5"} and "cause_f1" in evals[0]
    feats = trained_features(out)
    assert len(feats) == 4  # 2 steps of 2: the generator's own keys only where a batch needs them
    words = [w for f in feats for w in f["cause_words"]]
    assert words and all(len(w) == 5 and 0.0 <= w[3] <= 1.0 for w in words)
    assert all(w[0] in f["cause_indices"] for f in feats for w in f["cause_words"])
    assert json.loads((out / "final" / "generator.json").read_text())["variant"] == "cause_gated-hard"

    path = write_yaml(tmp_path / "cause_gated.yml", {**cfg, "out_dir": str(tmp_path / "c2")})
    parser = argparse.ArgumentParser()
    T.add_arguments(parser)
    assert T.run(parser.parse_args(["--generator", "cause_gated", "--config", str(path), "--ablate", "gate", "--quiet"])) == 0
    ablated = [json.loads(l) for l in (tmp_path / "c2-no-gate" / "log.jsonl").read_text().splitlines()]
    assert "cause" not in ablated[0] and "emotion" in ablated[0]
    assert json.loads((tmp_path / "c2-no-gate" / "final" / "generator.json").read_text())["variant"] == "cause_gated-no-gate"
    assert "cause_gated: 2/2 steps" in capsys.readouterr().out


def test_a_carried_checkpoint_that_is_the_best_point_is_exported_as_best_on_a_new_machine(tmp_path, config):
    """A checkpoint committed without best/ and resumed elsewhere: when it is itself the run's best
    validation point, the run's export is that model (not the last step) unless a later step beats it;
    when the best point is an earlier step that did not travel, best/ restarts from this run's points."""
    from safetensors.torch import load_file

    cfg = config("carried", optim={"max_steps": 4, "eval_every": 1, "checkpoint_every": 2})
    T.train({**cfg, "optim": {**cfg["optim"], "max_steps": 2}}, progress=False)  # a chunk that stopped at step 2
    out = tmp_path / "carried"
    shutil.rmtree(out / "best")
    shutil.copytree(out / "checkpoint", tmp_path / "at-2")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    # the step-2 checkpoint as the best point nothing later can beat
    (out / "checkpoint" / "state.json").write_text(json.dumps({**state, "best_valid_ppl": 0.0, "best_step": 2}))
    summary = T.train(cfg, resume=True, progress=False)
    assert summary["step"] == 4 and summary["exported_step"] == 2
    exported = json.loads((out / "final" / "generator.json").read_text())
    assert exported["training"]["exported_step"] == 2
    adapter = "adapter/adapter_model.safetensors"
    at2, final = load_file(str(tmp_path / "at-2" / adapter)), load_file(str(out / "final" / adapter))
    assert set(at2) == set(final) and all(torch.equal(at2[k].half(), final[k].half()) for k in at2)

    # the best point (step 1) stayed on the machine it was trained on: the export is this run's best
    shutil.rmtree(out)
    T.train({**cfg, "optim": {**cfg["optim"], "max_steps": 2}}, progress=False)
    shutil.rmtree(out / "best")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    (out / "checkpoint" / "state.json").write_text(json.dumps({**state, "best_valid_ppl": 0.0, "best_step": 1}))
    summary = T.train(cfg, resume=True, progress=False)
    assert summary["exported_step"] in (3, 4) and (out / "best" / "generator.json").is_file()


def test_export_last_writes_the_checkpoint_as_a_served_model_and_refuses_what_it_cannot_export(tmp_path, config):
    """``train --export-last``: the run's last step (not its best validation point) becomes final/,
    heads in fp16, adapter as trained, without optimiser or progress files; a clear error otherwise."""
    from safetensors.torch import load_file

    cfg = config("last", optim={"max_steps": 3, "eval_every": 1})
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        T.export_last(cfg)
    T.train(cfg, progress=False)
    out = tmp_path / "last"
    summary = T.export_last({**cfg, "export_dir": str(tmp_path / "served")})
    served = tmp_path / "served"
    assert summary["exported_step"] == 3 and summary["export_dir"] == str(served)
    logged = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert summary["valid_ppl"] == next(r["valid_ppl"] for r in logged if r["step"] == 3 and "valid_ppl" in r)
    saved = json.loads((served / "generator.json").read_text())
    assert saved["generator"] == "imagine" and saved["training"]["exported_step"] == 3 and "checkpoint" not in saved
    assert not (served / "optimizer.pt").exists() and not (served / "state.json").exists()
    heads = load_file(str(served / "heads.safetensors"))
    ckpt_heads = load_file(str(out / "checkpoint" / "heads.safetensors"))
    assert all(v.dtype == torch.float16 and torch.equal(v, ckpt_heads[k].half()) for k, v in heads.items() if v.is_floating_point())
    adapter = "adapter/adapter_model.safetensors"
    a, b = load_file(str(served / adapter)), load_file(str(out / "checkpoint" / adapter))
    assert all(torch.equal(a[k], b[k]) for k in b)
    # the exported folder names its generator and variant like any served model
    from empathy_nlg.generators import conditioned as C

    assert C.read_trained_config(served)["variant"] == "imagine"
    with pytest.raises(ValueError, match="not a 'nec' one"):
        T.export_last({**cfg, "generator": "nec"})


def test_export_last_reads_past_a_log_line_cut_by_a_kill(tmp_path, config):
    cfg = config("cut", optim={"max_steps": 2, "eval_every": 1})
    T.train(cfg, progress=False)
    with (tmp_path / "cut" / "log.jsonl").open("a") as fh:
        fh.write('{"step": 2, "valid_pp')  # what a kill mid-write leaves
    summary = T.export_last(cfg)
    assert summary["exported_step"] == 2 and summary["valid_ppl"] is not None
