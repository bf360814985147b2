"""benchmarks/profile_generation.py: GPU idle gaps, and the script end to end on the tiny models (CPU smoke)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import profile_generation


def test_idle_gaps_merge_overlaps_and_place_each_gap():
    # µs spans: two overlapping kernels, a 200 µs gap, two touching ones, a 400 µs gap, a 10 µs gap (ignored).
    spans = [(0, 100), (90, 200), (400, 500), (500, 600), (1000, 1100), (1110, 1200)]
    gaps = profile_generation.idle_gaps(spans)
    assert gaps["busy_span_ms"] == pytest.approx(1.2)
    assert gaps["gaps_over_50us"] == 2 and gaps["idle_ms"] == pytest.approx(0.6)
    assert gaps["largest_gaps_ms_at_ms"] == [pytest.approx((0.4, 0.6)), pytest.approx((0.2, 0.2))]
    assert profile_generation.idle_gaps([])["idle_ms"] == 0.0


def test_smoke_run_writes_both_sides_and_the_variant(tmp_path, monkeypatch):
    out = tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["profile_generation", "--arch", "sd15", "--repeats", "1",
                                      "--work", str(tmp_path / "work"), "--out", str(out),
                                      "--then-inductor-options", "{triton.multi_kernel: 1}"])
    profile_generation.main()
    record = json.loads(out.read_text())
    for side in ("plain", "generator", "variant"):
        assert record[side]["batch_ms"] > 0 and record[side]["unet_call_ms"] > 0
        assert set(record[side]) >= {"decode_ms", "by_category_ms", "top_kernels_ms", "gpu_idle"}
    assert record["variant"]["inductor_options"] == {"triton.multi_kernel": 1}
