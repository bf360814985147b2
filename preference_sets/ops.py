"""Set-level operations: merge several sets, split one into group-disjoint parts, export for diffusers
(import, the way in, is preference_sets/importer.py).

All outputs are written atomically (a failure leaves nothing behind) and record their lineage.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from core.errors import DataError
from core.io import atomic_directory, atomic_write_json, atomic_write_text
from core.output_dir import check_not_overlapping, write_marker
from preference_sets.card import render_export_card
from preference_sets.io import (
    DATA_DIR,
    DEFAULT_SHARD_SIZE,
    dataset_hash,
    iter_rows,
    read_card_info,
    write_parquet_shards,
    write_preference_set,
)
from preference_sets.schema import EXPORT_COLUMNS, EXPORT_SCHEMA, PREFERENCE_SCHEMA, TIE, preferred_image_hash
from preference_sets.sources import ProblemLog, content_hash, locate, screen_row, source_format
from preference_sets.sources import iter_rows as iter_source_rows

SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Columns a split may group by: plain strings (grouping by image bytes or labels makes no sense).
GROUPABLE_COLUMNS = tuple(f.name for f in PREFERENCE_SCHEMA if str(f.type) == "string")


def _source_entry(folder: Path) -> dict[str, Any]:
    return {"folder": str(folder), "dataset_hash": dataset_hash(folder)}


# ---------------------------------------------------------------------------------------------- merge


def plan_merge(folders: Sequence[str | Path]) -> tuple[set[tuple[int, int]], int]:
    """Which (source index, row index) rows to keep, and how many duplicates are dropped.

    The first occurrence of a ``pair_id`` wins. A later row with the same ``pair_id`` must make the same
    decision (same preferred image, or a tie); otherwise the sets disagree and merging would silently
    pick one label, so DataError names the pair and both sources.
    """
    first_seen: dict[str, tuple[int, int, str]] = {}  # pair_id -> (source, row, preferred image hash)
    keep: set[tuple[int, int]] = set()
    dropped = 0
    for source, folder in enumerate(folders):
        rows = iter_rows(folder, columns=["pair_id", "label_0", "jpg_0", "jpg_1"])
        for row_index, row in enumerate(rows):
            decision = preferred_image_hash(row)
            seen = first_seen.get(row["pair_id"])
            if seen is None:
                first_seen[row["pair_id"]] = (source, row_index, decision)
                keep.add((source, row_index))
            elif seen[2] != decision:
                raise DataError(
                    f"merge: pair_id {row['pair_id']!r} has conflicting labels: row {seen[1]} of "
                    f"{folders[seen[0]]} and row {row_index} of {folder} prefer different images"
                )
            else:
                dropped += 1
    return keep, dropped


def merge(
    folders: Sequence[str | Path],
    out: str | Path,
    card: Mapping[str, Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge sets into ``out``, deduplicating by ``pair_id``; returns a summary of what was kept."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise DataError("merge: no input sets given")
    if len(set(folders)) != len(folders):
        raise DataError(f"merge: an input set is listed twice: {[str(f) for f in folders]}")
    keep, dropped = plan_merge(folders)
    summary = {"op": "merge", "sources": [_source_entry(f) for f in folders], "duplicates_dropped": dropped}
    info = dict(card) if card is not None else {"title": "Merged safety preference set"}
    info["lineage"] = summary

    def kept_rows() -> Iterator[dict[str, Any]]:
        for source, folder in enumerate(folders):
            for row_index, row in enumerate(iter_rows(folder)):
                if (source, row_index) in keep:
                    yield row

    write_preference_set(kept_rows(), out, info, shard_size=shard_size, overwrite=overwrite)
    return {**summary, "rows": len(keep), "out": str(out)}


# ---------------------------------------------------------------------------------------------- split


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise DataError("split: no fractions given (e.g. train=0.9,val=0.1)")
    for name, fraction in fractions.items():
        if not SPLIT_NAME.match(name):
            raise DataError(f"split: split name {name!r} must use only letters, digits, '_' and '-'")
        if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and fraction > 0):
            raise DataError(f"split: fraction for {name!r} must be a positive number, got {fraction!r}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise DataError(f"split: fractions must sum to 1, they sum to {total:g} ({dict(fractions)})")
    return dict(fractions)


def assign_groups(group_sizes: Mapping[str, int], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Group -> split name, so that each split gets close to its fraction of rows.

    Groups are shuffled with ``seed`` (from a sorted start, so the result does not depend on input
    order) and each goes to the split furthest below its target row count. A group is never divided.
    """
    fractions = check_fractions(fractions)
    if len(group_sizes) < len(fractions):
        raise DataError(
            f"split: only {len(group_sizes)} distinct group(s) for {len(fractions)} splits; every split needs one"
        )
    groups = sorted(group_sizes)
    random.Random(seed).shuffle(groups)
    total = sum(group_sizes.values())
    filled = Counter({name: 0 for name in fractions})
    assignment = {}
    for position, group in enumerate(groups):
        empty = [name for name in fractions if filled[name] == 0]
        remaining_groups = len(groups) - position
        if empty and remaining_groups <= len(empty):
            name = empty[0]  # just enough groups left to give every split one
        else:
            name = max(fractions, key=lambda n: fractions[n] * total - filled[n])
        assignment[group] = name
        filled[name] += group_sizes[group]
    return assignment


