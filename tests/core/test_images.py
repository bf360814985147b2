"""Image decode errors name the image (the row, the file), never the in-memory buffer."""

from __future__ import annotations

import pytest

from core.errors import DataError
from core.images import decode_image, encode_png


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a"])
def test_undecodable_bytes_name_the_image_not_the_buffer(data):
    with pytest.raises(DataError) as err:
        decode_image(data, "set/data/train-00000-of-00001.parquet: row 3 jpg_0")
    message = str(err.value)
    assert message.startswith("set/data/train-00000-of-00001.parquet: row 3 jpg_0: image bytes do not decode")
    assert "BytesIO" not in message and "0x" not in message


def test_truncated_png_names_the_image():
    import numpy as np

    data = encode_png(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="row 7 jpg_1: image bytes do not decode") as err:
        decode_image(data[: len(data) // 2], "row 7 jpg_1")
    assert "BytesIO" not in str(err.value)
