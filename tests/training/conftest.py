"""Fixtures for the trainer tests: tiny preference sets written with the real preference_sets writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.images import encode_png
from training.config import TrainConfig
from training.train import load_config

CAPTIONS = ["a photo of a cat", "a dog in the park", "a person wearing a red suit", "a blue ball on the beach"]


def write_tiny_set(folder: Path, num_pairs: int = 8, size: int = 32, ties: int = 0, seed: int = 0) -> Path:
    """``num_pairs`` pairs of random size x size images (plus ``ties`` tie rows), labels alternating."""
    from preference_sets.io import write_preference_set
    from preference_sets.schema import make_pair_row

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_pairs + ties):
        images = [encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2)]
        label_0 = 0.5 if i >= num_pairs else float(i % 2)
        rows.append(make_pair_row(CAPTIONS[i % len(CAPTIONS)], images[0], images[1], label_0,
                                  risk="exposure", strategy="best_of_n", seed_0=2 * i, seed_1=2 * i + 1))
    return write_preference_set(rows, folder)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    return write_tiny_set(tmp_path_factory.mktemp("sets") / "tiny", num_pairs=8, ties=2)


def tiny_config(model: Path, data: Path, run_dir: Path, *overrides: str) -> TrainConfig:
    """A fast CPU config (fp32, no progress bar, no TensorBoard) writing under ``run_dir``."""
    base = [
        f"model={model}", f"data={data}", f"output_dir={run_dir / 'lora'}", f"work_dir={run_dir / 'work'}",
        "mixed_precision=fp32", "micro_batch_size=2", "max_train_steps=3", "lr_warmup_steps=0",
        "learning_rate=1e-3", "log_every=1", "progress_bar=false", "report_to=none", "lora.rank=4",
        "lora.alpha=4",
    ]
    return load_config(None, base + list(overrides))
