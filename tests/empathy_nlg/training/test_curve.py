"""plot-curve: runs' log.jsonl → points, examples on the x axis, a PNG and a summary."""

import json
from pathlib import Path

import pytest

from empathy_nlg.cli import main
from empathy_nlg.training.curve import read_curve, summary_lines


def _run(folder: Path, steps: int, batch: int, valid: dict, summary: bool = True) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        lines.append(json.dumps({"step": s, "loss": 3.0 - s / 100, "gen": 2.9 - s / 100, "lr": 1e-4}))
        if s in valid:
            lines.append(json.dumps({"step": s, "valid_ppl": valid[s], "best": True}))
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        (folder / "summary.json").write_text(json.dumps({"step": steps, "examples": steps * batch}))
    return folder


def test_read_curve_takes_the_batch_from_the_summary_and_the_nll_from_gen(tmp_path):
    c = read_curve(_run(tmp_path / "gpu", 20, 64, {10: 17.0, 20: 16.5}))
    assert c.batch == 64 and c.label == "gpu"
    assert c.train[0] == (1, pytest.approx(2.89)) and len(c.train) == 20
    assert c.valid == [(10, 17.0), (20, 16.5)]
    assert c.best == (20, 16.5) and c.examples(20) == 1280


def test_a_continuation_from_start_step_takes_its_batch_from_its_own_steps(tmp_path):
    """A run with optim.start_step 500 (steps 501–628 of batches of 64) logs 8,192 examples at step 628:
    its batch is 64, not 8192 / 628, and its steps already sit on the epoch's x axis."""
    run = tmp_path / "epoch"
    run.mkdir()
    (run / "log.jsonl").write_text("\n".join([json.dumps({"step": 501, "gen": 2.9}),
                                              json.dumps({"step": 600, "valid_ppl": 17.2, "best": True})]) + "\n")
    (run / "summary.json").write_text(json.dumps({"step": 628, "start_step": 500, "examples": 8192}))
    c = read_curve(run)
    assert c.batch == 64 and c.examples(600) == 38400


def test_cli_plots_two_runs_with_an_offset_and_prints_the_best(tmp_path, capsys):
    cpu = _run(tmp_path / "cpu", 10, 16, {5: 18.0, 10: 17.5})
    gpu = _run(tmp_path / "gpu", 8, 64, {4: 17.2, 8: 17.4}, summary=False)
    out = tmp_path / "card" / "curve.png"
    rc = main(["plot-curve", str(cpu), str(gpu / "log.jsonl"), "--out", str(out), "--batch", "gpu=64",
               "--offset", "gpu=160", "--smooth", "3"])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "cpu: 10 steps of 16 (160 examples)" in text
    assert "gpu: 8 steps of 64 (672 examples); validation PPL first 17.200 at step 4, best 17.200 at step 4 (416 examples)" in text


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["plot-curve", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no training log" in capsys.readouterr().err
    run = _run(tmp_path / "r", 2, 8, {})
    assert main(["plot-curve", str(run), "--out", str(tmp_path / "x.png"), "--batch", "r:8"]) == 2
    assert "LABEL=N" in capsys.readouterr().err
    assert main(["plot-curve", str(run), "--out", str(tmp_path / "x.png"), "--offset", "other=5"]) == 2
    assert "not plotted: other" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text('{"note": 1}\n')
    assert main(["plot-curve", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no training or validation points" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_summary_lines_of_a_run_without_validation(tmp_path):
    c = read_curve(_run(tmp_path / "r", 3, 8, {}))
    assert summary_lines([c]) == ["r: 3 steps of 8 (24 examples); validation PPL first none, best none"]
