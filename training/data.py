"""Preference pairs for training: read + validate a preference set, drop ties, order winner/loser.

The set is anything ``preference_sets.sources.locate`` finds: this project's folder, or a set with only the
five Pick-a-Pic columns (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``, ``label_1``) as a flat folder of
parquet files, a ``data/`` folder, a single parquet file or a save_to_disk folder, which is what
``preference_sets.cli export`` writes. Such a set's pairs get the provenance defaults of an import
(``preference_sets.schema.provenance_defaults``); the trainer reads only their risk
(``preference_sets.schema.DEFAULT_RISK``). Ties (0.5/0.5) are counted and left out.

Nothing here touches a GPU: a bad set (missing folder, wrong schema, corrupt image, all ties, wrong
resolution) fails here, before any model weights are loaded (the resolution comes from the JSON configs).

Pairs stay in the memory-mapped Arrow table; only two index arrays are held (row, winner column), so a
Pick-a-Pic-sized set does not have to fit in RAM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError, ModelPathError
from core.images import decode_image
from preference_sets.io import dataset_hash
from preference_sets.retain import load_retain_set
from preference_sets.schema import DEFAULT_RISK
from preference_sets.sources import FULL, content_hash, image_bytes, load_dataset, locate
from preference_sets.validate import validate_set

# Columns the trainer reads (the same ones diffusers' train_diffusion_dpo.py reads, plus label_1).
REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


@dataclass
class PreferencePairs:
    """Non-tie pairs of a preference set, in set order, winner first."""

    folder: Path  # the path the set was read from (a folder or a parquet file)
    table: object  # datasets.Dataset with at least REQUIRED_COLUMNS (images: bytes, or datasets.Image structs)
    rows: np.ndarray  # (N,) int64 row numbers in ``table`` of the kept pairs
    winner_is_0: np.ndarray  # (N,) bool: jpg_0 is the preferred image
    set_hash: str
    total_rows: int
    ties: int

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self) -> list[str]:
        column = self.table["caption"]
        return [column[int(r)] for r in self.rows]

    def risks(self) -> list[str]:
        """Risk name of each kept pair (DEFAULT_RISK where the set has no ``risk`` column, e.g. Pick-a-Pic)."""
        if "risk" not in self.table.column_names:
            return [DEFAULT_RISK] * len(self)
        column = self.table["risk"]
        return [column[int(r)] or "" for r in self.rows]

    def image_bytes(self, index: int) -> tuple[bytes, bytes]:
        """(winner image bytes, loser image bytes) of kept pair ``index``."""
        row_number = int(self.rows[index])
        row = self.table[row_number]
        images = [image_bytes(row[c], f"{self.folder}: row {row_number} {c}") for c in ("jpg_0", "jpg_1")]
        return (images[0], images[1]) if self.winner_is_0[index] else (images[1], images[0])

    def counts(self) -> dict:
        return {"rows": self.total_rows, "ties_excluded": self.ties, "pairs_used": len(self)}


def model_resolution(model_path: str | Path) -> int:
    """Native image size in pixels: vae_scale_factor × unet.config.sample_size, from the JSON configs."""
    model_path = Path(model_path)
    try:
        unet_cfg = json.loads((model_path / "unet" / "config.json").read_text())
        vae_cfg = json.loads((model_path / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelPathError(f"model folder {model_path}: cannot read unet/vae config.json ({exc})") from exc
    vae_scale_factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    return int(vae_scale_factor * unet_cfg["sample_size"])


def select_pairs(label_0: np.ndarray, label_1: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept row numbers, winner_is_0, tie count). Labels must be 1/0, 0/1 or 0.5/0.5 (a tie)."""
    label_0 = np.asarray(label_0, dtype=np.float64)
    label_1 = np.asarray(label_1, dtype=np.float64)
    win_0 = (label_0 == 1.0) & (label_1 == 0.0)
    win_1 = (label_0 == 0.0) & (label_1 == 1.0)
    tie = (label_0 == 0.5) & (label_1 == 0.5)
    bad = ~(win_0 | win_1 | tie)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: row {first} has labels ({label_0[first]}, {label_1[first]}); "
            "expected (1, 0), (0, 1) or a tie (0.5, 0.5)"
        )
    kept = np.flatnonzero(win_0 | win_1).astype(np.int64)
    return kept, win_0[kept], int(tie.sum())


