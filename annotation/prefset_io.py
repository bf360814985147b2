"""The annotation tool's only contact with the preference-set format (``preference_sets``).

* :func:`check_set`     refuse a set that fails ``preference_sets.validate`` (every bad row named);
* :func:`select_items`  which rows of a set are annotated (risk filter, seeded subset, gold items);
* :class:`ImageSource`  image bytes by (row, column) for the server, from the memory-mapped dataset;
* :func:`read_gold_file` the gold answers file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.errors import DataError
from core.images import decode_image
from core.io import stable_key
from preference_sets.io import dataset_hash, iter_rows, load_preference_set
from preference_sets.validate import validate_set

ITEM_COLUMNS = ["caption", "pair_id", "risk", "proposal", "scores_0", "scores_1"]
GOLD_ANSWERS = ("0", "1", "tie")

# Magic bytes of the formats we serve; anything else is refused (never sniffed by the browser).
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"))


MAX_PROBLEMS_SHOWN = 20


def check_set(set_folder: str | Path) -> None:
    """DataError naming the bad rows if the set fails validation (images that do not decode, bad
    labels, duplicates, ...): annotators would otherwise judge pairs whose images never show."""
    report = validate_set(set_folder)
    if report.ok:
        return
    shown = [f"  {problem}" for problem in report.errors[:MAX_PROBLEMS_SHOWN]]
    if len(report.errors) > MAX_PROBLEMS_SHOWN:
        shown.append(f"  ... and {len(report.errors) - MAX_PROBLEMS_SHOWN} more "
                     f"(python -m preference_sets.cli validate {set_folder} lists them all)")
    raise DataError(f"preference set {set_folder} fails validation ({len(report.errors)} problem(s)); "
                    "repair it before annotating:\n" + "\n".join(shown))


def read_gold_file(path: str | Path | None) -> dict[str, str]:
    """``{pair_id: "0" | "1" | "tie"}`` from a JSON file ({} when no file is configured)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"gold file {path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"gold file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"gold file {path} must hold an object {{pair_id: answer}}")
    bad = {k: v for k, v in data.items() if v not in GOLD_ANSWERS}
    if bad:
        raise DataError(f"gold file {path}: answers must be one of {list(GOLD_ANSWERS)}; bad entries: {bad}")
    return data


def select_items(
    set_folder: str | Path, risks: list[str], max_items: int | None, seed: int, gold: dict[str, str]
) -> tuple[list[dict], str]:
    """(items, fingerprint): the rows to annotate (no image bytes) and a key of set + subset.

    ``row_index`` is the row's position in the whole set (shard order), used to fetch its images.
    Gold items are always included, even outside the risk filter. The fingerprint ties an annotation
    database to exactly this set version and subset.
    """
    rows = []
    for index, row in enumerate(iter_rows(set_folder, columns=ITEM_COLUMNS)):
        rows.append({**row, "row_index": index})
    known_risks = sorted({r["risk"] for r in rows})
    unknown = sorted(set(risks) - set(known_risks))
    if unknown:
        raise DataError(f"risk(s) {unknown} do not occur in {set_folder}; risks present: {known_risks}")
    missing_gold = sorted(set(gold) - {r["pair_id"] for r in rows})
    if missing_gold:
        raise DataError(f"gold pair_id(s) not in {set_folder}: {missing_gold[:5]}{' ...' if len(missing_gold) > 5 else ''}")
    chosen = [r for r in rows if (not risks or r["risk"] in risks) and r["pair_id"] not in gold]
    if max_items is not None and len(chosen) > max_items:
        chosen = random.Random(seed).sample(chosen, max_items)
    chosen += [r for r in rows if r["pair_id"] in gold]
    chosen.sort(key=lambda r: r["row_index"])
    if not chosen:
        raise DataError(f"no rows of {set_folder} match risks={risks}")
    fingerprint = stable_key("annotation-subset", dataset_hash(set_folder), sorted(r["pair_id"] for r in chosen))
    return chosen, fingerprint


class ImageSource:
    """Encoded image bytes of a preference set by (row_index, column 0/1)."""

    def __init__(self, set_folder: str | Path, cache_dir: str | Path):
        # datasets memory-maps its arrow cache, so a large set is not held in RAM. The cache goes to
        # ``cache_dir`` (beside the annotation database), never to the user's ~/.cache.
        dataset = load_preference_set(set_folder, cache_dir=str(cache_dir))
        self._dataset = dataset.select_columns(["jpg_0", "jpg_1"])
        self._decodable: dict[int, bool] = {}

    def get(self, row_index: int, column: int) -> tuple[bytes, str]:
        """(bytes, content type); DataError if the bytes are not a PNG/JPEG/WebP image."""
        data = bytes(self._dataset[int(row_index)][f"jpg_{int(column)}"])
        for magic, content_type in IMAGE_MAGIC:
            if data.startswith(magic):
                return data, content_type
        raise DataError(f"row {row_index} jpg_{column}: not a PNG, JPEG or WebP image")

    def decodable(self, row_index: int) -> bool:
        """Whether both images of the row decode (remembered: the bytes never change while serving)."""
        if row_index not in self._decodable:
            try:
                for column in (0, 1):
                    decode_image(bytes(self._dataset[int(row_index)][f"jpg_{column}"]))
                self._decodable[row_index] = True
            except DataError:
                self._decodable[row_index] = False
        return self._decodable[row_index]
