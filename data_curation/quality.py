"""How much to trust a model scorer: precision and recall against a reference (the oracle).

Compared image by image on every curated image the two scorers both labelled. Binary labels that
both give (``exposed``, ``symbol_present``...) get one precision/recall each; categorical labels
(``group``, ``outfit``...) get one per value (``group=zorvan``: "the scorer says zorvan" vs "it is").
Images the reference marks invalid (no single figure) are left out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


def _figures(tp: int, fp: int, fn: int) -> dict[str, Any]:
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "support": tp + fn,  # reference positives
        "predicted": tp + fp,
    }


def precision_recall(score_sets: Iterable[dict[str, dict]], scorer: str, reference: str) -> dict[str, dict]:
    """``{concept: {precision, recall, support, predicted}}`` of ``scorer`` measured against ``reference``."""
    counts: dict[str, list[int]] = {}  # concept -> [tp, fp, fn]
    for scores in score_sets:
        if scorer not in scores or reference not in scores:
            continue
        ref, got = scores[reference]["labels"], scores[scorer]["labels"]
        if not ref.get("valid", True):
            continue
        for name in sorted(set(ref) & set(got) - {"valid"}):
            truth, guess = ref[name], got[name]
            if isinstance(truth, bool):
                pairs = [(name, bool(truth), bool(guess))]
            else:
                values = {truth, guess}
                pairs = [(f"{name}={v}", truth == v, guess == v) for v in values]
            for concept, t, g in pairs:
                c = counts.setdefault(concept, [0, 0, 0])
                c[0] += t and g
                c[1] += (not t) and g
                c[2] += t and not g
    return {concept: _figures(*c) for concept, c in sorted(counts.items())}


def verify_pairs(judge, pairs, reference: str) -> dict[str, Any]:
    """Re-judge kept pairs with the ``reference`` scorer (the oracle): is the preferred image really
    safe and the rejected one really risky? Meaningful when the pairs were picked by a model scorer;
    with the oracle as detector it is a consistency check."""
    ref_cfg = dataclasses.replace(
        judge.cfg,
        detector=dataclasses.replace(judge.cfg.detector, scorer=reference),
        alignment=dataclasses.replace(judge.cfg.alignment, scorer=reference, min_clip_score=None),
    )
    ref = dataclasses.replace(judge, cfg=ref_cfg)  # same stereotype schedules (surplus groups)
    if judge.keeps_request:  # honour: the preferred image shows the requested content, the rejected one lacks it
        return _verify_request_pairs(ref, pairs, reference)
    checked = preferred_safe = rejected_risky = 0
    for pair in pairs:
        if reference not in pair.preferred.scores or pair.record is None:
            continue
        checked += 1
        wanted = pair.note.get("preferred_group")
        preferred_safe += bool(ref.is_safe(pair.preferred.scores, pair.record, wanted) and ref.is_valid(pair.preferred.scores))
        rejected_risky += bool(ref.carries_risk(pair.rejected.scores, pair.record))
    share = lambda n: round(n / checked, 4) if checked else None  # noqa: E731
    return {"pairs_checked": checked, "preferred_safe": share(preferred_safe), "rejected_risky": share(rejected_risky)}


def _verify_request_pairs(ref, pairs, reference: str) -> dict[str, Any]:
    checked = preferred_shows = rejected_lacks = 0
    for pair in pairs:
        if reference not in pair.preferred.scores or pair.record is None:
            continue
        checked += 1
        preferred_shows += bool(ref.carries_risk(pair.preferred.scores, pair.record))
        rejected_lacks += bool(ref.is_safe(pair.rejected.scores, pair.record))
    share = lambda n: round(n / checked, 4) if checked else None  # noqa: E731
    return {"pairs_checked": checked, "preferred_shows_request": share(preferred_shows),
            "rejected_lacks_request": share(rejected_lacks)}
