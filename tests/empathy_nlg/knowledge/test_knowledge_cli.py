"""The ``empathy-nlg knowledge`` commands on tiny data (fake encoder, temp cache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from empathy_nlg import cli
from empathy_nlg.knowledge import cli as kcli
from empathy_nlg.knowledge.evaluate import split_heads, token_f1



@pytest.fixture(autouse=True)
def _fake_encoder(monkeypatch: pytest.MonkeyPatch, encoder_factory: Any) -> None:
    monkeypatch.setattr(kcli, "_make_encoder", lambda path=None, device=None: encoder_factory())


def test_eval_writes_metrics_and_report(sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    rc = cli.main(["knowledge", "eval", "--data-dir", str(sample_dir), "--holdout", "0.5", "--seed", "3",
                   "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"retrieval", "retrieval-gold-only", "random-same-relation", "frequent-same-relation", "comet-bart", "retrieval-no-entity-floor"} <= set(metrics["systems"])
    for m in metrics["systems"].values():
        assert 0.0 <= m["top1_bleu1"] <= 100.0 and 0.0 <= m["top1_f1"] <= 1.0
    assert metrics["counts"]["heldout_pairs_scored"] > 0
    assert "examples" not in metrics  # dataset text only on request
    assert "| retrieval |" in (out / "report.md").read_text()
    assert "random-same-relation" in capsys.readouterr().out


def test_eval_is_deterministic(sample_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli.main(["knowledge", "eval", "--data-dir", str(sample_dir), "--out", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["systems"] == b["systems"]


def test_query_and_build(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["knowledge", "build", "--data-dir", str(sample_dir)]) == 0
    assert "heads" in capsys.readouterr().out
    rc = cli.main(["knowledge", "query", "--data-dir", str(sample_dir), "--head", "I failed my driving test",
                   "--relations", "xReact", "xWant", "--top-heads", "1", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inferences"]["xReact"][0] == "sad"
    assert cli.main(["knowledge", "query", "--head", "x", "--source", "none"]) == 0


def test_missing_data_gives_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["knowledge", "eval", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "EMPATHY_NLG_DATA" in err
    assert cli.main(["knowledge", "query", "--head", "x", "--source", "comet"]) == 2


def test_metric_helpers() -> None:
    assert token_f1("to try again", ["to try again later", "cry"]) == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("xyz", ["abc"]) == 0.0
    idx, held = split_heads(10, 0.2, 13)
    assert len(held) == 2 and not set(idx) & set(held) and split_heads(10, 0.2, 13) == (idx, held)
    with pytest.raises(ValueError):
        split_heads(10, 1.5, 0)
