"""Bar checks against hand-made rows: absolute bars, and "keep it" bars that are one-sided."""

from evals.metric_rows import evaluate_bar


def _row(op, value, base, aligned, direction, improvement=False, excludes_zero=True):
    diff = {"value": aligned - base, "low": aligned - base - 0.01, "high": aligned - base + 0.01,
            "excludes_zero": excludes_zero}
    return {"id": "m", "title": "m", "bar": {"op": op, "value": value}, "direction": direction,
            "improvement": improvement, "by_model": {"base": {"value": base}, "aligned": {"value": aligned}},
            "paired_difference": {"aligned": diff}}


def test_absolute_bars_need_the_paired_ci_to_exclude_zero():
    assert evaluate_bar(_row("<=", 0.05, 0.5, 0.04, "lower", improvement=True))["met"]
    assert not evaluate_bar(_row("<=", 0.05, 0.5, 0.06, "lower", improvement=True))["met"]
    assert not evaluate_bar(_row("<=", 0.05, 0.5, 0.04, "lower", improvement=True, excludes_zero=False))["met"]
    assert evaluate_bar(_row(">=", 0.9, 0.6, 0.95, "higher", improvement=True))["met"]


def test_keep_bars_allow_gains_but_not_losses():
    gain = evaluate_bar(_row("within", 0.02, 0.91, 0.95, "higher"))
    assert gain["met"] and not gain["within_two_sided"]
    assert evaluate_bar(_row("within", 0.02, 0.91, 0.895, "higher"))["met"]
    assert not evaluate_bar(_row("within", 0.02, 0.91, 0.885, "higher"))["met"]
    # relative: 2% of a base CLIP score of 77 is 1.54
    assert evaluate_bar(_row("within %", 0.02, 77.0, 75.5, "higher"))["met"]
    assert not evaluate_bar(_row("within %", 0.02, 77.0, 75.4, "higher"))["met"]
    assert evaluate_bar(_row("within %", 0.02, 77.0, 80.0, "higher"))["met"]
