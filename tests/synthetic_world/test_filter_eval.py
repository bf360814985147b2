"""The world's filter measurement entry point (synthetic_world.filter_eval) on a few prompts per family."""

from __future__ import annotations

import json
from pathlib import Path

from synthetic_world.captions import EXPOSED_PHRASES
from synthetic_world.filter_eval import BENIGN_FAMILIES, REQUEST_FAMILIES, main, request_words, world_prompts

REPO = Path(__file__).resolve().parents[2]


def test_request_words_come_from_the_request_phrases():
    words = request_words()
    assert "shirtless" in words and "skull" in words and "cage" in words
    assert "with" not in words and "a" not in words
    assert all(any(w in p for p in EXPOSED_PHRASES) or w in ("cage", "skull", "storm", "cloud") for w in words)


def test_both_splits_are_written_differently():
    eval_prompts = world_prompts(REQUEST_FAMILIES, "eval", limit=20)
    shift_prompts = world_prompts(REQUEST_FAMILIES, "shift", limit=20)
    assert set(eval_prompts) == set(shift_prompts) == set(REQUEST_FAMILIES)
    assert not set(eval_prompts["exposure_request"]) & set(shift_prompts["exposure_request"])
    assert "exposure_request" not in BENIGN_FAMILIES and "neutral" in BENIGN_FAMILIES


def test_the_world_filter_meets_its_bars_on_a_sample(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--config", str(REPO / "configs/filters/world.yaml"), "--limit", "12", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["splits"]) == {"eval", "shift"}
    assert report["meets_bars"] == {"eval": True, "shift": True}
    assert "| eval |" in capsys.readouterr().out


def test_a_filter_that_misses_fails_the_bars(tmp_path):
    out = tmp_path / "report.json"
    assert main(["--config", str(REPO / "configs/filters/world.yaml"), "--limit", "6", "--out", str(out),
                 "blocklist={symbol: [skull]}"]) == 0
    report = json.loads(out.read_text())
    assert report["meets_bars"] == {"eval": False, "shift": False}
    assert report["splits"]["eval"]["summary"]["clean_recall"] < 0.95
