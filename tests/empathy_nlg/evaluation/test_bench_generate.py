"""``empathy-nlg bench-generate`` prints and writes measured latencies."""

from __future__ import annotations

import json

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