def split(
    folder: str | Path,
    out_dir: str | Path,
    fractions: Mapping[str, float],
    seed: int = 0,
    by: str = "caption",
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/<name>/`` preference sets such that no ``by`` value appears in two splits."""
    folder, out_dir = Path(folder), Path(out_dir)
    if by not in GROUPABLE_COLUMNS:
        raise DataError(f"split: cannot group by {by!r}; choose one of {list(GROUPABLE_COLUMNS)}")
    fractions = check_fractions(fractions)
    keys = [row[by] for row in iter_rows(folder, columns=[by])]
    assignment = assign_groups(Counter(keys), fractions, seed)
    source_card = read_card_info(folder)
    lineage = {"op": "split", "source": _source_entry(folder), "fractions": fractions, "seed": seed, "by": by}
    counts = Counter(assignment[key] for key in keys)

    def rows_of(name: str) -> Iterator[dict[str, Any]]:
        for row in iter_rows(folder):
            if assignment[row[by]] == name:
                yield row

    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name in fractions:
            info = {**source_card, "lineage": {**lineage, "split": name}}
            info["title"] = f"{source_card.get('title', 'Safety preference set')} ({name} split)"
            write_preference_set(rows_of(name), tmp / name, info, shard_size=shard_size)
        write_marker(tmp, "preference_set_splits")
    return {**lineage, "rows": dict(counts), "out": str(out_dir)}


# --------------------------------------------------------------------------------------------- export


def export(
    folder: str | Path, out: str | Path, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
    split: str = "train",
) -> dict[str, Any]:
    """Export for diffusers' ``train_diffusion_dpo.py``: ties removed, one split named ``train``.

    Columns: ``caption, jpg_0, jpg_1, label_0, label_1`` (the script reads the first four). The folder
    loads with ``load_dataset(out)`` (README front matter) or ``load_dataset("parquet", data_files=...)``.
    ``folder`` is any set ``sources.locate`` finds. Every row is checked first (caption, both images decode,
    labels): a bad row or an unreadable file fails the export, naming it, and nothing is written.
    """
    out = Path(out)
    check_not_overlapping(out, [folder], "export")
    source = locate(folder, split)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    fmt = source_format(source)
    counts = Counter()
    problems = ProblemLog(f"export of {source.path}")
    finished = False

    def decided_rows() -> Iterator[dict[str, Any]]:
        nonlocal finished
        for index, label, row in iter_source_rows(source, EXPORT_COLUMNS):
            counts["rows_in"] += 1
            where = f"row {index} ({label})"
            clean, found = screen_row(row, where)
            if found:
                problems.add(where, found)
            elif clean["label_0"] == TIE:
                counts["ties_removed"] += 1
            else:
                counts["rows_out"] += 1
                yield clean
        problems.raise_if_any()
        finished = True

    with atomic_directory(out, overwrite=overwrite) as tmp:
        try:
            write_parquet_shards(decided_rows(), tmp / DATA_DIR, EXPORT_SCHEMA, shard_size, desc="exporting pairs")
        except DataError as exc:
            if finished and counts["rows_out"] == 0:  # every row read and valid, and every one a tie
                removed = counts["ties_removed"]
                raise DataError(f"export of {source.path}: no pairs left after removing {removed} tie(s)") from exc
            raise
        summary = {
            "op": "export",
            "format": "diffusers train_diffusion_dpo.py (Pick-a-Pic columns)",
            "source": {"folder": str(source.path), "dataset_hash": content_hash(source), "layout": source.layout,
                       "format": fmt},
            "rows_in": counts["rows_in"],
            "ties_removed": counts["ties_removed"],
            "rows": counts["rows_out"],
        }
        atomic_write_json(tmp / "export.json", summary)
        atomic_write_text(tmp / "README.md", render_export_card(summary))
        write_marker(tmp, "export")
    return {**summary, "out": str(out)}
