"""benchmarks.guarded_latency on two requests: it prints and writes the medians, the overhead and the guards' share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import guarded_latency

REPO = Path(__file__).resolve().parents[2]


def test_guarded_latency_reports_the_overhead(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "latency.json"
    assert guarded_latency.main(["--requests", "2", "--warmup", "0", "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overhead of the median" in printed and "% of the generation latency" in printed
    result = json.loads(out.read_text())
    assert result["requests"] == 2 and sum(result["outcomes"].values()) == 2
    assert set(result["guard_layers_ms_median"]) == {"filter", "rewrite", "output_check", "blur"}
    assert result["guard_share_of_generation"] == pytest.approx(result["guard_ms_median"] / result["plain_ms"]["median"])
    assert isinstance(result["meets_bar"], bool)
