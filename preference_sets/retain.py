"""Retain sets: base-model images of prompts unrelated to any risk, for the trainer's anchoring term.

Diffusion-DPO only sees the prompts of its pairs; its KL-to-reference penalty acts there and nowhere
else, so a LoRA that removes a risk also drifts on unrelated prompts (measured on the synthetic world:
neutral-prompt CLIP score -3.6%). A retain set gives the trainer images x0 of such prompts, drawn from
the base model itself, on which it penalises ``||ε_θ(x_t, c) - ε_ref(x_t, c)||²`` (training/step.py).

Layout (same sharding and atomic write as a preference set)::

    <folder>/data/train-00000-of-00001.parquet   columns RETAIN_SCHEMA, images as raw PNG bytes
    <folder>/retain.json                         how it was made (prompt source, counts, filters)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import pyarrow as pa

from core.errors import DataError
from core.images import decode_image
from core.io import atomic_directory, atomic_write_json
from core.output_dir import write_marker
from preference_sets.io import DATA_DIR, DEFAULT_SHARD_SIZE, load_preference_set, write_parquet_shards

if TYPE_CHECKING:
    import datasets

RETAIN_SCHEMA = pa.schema(
    [
        pa.field("caption", pa.string()),  # the prompt the image was generated from (the training caption)
        pa.field("jpg", pa.binary()),  # encoded image bytes (PNG), native resolution
        pa.field("seed", pa.int64()),
        pa.field("model_id", pa.string()),
        pa.field("generation", pa.string()),  # JSON: sampler, steps, guidance, size
        pa.field("scores", pa.string()),  # JSON: scorer outputs that admitted the image
    ]
)
META_FILE = "retain.json"


def make_retain_row(caption: str, jpg: bytes, seed: int, model_id: str, generation: Mapping | str,
                    scores: Mapping[str, Any]) -> dict[str, Any]:
    if not caption:
        raise DataError("a retain image needs a non-empty caption")
    return {
        "caption": caption,
        "jpg": jpg,
        "seed": int(seed),
        "model_id": model_id,
        "generation": generation if isinstance(generation, str) else json.dumps(generation, sort_keys=True),
        "scores": json.dumps(scores, sort_keys=True),
    }


def write_retain_set(rows: Iterable[Mapping[str, Any]], folder: str | Path, meta: Mapping[str, Any],
                     shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = True) -> int:
    """Write all rows atomically (no folder, or a complete one); returns the row count."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise DataError(f"{folder} already exists; set overwrite to replace it")
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        count = write_parquet_shards(rows, tmp / DATA_DIR, RETAIN_SCHEMA, shard_size, desc="writing retain images", unit="image")
        atomic_write_json(tmp / META_FILE, {**meta, "images": count})
        write_marker(tmp, "retain_set")
    return count


def load_retain_set(folder: str | Path, expected_size: int | None = None) -> "datasets.Dataset":
    """The set as a ``datasets.Dataset``. Every image is decoded once here, so a corrupt or wrongly
    sized image fails before training starts, naming its row."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"retain set {folder} does not exist (curate with a `retain:` section, or set train.retain.data)")
    table = load_preference_set(folder, RETAIN_SCHEMA)
    for index, row in enumerate(table.select_columns(["jpg"])):  # the loaded table: no second parquet read
        image = decode_image(row["jpg"], f"retain set {folder}: row {index} image")
        if expected_size is not None and image.size != (expected_size, expected_size):
            raise DataError(
                f"retain set {folder}: row {index} image is {image.size[0]}x{image.size[1]} px, the model works at "
                f"{expected_size}x{expected_size}; regenerate the retain set with this model"
            )
    if len(table) == 0:
        raise DataError(f"retain set {folder} has no rows")
    return table

