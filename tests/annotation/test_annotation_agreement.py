"""Agreement statistics against published worked examples, and label resolution."""

from __future__ import annotations

import math

import pytest

from annotation.agreement import (
    agreement_report,
    cohen_kappa,
    disputed_items,
    krippendorff_alpha_nominal,
    majority,
    resolve,
)


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_edges():
    assert cohen_kappa(["0", "1", "tie"], ["0", "1", "tie"]) == pytest.approx(1.0)
    assert cohen_kappa(["0", "1"], ["1", "0"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["0", "0"], ["0", "0"]))  # p_e = 1: undefined, not "perfect"
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError):
        cohen_kappa(["0"], ["0", "1"])


def test_krippendorff_alpha_matches_krippendorffs_nominal_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units, nominal:
    # alpha = 0.743. Columns are units; None = missing.
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [list(column) for column in zip(*coders)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_edges():
    assert krippendorff_alpha_nominal([["0", "0"], ["1", "1"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["0"], ["1"]]))  # no unit has two labels
    assert krippendorff_alpha_nominal([["0", "1"], ["1", "0"]]) < 0


def test_majority_needs_more_than_half():
    assert majority(["0", "0", "1"]) == "0"
    assert majority(["0", "1"]) is None
    assert majority(["0", "1", "tie", "0"]) is None  # 2 of 4 is not a majority
    assert majority([]) is None


def test_resolve_prefers_adjudication_then_gold_then_majority():
    item = {"pair_id": "p", "gold_answer": None}
    assert resolve(item, {"a": "1", "b": "1"}, None) == ("1", "annotated")
    assert resolve(item, {"a": "1", "b": "0"}, None) == (None, "disputed")
    assert resolve(item, {}, None) == (None, "auto")
    assert resolve(item, {"a": "1", "b": "0"}, {"answer": "tie"}) == ("tie", "adjudicated")
    assert resolve({"pair_id": "g", "gold_answer": "0"}, {"a": "1"}, None) == ("0", "adjudicated")


def _decision(pair, annotator, preferred):
    return {"pair_id": pair, "annotator": annotator, "preferred": preferred}


def test_report_and_queue():
    items = [{"pair_id": p, "risk": r, "caption": p, "gold_answer": g}
             for p, r, g in [("p1", "exposure", None), ("p2", "exposure", None), ("p3", "stereotype", None),
                             ("g1", "exposure", "0"), ("g2", "stereotype", "1")]]
    decisions = [
        _decision("p1", "ann", "0"), _decision("p1", "bob", "0"),
        _decision("p2", "ann", "1"), _decision("p2", "bob", "0"),
        _decision("p3", "ann", "tie"), _decision("p3", "bob", None),  # bob skipped p3
        _decision("g1", "ann", "0"), _decision("g1", "bob", "1"),
        _decision("g2", "ann", "1"), _decision("g2", "bob", "1"),
    ]
    report = agreement_report(items, decisions, {})
    assert report["annotators"] == ["ann", "bob"]
    assert report["skips"] == 1
    (pair,) = report["cohen_kappa_pairs"]
    assert pair["shared_items"] == 2  # p1, p2 (gold items and skips excluded)
    assert report["gold_accuracy_by_annotator"] == {"ann": {"n": 2, "accuracy": 1.0}, "bob": {"n": 2, "accuracy": 0.5}}
    assert report["gold_accuracy_by_risk"]["exposure"] == {"n": 2, "accuracy": 0.5}
    assert report["gold_accuracy_by_risk"]["stereotype"] == {"n": 2, "accuracy": 1.0}
    queue = disputed_items(items, decisions, {})
    assert [q["pair_id"] for q in queue] == ["p2", "p3"]  # p3: one tie and a skip settle nothing
    assert disputed_items(items, decisions, {"p2": {"answer": "0"}, "p3": {"answer": "tie"}}) == []
    assert report["status_counts"] == {"adjudicated": 2, "annotated": 1, "disputed": 2}


def test_a_lone_tie_does_not_decide_a_label():
    item = {"pair_id": "p", "gold_answer": None}
    assert resolve(item, {"a": "tie"}, None) == (None, "disputed")  # the others skipped or are pending
    assert resolve(item, {"a": "tie", "b": "0", "c": "1"}, None) == (None, "disputed")
    assert resolve(item, {"a": "tie", "b": "tie"}, None) == ("tie", "annotated")
    assert resolve(item, {"a": "tie", "b": "tie", "c": "0"}, None) == ("tie", "annotated")
    assert resolve(item, {"a": "0", "b": "0", "c": "tie"}, None) == ("0", "annotated")
    assert resolve(item, {"a": "tie"}, None, tie_min_votes=1) == ("tie", "annotated")  # e.g. overlap 1
