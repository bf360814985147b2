"""Write the decisions back into a NEW version of the preference set.

Per annotated row:

* ``label_0``/``label_1`` from the adjudicated answer, else the gold answer, else the strict majority of
  the annotators' labels ("0" -> 1/0, "1" -> 0/1, "tie" -> 0.5/0.5), where a tie also needs
  ``tie_min_votes`` tie votes (one annotator's tie never sets a label alone);
* ``annotation_status`` "adjudicated" or "annotated";
* ``annotations`` a JSON list with every annotator's current decision (what they pressed, the
  left/right mapping, tags, note, first and last decision time, revision) plus the adjudication.

Rows whose annotators disagree and that nobody adjudicated follow ``unresolved``: "drop" (default, no
training signal we trust), "tie" (0.5/0.5) or "auto" (keep the automatic label). Rows nobody labelled
keep their automatic label and status "auto". The card keeps what the curator wrote and gains an
``annotation`` section (protocol + agreement) and a ``lineage`` entry.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from annotation.agreement import agreement_report, labels_by_item, resolve
from annotation.config import AnnotateConfig
from annotation.store import Store
from core.config import to_dict
from core.errors import DataError
from preference_sets.io import dataset_hash, iter_rows, read_card_info, write_preference_set

LABEL_0 = {"0": 1.0, "1": 0.0, "tie": 0.5}


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def next_version_folder(set_folder: str | Path) -> Path:
    """``.../preference_set`` -> ``.../preference_set-v2``; ``...-v2`` -> ``...-v3`` (first free one)."""
    folder = Path(set_folder)
    match = re.match(r"^(.*)-v(\d+)$", folder.name)
    stem, version = (match.group(1), int(match.group(2))) if match else (folder.name, 1)
    while True:
        version += 1
        candidate = folder.with_name(f"{stem}-v{version}")
        if not candidate.exists():
            return candidate


def annotation_entries(decisions: list[dict], gold_answer: str | None, adjudication: dict | None) -> list[dict]:
    """The provenance list written to the ``annotations`` column for one pair."""
    entries = []
    for d in decisions:
        entries.append({
            "annotator": d["annotator"],
            "role": "annotator",
            "decision": d["preferred"] if d["preferred"] is not None else "skip",
            "pressed": d["choice"],
            "left_column": d["left_column"],
            "tags": d["tags"],
            "note": d["note"],
            "first_decided_at": iso(d["first_decided_at"]),
            "decided_at": iso(d["decided_at"]),
            "revision": d["revision"],
            "gold_item": gold_answer is not None,
        })
    if gold_answer is not None:
        entries.append({"annotator": "gold", "role": "gold", "decision": gold_answer})
    if adjudication is not None:
        entries.append({
            "annotator": adjudication["adjudicator"],
            "role": "adjudicator",
            "decision": adjudication["answer"],
            "note": adjudication["note"],
            "decided_at": iso(adjudication["decided_at"]),
        })
    return entries


class Resolver:
    """Applies the decisions to rows; the same object counts (metadata pass) and rewrites (full pass)."""

    def __init__(self, store: Store, unresolved: str, tie_min_votes: int):
        self.items = {i["pair_id"]: i for i in store.items()}
        all_decisions = store.decisions()
        self.decisions: dict[str, list[dict]] = {}
        for d in all_decisions:
            self.decisions.setdefault(d["pair_id"], []).append(d)
        self.labels = labels_by_item(all_decisions)
        self.adjudications = store.adjudications()
        self.unresolved = unresolved
        self.tie_min_votes = tie_min_votes

    def apply(self, row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any] | None:
        """The row with labels/status/annotations updated, or None if it is dropped."""
        item = self.items.get(row["pair_id"])
        if item is None:
            counts["not_in_subset"] += 1
            return row
        pair_id = row["pair_id"]
        adjudication = self.adjudications.get(pair_id)
        answer, status = resolve(item, self.labels.get(pair_id, {}), adjudication, self.tie_min_votes)
        entries = annotation_entries(self.decisions.get(pair_id, []), item["gold_answer"], adjudication)
        row = {**row, "annotations": json.dumps(entries, sort_keys=True)}
        if status == "disputed":
            counts["disputed"] += 1
            if self.unresolved == "drop":
                counts["dropped"] += 1
                return None
            if self.unresolved == "tie":
                answer, status = "tie", "annotated"
            else:
                status = "auto"
        if answer is not None:
            row["label_0"] = LABEL_0[answer]
            row["label_1"] = 1.0 - row["label_0"]
            counts["changed_from_proposal"] += int(row["proposal"] != answer)
        row["annotation_status"] = status
        counts[status] += 1
        return row


def _new_counts() -> dict[str, int]:
    keys = ("annotated", "adjudicated", "auto", "disputed", "dropped", "changed_from_proposal", "not_in_subset")
    return {k: 0 for k in keys}


def annotated_rows(set_folder: Path, resolver: Resolver) -> Iterator[dict[str, Any]]:
    """The set's rows with the decisions applied (streamed: images are never all in memory)."""
    counts = _new_counts()
    for row in iter_rows(set_folder):
        new_row = resolver.apply(row, counts)
        if new_row is not None:
            yield new_row


def export_set(
    set_folder: str | Path, store: Store, cfg: AnnotateConfig, out_folder: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Write the new version; returns (folder, summary with the agreement report and counts)."""
    set_folder = Path(set_folder)
    out = Path(out_folder) if out_folder else next_version_folder(set_folder)
    if out.resolve() == set_folder.resolve():
        raise DataError(f"export folder {out} is the source set; an export is always a new version")
    items, decisions, adjudications = store.items(), store.decisions(), store.adjudications()
    if not decisions and not adjudications:
        raise DataError(f"{store.path} holds no decisions yet: nothing to export")
    report = agreement_report(items, decisions, adjudications, cfg.tie_votes_needed())
    resolver = Resolver(store, cfg.unresolved, cfg.tie_votes_needed())
    counts = _new_counts()  # a metadata-only pass first, so the card can state the counts
    for row in iter_rows(set_folder, columns=["pair_id", "proposal", "label_0", "label_1"]):
        resolver.apply(row, counts)
    card = read_card_info(set_folder)
    card["annotation"] = {
        "protocol": {
            "tool": "annotation (this repository), pairwise, keyboard-driven",
            "left_right_order": "randomised per annotator and per item; mapping recorded in annotations",
            "proposal_shown": cfg.show_proposal,
            "overlap": cfg.overlap,
            "gold_items": report["gold_items"],
            "gold_every": cfg.gold_every,
            "label_rule": "adjudicated > gold > strict majority of annotators; tie = 0.5/0.5 and needs "
                          f"{cfg.tie_votes_needed()} tie vote(s)",
            "unresolved": cfg.unresolved,
            "reviewer_wellbeing": f"images blurred and greyscale until revealed; break every {cfg.break_every} items",
            "reason_tags": cfg.reason_tags,
            "config": to_dict(cfg),
        },
        "agreement": report,
    }
    lineage = dict(card.get("lineage") or {})
    lineage["annotated_from"] = {"folder": str(set_folder), "dataset_hash": dataset_hash(set_folder),
                                 "database": str(store.path)}
    card["lineage"] = lineage
    card["annotation"]["export_counts"] = counts
    write_preference_set(annotated_rows(set_folder, resolver), out, card, overwrite=overwrite)
    return out, {"folder": str(out), "counts": counts, "agreement": report}
