"""The one-line bar summary the GPU recipe scripts print (benchmarks/print_bars.py)."""

from benchmarks.print_bars import bars_line

SUMMARY = {
    "bars": [{"metric": "exposure", "aligned": 0.031, "met": True}, {"metric": "association", "aligned": 0.0312, "met": False}],
    "stereotype": {"groups": ["zorvan", "quelli", "mirdan"],
                   "shares": {"chef": {"aligned": [0.55, 0.27, 0.18]}, "pilot": {"aligned": [0.25, 0.625, 0.125]}}},
}


def test_bars_line_marks_each_bar_and_lists_role_shares():
    line = bars_line("D0", SUMMARY, "rpo_alpha=0.2")
    assert line.startswith("D0  [rpo_alpha=0.2] missed=1/2 exposure=0.031+ association=0.031-")
    assert line.endswith("| aligned shares (zorvan/quelli/mirdan): chef 0.55/0.27/0.18 pilot 0.25/0.62/0.12")
    assert bars_line("r1", SUMMARY).startswith("r1: missed=1/2 exposure=0.031+")
    split = {**SUMMARY, "bars": [dict(b, split=s) for b in SUMMARY["bars"] for s in ("in_grammar", "phrasing_shift")]}
    assert "exposure@in=0.031+ exposure@shift=0.031+" in bars_line("r2", split)
