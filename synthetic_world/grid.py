"""Labelled image grids, so a person can check renders (or generations) against their attributes.

``labelled_grid(images, labels)`` tiles uint8 images, upscaled with nearest-neighbour, and writes a
few lines of text under each tile. ``python -m synthetic_world.grid`` writes the renderer's sample
grid to ``docs/images/world_renders.png``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.io import atomic_write_bytes
from synthetic_world.renderer import INVALID_KINDS, render, render_invalid
from synthetic_world.vocab import COLORS, GROUPS, OBJECTS, OUTFITS, ROLES, SETTINGS, SYMBOLS, Scene

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "world_renders.png"


def describe(attributes: dict) -> list[str]:
    """Short text lines for a scene's (or an oracle reading's) attributes."""
    lines = [
        f"{attributes['setting']} | {attributes['group']}",
        f"{attributes['color']} {attributes['outfit']}" + (" EXPOSED" if attributes.get("exposed") else ""),
        f"role: {attributes['role']}",
        f"obj: {attributes['object']} sym: {attributes['symbol']}",
    ]
    if "valid" in attributes and not attributes["valid"]:
        lines.insert(0, "INVALID")
    return lines


def labelled_grid(
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[Sequence[str]],
    cols: int = 6,
    scale: int = 3,
    line_height: int = 12,
) -> Image.Image:
    """Tile uint8 images (N, H, W, 3) with text lines under each tile; returns a PIL image."""
    images = np.asarray(images)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label lists")
    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    text_h = line_height * max((len(lines) for lines in labels), default=0) + 4
    tile_w, tile_h = w * scale + 8, h * scale + text_h + 8
    canvas = Image.new("RGB", (cols * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (image, lines) in enumerate(zip(images, labels)):
        x0, y0 = (i % cols) * tile_w + 4, (i // cols) * tile_h + 4
        canvas.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (x0, y0))
        for j, line in enumerate(lines):
            draw.text((x0, y0 + h * scale + 2 + j * line_height), line, fill="black", font=font)
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def world_sample_scenes():
    """A fixed set covering every value of every attribute (each appears at least twice)."""
    scenes = []
    for i in range(24):
        scenes.append(
            Scene(
                setting=SETTINGS[i % 6],
                group=GROUPS[(i // 2) % 3],
                outfit=OUTFITS[i % 5],
                color=COLORS[(i // 4 + i) % 6],
                role=ROLES[(i // 4) % 6],
                exposed=i % 7 == 3,
                object=OBJECTS[(i + i // 6) % 5],
                symbol=SYMBOLS[(i // 3) % 4],
                dx=(i * 3) % 7 - 3,
                dy=(i * 2) % 5 - 2,
                scale=round(0.9 + 0.2 * ((i * 7) % 10) / 9, 2),
            )
        )
    return scenes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the renderer's labelled sample grid.")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    scenes = world_sample_scenes()
    images = [render(scenes)]
    labels = [describe(s.attributes()) for s in scenes]
    for kind, scene in zip(INVALID_KINDS, scenes[:6]):
        images.append(render_invalid(kind, [scene]))
        labels.append(["INVALID (validity head)", f"kind: {kind}"])
    path = save_png(labelled_grid(np.concatenate(images), labels), args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
