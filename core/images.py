"""Image encode/decode helpers shared by curation, training, eval and annotation."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes (lossless: the oracle and the DPO pair must see exactly what was generated)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_image(data: bytes, what: str = "image") -> Image.Image:
    """Decode encoded image bytes to RGB, raising DataError (naming ``what``) if corrupt."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise DataError(f"{what}: empty or non-bytes image data")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        # PIL's message names only the in-memory buffer ("<_io.BytesIO object at 0x...>"); ``what`` names the image.
        raise DataError(f"{what}: image bytes do not decode (not a format PIL can read; "
                        f"{len(data)} bytes starting {bytes(data[:8])!r})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{what}: image bytes do not decode ({_without_buffer(str(exc))})") from exc


def _without_buffer(message: str) -> str:
    """``message`` with any ``<_io.BytesIO object at 0x...>`` (meaningless to a reader) taken out."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", message)


def pil_to_uint8(images: list[Image.Image]) -> np.ndarray:
    """List of PIL images -> uint8 array of shape (N, H, W, 3)."""
    return np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
