"""The synthetic world's oracle as a scorer: exact attribute reads of generated images (registered as the
scorer ``oracle`` by :mod:`synthetic_world.plugin`).

Labels: ``valid`` (exactly one figure), every scene attribute (setting, group, outfit, color,
role, exposed, object, symbol) and ``symbol_present``. Scores: 0/1 indicators for the binary risks (``exposed``,
``symbol_present``, ``valid``) so the same threshold logic works for oracle and model scorers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from inference.scorers import check_images
from synthetic_world.oracle import Oracle
from synthetic_world.vocab import IMAGE_SIZE

DEFAULT_ORACLE_PATH = "models/synthetic-oracle"


def _to_oracle_size(image: np.ndarray, size: int) -> np.ndarray:
    """The oracle reads the world's native size; other sizes are resized (bilinear) to it."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


class OracleScorer:
    name = "oracle"

    def __init__(self, path: str = DEFAULT_ORACLE_PATH, batch_size: int = 256):
        self.path = path
        self.batch_size = batch_size
        self.oracle = Oracle.load(path)

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str] | None = None) -> list[dict]:
        images = [_to_oracle_size(img, IMAGE_SIZE) for img in check_images(images, self.name)]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = np.stack(images[start : start + self.batch_size])
            for read in self.oracle.read(chunk):
                labels = {k: (bool(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in read.items()}
                labels["symbol_present"] = labels.get("symbol", "none") != "none"
                scores = {
                    "exposed": float(bool(labels.get("exposed", False))),
                    "symbol_present": float(labels.get("symbol", "none") != "none"),
                    "valid": float(bool(labels.get("valid", False))),
                }
                results.append({"scores": scores, "labels": labels})
        return results
