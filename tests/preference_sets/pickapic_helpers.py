"""Pick-a-Pic-style sets made the way users make them: a ``datasets.Dataset`` with the five columns,
written with ``to_parquet`` (one file, a flat folder, the HF ``data/`` layout) or ``save_to_disk``."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from core.images import encode_png

CAPTIONS = ["a photo of a cat", "a dog in the park", "a red car", "a blue ball on the beach"]


def image(seed: int, size: int = 8) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def five_columns(n: int, size: int = 8, ties: int = 0, start: int = 0) -> dict[str, list]:
    """``n`` decided pairs (labels alternating) then ``ties`` 0.5/0.5 rows, as Pick-a-Pic's columns."""
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(start, start + n + ties):
        label_0 = 0.5 if i - start >= n else float(i % 2)
        rows["caption"].append(CAPTIONS[i % len(CAPTIONS)])
        rows["jpg_0"].append(image(1000 + 2 * i, size))
        rows["jpg_1"].append(image(1001 + 2 * i, size))
        rows["label_0"].append(label_0)
        rows["label_1"].append(1.0 - label_0)
    return rows


def dataset(n: int, size: int = 8, ties: int = 0, start: int = 0, **extra: list) -> datasets.Dataset:
    return datasets.Dataset.from_dict({**five_columns(n, size, ties, start), **extra})


def write_parquet(path: Path, ds: datasets.Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def flat_folder(folder: Path, n: int, size: int = 8, ties: int = 0, files: int = 2) -> Path:
    """``files`` parquet files at the top of ``folder`` (what --dataset_name=<folder> reads)."""
    ds = dataset(n, size, ties)
    for k in range(files):
        write_parquet(folder / f"part{k}.parquet", ds.shard(files, k, contiguous=True))
    return folder


def hub_folder(folder: Path, n: int, size: int = 8, ties: int = 0) -> Path:
    """The HF Hub's layout: data/<split>-KKKKK-of-NNNNN-<hash>.parquet, a train split of two shards and a test split."""
    ds = dataset(n, size, ties)
    for k in range(2):
        write_parquet(folder / "data" / f"train-{k:05d}-of-00002-0a1b2c3d.parquet", ds.shard(2, k, contiguous=True))
    write_parquet(folder / "data" / "test-00000-of-00001-9f8e.parquet", dataset(2, size, start=500))
    return folder
