"""Batch moderation of a preference set: flag its images with the configured scorers and write a report,
leaving the set as it is.

    python -m preference_sets.cli moderate --set runs/demo/preference_set --config configs/moderation/world.yaml

The report folder (``--out``, default ``<set>_moderation`` beside the set) holds:

* ``flags.parquet``: one row per image, i.e. per pair and side: the row index, ``pair_id``, ``side`` (0 or 1),
  ``role`` (preferred, rejected or tie, from the labels), caption, risk, ``flagged``, ``flags`` (JSON list of the
  flag names raised) and ``outputs`` (JSON: every scorer's scores and labels);
* ``summary.json``: counts of pairs, images, flagged images and pairs, per flag, per role (a flagged *preferred*
  image is the case to review first: training pulls the model toward it) and per risk, with the set's dataset
  hash;
* ``resolved_config.yaml``: the moderation config used; and the output-folder marker.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.config import write_resolved_config
from core.images import decode_image
from core.io import atomic_directory, atomic_write_json
from core.output_dir import check_not_overlapping, check_output_dir, write_marker
from mitigations.moderation import ImageModerator
from preference_sets.io import dataset_hash, iter_rows

COLUMNS = ["pair_id", "caption", "risk", "label_0", "label_1", "jpg_0", "jpg_1"]
REPORT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("pair_id", pa.string()), ("side", pa.int64()), ("role", pa.string()),
    ("caption", pa.string()), ("risk", pa.string()), ("flagged", pa.bool_()), ("flags", pa.string()),
    ("outputs", pa.string()),
])


def default_report_dir(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.with_name(f"{folder.name}_moderation")


def _role(label: float) -> str:
    return "tie" if label == 0.5 else ("preferred" if label == 1.0 else "rejected")


def _pairs(folder: Path, batch_pairs: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    batch = []
    for index, row in enumerate(iter_rows(folder, columns=COLUMNS)):
        batch.append((index, row))
        if len(batch) == batch_pairs:
            yield batch
            batch = []
    if batch:
        yield batch


def moderate_set(folder: str | Path, moderator: ImageModerator, out: str | Path | None = None,
                 overwrite: bool = False, batch_pairs: int = 16) -> dict[str, Any]:
    """Flag every image of the set at ``folder``; write the report to ``out``; return the summary."""
    folder = Path(folder)
    out = Path(out) if out is not None else default_report_dir(folder)
    check_not_overlapping(out, [folder], "moderate")
    check_output_dir(out, overwrite, "--out")
    hash_before = dataset_hash(folder)
    records: list[dict[str, Any]] = []
    for batch in _pairs(folder, batch_pairs):
        images = []
        for index, row in batch:
            for side in (0, 1):
                image = decode_image(row[f"jpg_{side}"], f"{folder} row {index} jpg_{side}")
                images.append(np.asarray(image, dtype=np.uint8))
        verdicts = iter(moderator.moderate(images))
        for index, row in batch:
            for side in (0, 1):
                verdict = next(verdicts)
                records.append({
                    "row": index, "pair_id": row["pair_id"], "side": side, "role": _role(row[f"label_{side}"]),
                    "caption": row["caption"], "risk": row["risk"], "flagged": verdict.flagged,
                    "flags": json.dumps(list(verdict.flags)),
                    "outputs": json.dumps(verdict.outputs, sort_keys=True, default=str),
                })
    summary = summarise(records, [rule.name for rule in moderator.config.flags])
    summary.update({"set": str(folder), "dataset_hash": hash_before, "report": str(out)})
    with atomic_directory(out, overwrite=True) as tmp:
        pq.write_table(pa.Table.from_pylist(records, schema=REPORT_SCHEMA), tmp / "flags.parquet")
        atomic_write_json(tmp / "summary.json", summary)
        write_resolved_config(moderator.config, tmp)
        write_marker(tmp, "moderation_report")
    return summary


def summarise(records: list[dict[str, Any]], flag_names: list[str]) -> dict[str, Any]:
    """Counts over the report rows: pairs, images, flagged images and pairs, per flag, per role, per risk."""
    flagged = [r for r in records if r["flagged"]]
    by_flag = Counter({name: 0 for name in flag_names})
    for record in flagged:
        by_flag.update(json.loads(record["flags"]))
    by_risk: dict[str, dict[str, int]] = defaultdict(lambda: {"pairs": 0, "flagged_images": 0})
    for record in records:
        by_risk[record["risk"]]["pairs"] += record["side"] == 0
        by_risk[record["risk"]]["flagged_images"] += record["flagged"]
    return {
        "pairs": len({r["row"] for r in records}),
        "images": len(records),
        "flagged_images": len(flagged),
        "flagged_pairs": len({r["row"] for r in flagged}),
        "by_flag": dict(by_flag),
        "flagged_by_role": {role: sum(r["role"] == role for r in flagged) for role in ("preferred", "rejected", "tie")},
        "by_risk": dict(sorted(by_risk.items())),
    }
