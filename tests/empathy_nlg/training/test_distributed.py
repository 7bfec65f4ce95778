"""``empathy-nlg train`` under ``torchrun``: two processes on the CPU (gloo) follow the loss curve
of one process with the doubled batch, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from tests.empathy_nlg.generators import knowledge_fixtures as K  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, tiny_llama, data, out, batch_size):
    import yaml

    path.write_text(yaml.safe_dump({
        "generator": "finetuned", "out_dir": str(out), "seed": 5, "device": "cpu", "threads": 1,
        "backbone_path": str(tiny_llama), "causes": "speaker",
        "data": {"train": str(data), "valid": str(data), "max_train_examples": 8, "max_valid_examples": 4},
        "settings": {"max_prompt_tokens": 48},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "optim": {"batch_size": batch_size, "max_steps": 3, "warmup_steps": 1, "checkpoint_every": 2, "bucket": False},
    }))
    return path


def steps(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoint" / "adapter" / "adapter_model.safetensors"))


def test_two_processes_follow_one_process_with_the_doubled_batch(tmp_path, tiny_llama):
    data = K.write_ed(tmp_path / "ed.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    one = write_config(tmp_path / "one.yml", tiny_llama, data, tmp_path / "one", batch_size=4)
    two = write_config(tmp_path / "two.yml", tiny_llama, data, tmp_path / "two", batch_size=2)
    train = ["-m", "empathy_nlg.cli", "train", "--generator", "finetuned", "--quiet"]
    single = subprocess.run([sys.executable, *train, "--config", str(one)], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(free_port()), *train, "--config", str(two)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]

    a, b = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2, 3]  # one log line per step: only rank 0 writes
    for ra, rb in zip(a, b):
        # the same global batch; each process's token-mean over its share, averaged, against one
        # token-mean over the whole batch: equal up to the shares' different token counts
        # (measured: within 0.1 %)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=0.01)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 3 and summary["examples"] == 12
    wa, wb = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    assert set(wa) == set(wb)
    trained = max(float(wa[k].float().abs().max()) for k in wa if "lora_B" in k)
    apart = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert trained > 5e-4  # LoRA's B starts at zero: the three steps moved it …
    assert apart < 0.3 * trained  # … the same way in both runs, up to that weighting
    assert len(list((tmp_path / "two").glob("checkpoint*"))) == 1 and (tmp_path / "two" / "final").is_dir()