def load_pairs(folder: str | Path, resolution: int, max_pairs: int | None = None) -> PreferencePairs:
    """Validate a preference set fully (schema, every image decodes and is resolution² px, labels),
    then keep the non-tie pairs. Ties are counted and excluded; fails if nothing is left.
    ``folder``: a preference set or a five-column Pick-a-Pic set in any layout (module docstring)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"preference set {folder} does not exist (run `make curate`, or set train.data to a "
                        "preference set, a Pick-a-Pic parquet file or folder, or a save_to_disk folder)")
    report = validate_set(folder, expected_size=resolution)
    report.raise_if_invalid()
    source = locate(folder)
    columns = list(REQUIRED_COLUMNS) + (["risk"] if report.counts["format"] == FULL else [])
    table = load_dataset(source, columns)
    rows, winner_is_0, ties = select_pairs(table["label_0"], table["label_1"], str(folder))
    if len(rows) == 0:
        raise DataError(
            f"preference set {folder}: no usable pairs ({len(table)} rows, all {ties} are ties); "
            "ties carry no preference, so there is nothing to train on"
        )
    if max_pairs is not None:
        rows, winner_is_0 = rows[:max_pairs], winner_is_0[:max_pairs]
    return PreferencePairs(folder, table, rows, winner_is_0, content_hash(source), len(table), ties)


def image_to_tensor(data: bytes, resolution: int, what: str) -> torch.Tensor:
    """Encoded image -> float32 (3, H, W) in [-1, 1]; DataError if corrupt or not resolution² pixels."""
    return image_to_uint8(data, resolution, what).float().div(127.5).sub(1.0)


def image_to_uint8(data: bytes, resolution: int, what: str) -> torch.Tensor:
    """Encoded image -> uint8 (3, H, W); DataError if corrupt or not resolution² pixels."""
    image = decode_image(data, what)
    if image.size != (resolution, resolution):
        raise DataError(
            f"{what} is {image.size[0]}x{image.size[1]} px but the model works at {resolution}x{resolution} "
            "(vae_scale_factor x unet sample_size); regenerate the set with this model"
        )
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return array.permute(2, 0, 1)


def pair_pixels(pairs: PreferencePairs, indices: list[int], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(winners, losers), each float32 (B, 3, H, W) in [-1, 1]."""
    winners, losers = [], []
    for i in indices:
        w, l_ = pairs.image_bytes(i)
        row = int(pairs.rows[i])
        winners.append(image_to_tensor(w, resolution, f"{pairs.folder}: row {row} preferred image"))
        losers.append(image_to_tensor(l_, resolution, f"{pairs.folder}: row {row} rejected image"))
    return torch.stack(winners), torch.stack(losers)


@dataclass
class RetainImages:
    """A retain set (preference_sets/retain.py): base-model images of risk-free prompts."""

    folder: Path
    table: object  # datasets.Dataset with columns caption, jpg, ...
    set_hash: str

    def __len__(self) -> int:
        return len(self.table)

    def captions(self) -> list[str]:
        return list(self.table["caption"])

    def pixels(self, indices: list[int], resolution: int) -> torch.Tensor:
        """float32 (k, 3, H, W) in [-1, 1]."""
        column = self.table.select(indices)["jpg"]
        return torch.stack([
            image_to_tensor(data, resolution, f"retain set {self.folder}: row {i} image")
            for i, data in zip(indices, column)
        ])


def load_retain(folder: str | Path, resolution: int) -> RetainImages:
    """Validate the whole retain set (every image decodes at ``resolution``) before any model loads."""
    if folder is None:
        raise DataError("train.retain.weight > 0 needs a retain set (train.retain.data, or curate with a `retain:` section)")
    table = load_retain_set(folder, expected_size=resolution)
    return RetainImages(Path(folder), table, dataset_hash(folder))
