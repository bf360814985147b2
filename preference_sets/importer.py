"""``import``: bring a preference set made elsewhere into this project's format.

Reads whatever ``preference_sets.sources.locate`` finds (a Pick-a-Pic parquet file or folder, in the HF
``data/`` layout or flat, or a ``datasets`` save_to_disk folder). Rows with only the five Pick-a-Pic columns
get ``schema.provenance_defaults`` (risk from ``risk``, strategy ``external``, seeds -1, ...), which the
set's card lists; a set already in this project's format keeps its provenance. Other source columns are
left out (the card names them).

Every row is checked (caption, both images decode, labels 1/0, 0/1 or a 0.5 tie) and one error lists every
bad row, naming its row number and file; nothing is written. ``skip_bad_rows`` leaves bad rows out instead
and records them in the card. Ties are kept, as in any preference set (the trainer leaves them out).
A pair seen twice (same caption and images) is kept once: the first row wins, and the card counts the
repeats, separately for repeats whose label disagrees with the first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from core.errors import DataError
from core.output_dir import check_not_overlapping
from preference_sets.io import DEFAULT_SHARD_SIZE, write_preference_set
from preference_sets.schema import (
    COLUMN_NAMES,
    DEFAULT_RISK,
    EXTERNAL_STRATEGY,
    IMAGE_COLUMNS,
    make_pair_row,
    pair_key,
    preferred_image_hash,
    provenance_defaults,
)
from preference_sets.sources import (
    FULL,
    REQUIRED_COLUMNS,
    ProblemLog,
    content_hash,
    fit_image,
    iter_rows,
    locate,
    parts,
    screen_row,
    source_format,
)

LISTED_BAD_ROWS = 20  # bad rows named in the card when skip_bad_rows leaves them out


def import_set(
    src: str | Path,
    dest: str | Path,
    *,
    split: str = "train",
    risk: str = DEFAULT_RISK,
    resolution: int | None = None,
    skip_bad_rows: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the set at ``src`` as a preference set at ``dest``; returns what was read, kept and left out.

    ``resolution``: resize (shorter side, bilinear) and centre-crop every image that is not resolution² px,
    as diffusers' DPO script does on the fly; this project's trainer needs the model's own size.
    """
    dest = Path(dest)
    check_not_overlapping(dest, [src], "import")
    if not isinstance(risk, str) or not risk.strip():
        raise DataError("import: --risk must be a non-empty name")
    if resolution is not None and resolution < 8:
        raise DataError(f"import: --resolution must be a pixel size >= 8, got {resolution}")
    source = locate(src, split)
    if dest.exists() and not overwrite:
        raise DataError(f"{dest} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    fmt = source_format(source)
    columns = list(COLUMN_NAMES) if fmt == FULL else list(REQUIRED_COLUMNS)
    ignored = [name for name in parts(source)[0].schema().names if name not in columns]
    counts = Counter()
    problems = ProblemLog(f"import of {source.path}")
    first_seen: dict[str, tuple[int, str]] = {}  # pair_id -> (row, preferred image hash)

    def rows() -> Iterator[dict[str, Any]]:
        for index, label, row in iter_rows(source, columns):
            counts["rows_in"] += 1
            where = f"row {index} ({label})"
            clean, found = screen_row(row, where)
            if found:
                problems.add(where, found)
                continue
            pair_id = clean.get("pair_id") or pair_key(clean["caption"], clean["jpg_0"], clean["jpg_1"])
            if resolution is not None:
                for column in IMAGE_COLUMNS:
                    fitted = fit_image(clean[column], resolution, f"{where}: {column}")
                    counts["images_resized"] += fitted is not clean[column]
                    clean[column] = fitted
            if fmt == FULL:
                out = {name: clean[name] for name in COLUMN_NAMES}
            else:
                out = make_pair_row(clean["caption"], clean["jpg_0"], clean["jpg_1"], clean["label_0"],
                                    risk=risk, strategy=EXTERNAL_STRATEGY, pair_id=pair_id)
            decision = preferred_image_hash(out)
            seen = first_seen.get(pair_id)
            if seen is not None:
                counts["repeats_dropped" if seen[1] == decision else "conflicting_repeats_dropped"] += 1
                continue
            first_seen[pair_id] = (index, decision)
            counts["rows"] += 1
            yield out
        if not skip_bad_rows:
            problems.raise_if_any("\n(--skip-bad-rows leaves such rows out and lists them in the set's card)")
        elif counts["rows"] == 0:
            problems.raise_if_any("\n(every row was bad: nothing to import)")

    lineage: dict[str, Any] = {
        "op": "import",
        "source": {"path": str(source.path), "layout": source.layout, "split": source.split,
                   "files": len(source.files), "format": fmt, "content_hash": content_hash(source)},
        "columns_left_out": ignored,
        "resolution": resolution,
    }

    def card() -> dict[str, Any]:
        # Called after the last row: the counts are final.
        lineage.update({key: counts[key] for key in ("rows_in", "rows", "repeats_dropped",
                                                     "conflicting_repeats_dropped", "images_resized")})
        lineage["bad_rows_left_out"] = len(problems.problems)
        if problems.problems:
            lineage["bad_rows"] = problems.problems[:LISTED_BAD_ROWS]
        images = (f"resized and centre-cropped to {resolution}x{resolution} px (as PNG) where they were another size"
                  if resolution else "the source's encoded bytes, unchanged")
        return {
            "title": f"Imported preference set: {source.path.name}",
            "description": (
                f"Imported with `python -m preference_sets.cli import` from {source.describe()}, "
                f"in {fmt} format. Images: {images}. Labels as the source gave them; ties kept (the trainer "
                "leaves them out). A pair that appeared more than once is kept once (its first row)."
            ),
            "lineage": lineage,
            "provenance_defaults": provenance_defaults(risk) if fmt != FULL else None,
        }

    write_preference_set(rows(), dest, card, shard_size=shard_size, overwrite=overwrite)
    return {**lineage, "out": str(dest)}
