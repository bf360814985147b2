"""Agreement statistics and label resolution: pure functions over plain lists and dicts.

Labels are in the set's own terms: "0" (image jpg_0 preferred), "1", or "tie"; skips are not labels.

* Cohen's kappa (Cohen 1960) for one pair of annotators on the items both labelled:
  ``kappa = (p_o - p_e) / (1 - p_e)``, p_o the observed agreement, p_e = sum_k p_A(k) p_B(k).
* Krippendorff's alpha, nominal metric (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"),
  over all annotators and units with >= 2 labels, missing labels allowed:
  ``alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k`` with the coincidence matrix
  ``o_ck = sum_u (number of c-k pairs in unit u) / (m_u - 1)``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Iterable, Optional

ANSWERS = ("0", "1", "tie")


def cohen_kappa(labels_a: list[str], labels_b: list[str]) -> float:
    """Kappa for two aligned label lists; NaN when undefined (no items, or p_e == 1)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"cohen_kappa needs aligned lists, got {len(labels_a)} and {len(labels_b)} labels")
    n = len(labels_a)
    if n == 0:
        return math.nan
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[k] * count_b[k] for k in set(count_a) | set(count_b)) / (n * n)
    if math.isclose(expected, 1.0):
        return math.nan
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha_nominal(units: Iterable[list]) -> float:
    """Alpha over units (each a list of the labels it received; None = missing). NaN if undefined."""
    coincidence: dict[tuple, float] = defaultdict(float)
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue  # a unit labelled once carries no information about agreement
        for i, j in itertools.permutations(range(m), 2):
            coincidence[(values[i], values[j])] += 1.0 / (m - 1)
    totals: dict = defaultdict(float)
    for (c, _k), weight in coincidence.items():
        totals[c] += weight
    n = sum(totals.values())
    if n <= 1:
        return math.nan
    disagree_observed = sum(w for (c, k), w in coincidence.items() if c != k)
    disagree_expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if disagree_expected == 0:
        return math.nan
    return 1.0 - (n - 1) * disagree_observed / disagree_expected


def labels_by_item(decisions: list[dict]) -> dict[str, dict[str, str]]:
    """{pair_id: {annotator: "0"|"1"|"tie"}} from decision rows (skips dropped)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for d in decisions:
        if d["preferred"] is not None:
            out[d["pair_id"]][d["annotator"]] = d["preferred"]
    return dict(out)


def majority(labels: list[str]) -> Optional[str]:
    """The label held by more than half of the labels, else None (a split needs adjudication)."""
    if not labels:
        return None
    label, count = Counter(labels).most_common(1)[0]
    return label if count * 2 > len(labels) else None


def resolve(
    item: dict, labels: dict[str, str], adjudication: Optional[dict], tie_min_votes: int = 2
) -> tuple[Optional[str], str]:
    """(answer, status) for one item: adjudicated > gold answer > strict majority of the votes.

    A tie also needs ``tie_min_votes`` tie votes: a tie turns a pair into a 0.5/0.5 training label,
    and one annotator's tie (the others skipped or have not answered yet) must not set that alone.
    status is "adjudicated", "annotated", "disputed" (labels, but no answer this rule accepts) or
    "auto" (no labels).
    """
    if adjudication is not None:
        return adjudication["answer"], "adjudicated"
    if item.get("gold_answer"):
        return item["gold_answer"], "adjudicated"
    if not labels:
        return None, "auto"
    votes = list(labels.values())
    answer = majority(votes)
    if answer == "tie" and votes.count("tie") < tie_min_votes:
        answer = None
    return (answer, "annotated") if answer is not None else (None, "disputed")


def disputed_items(
    items: list[dict], decisions: list[dict], adjudications: dict[str, dict], tie_min_votes: int = 2
) -> list[dict]:
    """The adjudication queue: non-gold, non-adjudicated items whose labels are not all the same, or
    that the votes do not settle (a tie with too few tie votes)."""
    by_item = labels_by_item(decisions)
    queue = []
    for item in items:
        labels = by_item.get(item["pair_id"], {})
        if item.get("gold_answer") or item["pair_id"] in adjudications:
            continue
        answer, status = resolve(item, labels, None, tie_min_votes)
        if len(set(labels.values())) < 2 and status != "disputed":
            continue
        queue.append({"pair_id": item["pair_id"], "risk": item["risk"], "caption": item["caption"],
                      "labels": labels, "majority": answer})
    return queue


def agreement_report(
    items: list[dict], decisions: list[dict], adjudications: dict[str, dict], tie_min_votes: int = 2
) -> dict:
    """Everything the card and `annotation.cli report` show: kappas, alpha, gold accuracy, counts."""
    gold = {i["pair_id"]: i["gold_answer"] for i in items if i.get("gold_answer")}
    risk_of = {i["pair_id"]: i["risk"] for i in items}
    by_item = labels_by_item(decisions)
    regular = {p: labels for p, labels in by_item.items() if p not in gold}
    annotators = sorted({d["annotator"] for d in decisions})

    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        shared = [p for p, labels in regular.items() if a in labels and b in labels]
        kappa = cohen_kappa([regular[p][a] for p in shared], [regular[p][b] for p in shared])
        pairs.append({"annotators": [a, b], "shared_items": len(shared), "kappa": _finite(kappa)})

    alpha = krippendorff_alpha_nominal(list(labels.values()) for labels in regular.values())

    gold_by_annotator: dict[str, list[bool]] = defaultdict(list)
    gold_by_risk: dict[str, list[bool]] = defaultdict(list)
    for pair_id, labels in by_item.items():
        if pair_id not in gold:
            continue
        for annotator, label in labels.items():
            correct = label == gold[pair_id]
            gold_by_annotator[annotator].append(correct)
            gold_by_risk[risk_of[pair_id]].append(correct)

    statuses = Counter(
        resolve(i, by_item.get(i["pair_id"], {}), adjudications.get(i["pair_id"]), tie_min_votes)[1] for i in items
    )
    return {
        "annotators": annotators,
        "items": len(items),
        "gold_items": len(gold),
        "decisions": len(decisions),
        "labels": sum(len(v) for v in by_item.values()),
        "skips": sum(1 for d in decisions if d["preferred"] is None),
        "status_counts": dict(sorted(statuses.items())),
        "cohen_kappa_pairs": pairs,
        "cohen_kappa_mean": _finite(_mean([p["kappa"] for p in pairs if p["kappa"] is not None])),
        "krippendorff_alpha": _finite(alpha),
        "gold_accuracy_by_annotator": {a: _accuracy(v) for a, v in sorted(gold_by_annotator.items())},
        "gold_accuracy_by_risk": {r: _accuracy(v) for r, v in sorted(gold_by_risk.items())},
        "disputed": len(disputed_items(items, decisions, adjudications, tie_min_votes)),
    }


def _accuracy(flags: list[bool]) -> dict:
    return {"n": len(flags), "accuracy": sum(flags) / len(flags) if flags else None}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _finite(x: float) -> Optional[float]:
    """NaN -> None so the report stays valid JSON."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
