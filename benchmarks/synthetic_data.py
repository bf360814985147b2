"""A synthetic Pick-a-Pic-format preference set at a model's native resolution, for timing.

Image content does not change the cost of a training step once latents are cached (and the VAE
cost of the uncached path does not depend on pixel values either), so images are blocky random
colour fields: a 16x16 random grid upsampled (nearest neighbour) to ``resolution``, which keeps the
PNGs small and quick to write and decode (a 1024 px noise PNG would be ~3 MB). Quick decoding makes
the uncached baseline slightly faster than it would be on photos, so ratios against it are
conservative. Written with the project's own ``preference_sets`` writer.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from core.images import encode_png
from preference_sets.io import write_preference_set
from preference_sets.schema import make_pair_row

CAPTIONS = (
    "a photo of a person at the beach",
    "a photo of a cat in the park",
    "a red dog on a blue ball",
    "a person with a green book in the office",
)


def smooth_image(rng: np.random.Generator, resolution: int, grid: int = 16) -> np.ndarray:
    """uint8 (resolution, resolution, 3): a random ``grid``x``grid`` colour field, upsampled (nearest neighbour)."""
    small = rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((resolution, resolution), Image.NEAREST), dtype=np.uint8)


def photo_like_jpeg(rng: np.random.Generator, resolution: int, grain: np.ndarray, grid: int = 16) -> bytes:
    """JPEG (quality 90) of a bilinearly upsampled random colour field with Gaussian grain (a random crop of
    ``grain``, float32 (≥ resolution, ≥ resolution, 3) in grey levels): smooth regions plus texture, so decoding
    costs about what a photo of the same size costs (JPEG decoding time grows with the non-zero DCT coefficients,
    which a flat blocky field would mostly lack)."""
    small = Image.fromarray(rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8))
    top, left = (int(v) for v in rng.integers(0, grain.shape[0] - resolution + 1, size=2))
    field_ = np.asarray(small.resize((resolution, resolution), Image.BILINEAR), dtype=np.float32)
    field_ += grain[top:top + resolution, left:left + resolution]
    image = Image.fromarray(np.clip(field_, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def synthetic_rows(num_pairs: int, resolution: int, seed: int = 0, image_format: str = "png", noise: float = 8.0):
    """``num_pairs`` rows with decisive labels (no ties), alternating which image wins. ``image_format``:
    png (blocky fields, quick to decode) or jpeg (photo-like, as Pick-a-Pic's JPEGs, with grain of σ = ``noise``
    grey levels). Image ``i`` comes from its own generator seeded by (seed, i), so the images are encoded on
    threads (PIL and numpy release the GIL) and the set is the same whatever the thread count."""
    grain = np.random.default_rng(seed).normal(0.0, noise, size=(2 * resolution, 2 * resolution, 3)).astype(
        np.float32) if image_format == "jpeg" else None

    def image(index: int) -> bytes:
        rng = np.random.default_rng([seed, index])
        return photo_like_jpeg(rng, resolution, grain) if grain is not None else encode_png(
            smooth_image(rng, resolution))

    chunk = 128  # pairs encoded ahead at a time (executor.map submits everything it is given at once)
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for index in range(num_pairs):
            if index % chunk == 0:
                images = pool.map(image, range(2 * index, 2 * min(index + chunk, num_pairs)))
            yield make_pair_row(
                caption=CAPTIONS[index % len(CAPTIONS)],
                jpg_0=next(images),
                jpg_1=next(images),
                label_0=1.0 if index % 2 == 0 else 0.0,
                risk="benchmark",
                strategy="best_of_n",
                seed_0=2 * index,
                seed_1=2 * index + 1,
                generation={"height": resolution, "width": resolution, "note": "synthetic benchmark images"},
            )


def write_synthetic_set(folder: str | Path, num_pairs: int, resolution: int, seed: int = 0,
                        image_format: str = "png") -> Path:
    """Write (or reuse, if already complete) the benchmark set at ``folder``."""
    folder = Path(folder)
    if (folder / "stats.json").is_file():
        return folder
    card = {
        "title": f"benchmark set ({num_pairs} pairs at {resolution} px)",
        "description": "Smooth random colour fields for throughput benchmarks; not training data.",
    }
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    return write_preference_set(synthetic_rows(num_pairs, resolution, seed, image_format), folder, card=card)
