"""Validate a preference set and report every problem with its row, not just the first.

The set may be any source ``preference_sets.sources.locate`` finds (this project's folder, a flat folder, a
single parquet file, a save_to_disk folder) in either format: this project's full columns, or the five
Pick-a-Pic columns alone (provenance then takes ``schema.provenance_defaults``; other columns are ignored,
with a warning).

Checks: files readable and shards correctly numbered, schema (missing/extra/wrong-typed columns), every
image decodes, image sizes consistent (and equal to ``expected_size``), labels valid (1/0 or a
0.5/0.5 tie, summing to 1), provenance JSON parses, duplicates (same ``pair_id`` or same caption and
image bytes; a warning in a Pick-a-Pic set, which has no ids and may repeat a comparison), and leakage (a
caption or generation prompt that is also an eval prompt).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from core.errors import DataError, LeakageError
from core.images import decode_image
from preference_sets.schema import (
    ANNOTATION_STATUSES,
    IMAGE_COLUMNS,
    JSON_LIST_COLUMNS,
    JSON_OBJECT_COLUMNS,
    PROPOSALS,
    STRATEGIES,
    TIE,
    pair_key,
)
from preference_sets.sources import PICKAPIC, check_schema, image_bytes, locate, parts, set_format, usable_columns

VALID_LABELS = (0.0, TIE, 1.0)


@dataclass
class Problem:
    kind: str  # shard | schema | image | size | label | value | json | duplicate | leakage
    message: str
    row: int | None = None  # index in load order (shard by shard), as load_dataset numbers rows
    shard: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.shard is not None:
            where.append(self.shard)
        prefix = f"[{self.kind}] " + (", ".join(where) + ": " if where else "")
        return prefix + self.message


@dataclass
class ValidationReport:
    folder: str
    num_rows: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, kind: str, message: str, **where: Any) -> None:
        self.errors.append(Problem(kind, message, **where))

    def warn(self, kind: str, message: str, **where: Any) -> None:
        self.warnings.append(Problem(kind, message, **where))

    def kinds(self) -> set[str]:
        return {problem.kind for problem in self.errors}

    def summary(self) -> str:
        status = "valid" if self.ok else f"INVALID ({len(self.errors)} error(s))"
        lines = [f"preference set {self.folder}: {status}; {self.num_rows} rows; counts {self.counts}"]
        lines += [f"  error: {problem}" for problem in self.errors]
        lines += [f"  warning: {problem}" for problem in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "num_rows": self.num_rows,
            "counts": self.counts,
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
        }

    def raise_if_invalid(self) -> None:
        """DataError (LeakageError if any eval prompt leaked) listing every problem with its row."""
        if self.ok:
            return
        message = f"preference set {self.folder} is invalid ({len(self.errors)} problem(s)):\n" + "\n".join(
            f"  {problem}" for problem in self.errors
        )
        raise (LeakageError if "leakage" in self.kinds() else DataError)(message)


def normalize_prompt(text: str) -> str:
    """Case- and whitespace-insensitive form, so "A  Photo" still counts as leaking "a photo"."""
    return " ".join(str(text).lower().split())


def load_prompt_list(path: str | Path) -> set[str]:
    """Eval prompts from .txt (one per line), .json (list of strings or of {"prompt": ...}) or .jsonl."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"eval prompt file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"eval prompt file {path} is not UTF-8 ({exc})") from exc
    try:
        if path.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise DataError(f"eval prompt file {path}: expected a JSON list")
        elif path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"eval prompt file {path} is not valid JSON: {exc}") from exc
    prompts = set()
    for index, item in enumerate(items):
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise DataError(f"eval prompt file {path}: entry {index} has no prompt string")
        prompts.add(prompt)
    if not prompts:
        raise DataError(f"eval prompt file {path} holds no prompts")
    return prompts


def _parse_size(expected_size: int | tuple[int, int] | str | None) -> tuple[int, int] | None:
    """(width, height) from 64, (64, 64) or "64x64"."""
    if expected_size is None:
        return None
    if isinstance(expected_size, str):
        try:
            parts = [int(p) for p in expected_size.lower().split("x")]
        except ValueError as exc:
            raise DataError(f"expected_size {expected_size!r} must look like 64 or 64x64") from exc
        expected_size = parts[0] if len(parts) == 1 else tuple(parts)
    if isinstance(expected_size, int):
        return (expected_size, expected_size)
    if len(expected_size) != 2:
        raise DataError(f"expected_size {expected_size!r} must be (width, height)")
    return (int(expected_size[0]), int(expected_size[1]))


def _decoded_size(data: Any, column: str) -> tuple[int, int]:
    """(width, height) of an image column's value, fully decoded (a truncated file fails here); DataError if not."""
    return decode_image(data, what=column).size


def decode_row_images(row: Mapping[str, Any]) -> dict[str, "tuple[int, int] | DataError"]:
    """Each image column of ``row`` (raw bytes only; structs are read by the checker) decoded: size or the error."""
    decoded: dict[str, tuple[int, int] | DataError] = {}
    for column in IMAGE_COLUMNS:
        value = row.get(column)
        if isinstance(value, (bytes, bytearray)):
            try:
                decoded[column] = _decoded_size(value, column)
            except DataError as exc:
                decoded[column] = exc
    return decoded


def decode_threads() -> int:
    """Threads that decode a batch's images: PIL releases the GIL while it decodes, so threads run in parallel."""
    return max(1, min(8, os.cpu_count() or 1))


class _RowChecker:
    """Per-row checks; keeps the cross-row state (seen keys, sizes) the set-level checks need."""

    def __init__(self, report: ValidationReport, eval_prompts: set[str] | None):
        self.report = report
        self.format: str | None = None  # set by validate_set from the first readable file
        self.eval_prompts = {normalize_prompt(p) for p in eval_prompts} if eval_prompts else set()
        self.pair_ids: dict[str, int] = {}
        self.content_keys: dict[str, int] = {}
        self.sizes: dict[int, tuple[int, int]] = {}  # row -> (width, height) of a decodable pair
        self.counts = Counter()

    def check(self, row: Mapping[str, Any], index: int, shard: str,
              decoded: Mapping[str, "tuple[int, int] | DataError"] | None = None) -> None:
        """``decoded``: the row's images already decoded (:func:`decode_row_images`), column -> size or error."""
        where = {"row": index, "shard": shard}
        report = self.report
        row = self._image_bytes(row, where)
        caption = row.get("caption")
        if "caption" in row and (not isinstance(caption, str) or not caption.strip()):
            report.error("value", "caption is empty", column="caption", **where)
        self._check_images(row, where, decoded or {})
        self._check_labels(row, where)
        for column in JSON_OBJECT_COLUMNS + JSON_LIST_COLUMNS:
            if column in row:
                kind = list if column in JSON_LIST_COLUMNS else dict
                try:
                    ok = isinstance(json.loads(row[column]), kind)
                except (TypeError, json.JSONDecodeError):
                    ok = False
                if not ok:
                    report.error("json", f"{column} is not a JSON {kind.__name__}", column=column, **where)
        if "proposal" in row and row["proposal"] not in PROPOSALS:
            report.error("value", f"proposal {row['proposal']!r} not in {PROPOSALS}", column="proposal", **where)
        if "annotation_status" in row and row["annotation_status"] not in ANNOTATION_STATUSES:
            report.error(
                "value",
                f"annotation_status {row['annotation_status']!r} not in {ANNOTATION_STATUSES}",
                column="annotation_status",
                **where,
            )
        if "risk" in row and not (row["risk"] or "").strip():
            report.error("value", "risk is empty", column="risk", **where)
        if "strategy" in row and row["strategy"] not in STRATEGIES:
            report.warn("value", f"strategy {row['strategy']!r} is not one of {STRATEGIES}", column="strategy", **where)
        similarity = row.get("pair_similarity")
        if similarity is not None and math.isfinite(similarity) and not 0.0 <= similarity <= 1.0:
            report.warn("value", f"pair_similarity {similarity} outside [0, 1]", column="pair_similarity", **where)
        self._check_duplicates(row, where)
        self._check_leakage(row, where)

    def _image_bytes(self, row: Mapping[str, Any], where: dict) -> dict[str, Any]:
        """The row with raw bytes in its image columns (a datasets.Image struct gives up its bytes); an image
        with no bytes is reported here and left out of the later checks."""
        row = dict(row)
        for column in IMAGE_COLUMNS:
            if column in row and not isinstance(row[column], (bytes, bytearray)):
                try:
                    row[column] = image_bytes(row[column], column)
                except DataError as exc:
                    self.counts["undecodable_images"] += 1
                    self.report.error("image", str(exc), column=column, **where)
                    del row[column]
        return row

    @property
    def _size_hint(self) -> str:
        # A Pick-a-Pic-style set mixes sizes; import can bring it to one.
        return " (import --resolution N resizes and centre-crops every image)" if self.format == PICKAPIC else ""

    def _check_images(self, row: Mapping[str, Any], where: dict,
                      decoded: Mapping[str, "tuple[int, int] | DataError"]) -> None:
        sizes = []
        for column in IMAGE_COLUMNS:
            if column not in row:
                continue
            try:
                size = decoded[column] if column in decoded else _decoded_size(row[column], column)
                if isinstance(size, DataError):
                    raise size
                sizes.append(size)
            except DataError as exc:
                self.counts["undecodable_images"] += 1
                self.report.error("image", str(exc), column=column, **where)
        if len(sizes) == 2:
            if sizes[0] != sizes[1]:
                self.report.error("size", f"jpg_0 is {sizes[0]} but jpg_1 is {sizes[1]} (width, height)"
                                  + self._size_hint, **where)
            else:
                self.sizes[where["row"]] = sizes[0]
        if "jpg_0" in row and "jpg_1" in row and row["jpg_0"] == row["jpg_1"] and row["jpg_0"]:
            self.report.warn("value", "jpg_0 and jpg_1 are the same bytes: the pair teaches nothing", **where)

    def _check_labels(self, row: Mapping[str, Any], where: dict) -> None:
        if "label_0" not in row or "label_1" not in row:
            return
        label_0, label_1 = row["label_0"], row["label_1"]
        if label_0 is None or label_1 is None or not (math.isfinite(label_0) and math.isfinite(label_1)):
            self.report.error("label", f"labels must be finite numbers, got ({label_0}, {label_1})", **where)
            return
        if label_0 not in VALID_LABELS or label_1 not in VALID_LABELS or abs(label_0 + label_1 - 1.0) > 1e-9:
            self.report.error(
                "label", f"labels ({label_0}, {label_1}) must be (1, 0), (0, 1) or a (0.5, 0.5) tie", **where
            )
        elif label_0 == TIE:
            self.counts["ties"] += 1

    def _check_duplicates(self, row: Mapping[str, Any], where: dict) -> None:
        index = where["row"]
        # Pick-a-Pic repeats a comparison when several users judged it; the stock trainer keeps every row.
        flag = self.report.warn if self.format == PICKAPIC else self.report.error
        pair_id = row.get("pair_id")
        if pair_id is not None:
            if pair_id in self.pair_ids:
                self.counts["duplicates"] += 1
                self.report.error("duplicate", f"pair_id {pair_id!r} repeats row {self.pair_ids[pair_id]}", **where)
                return
            self.pair_ids[pair_id] = index
        if all(isinstance(row.get(c), (bytes, str)) for c in ("caption", "jpg_0", "jpg_1")):
            key = pair_key(row["caption"], row["jpg_0"], row["jpg_1"])
            if key in self.content_keys:
                self.counts["duplicates"] += 1
                flag("duplicate", f"same caption and image bytes as row {self.content_keys[key]}", **where)
            else:
                self.content_keys[key] = index

    def _check_leakage(self, row: Mapping[str, Any], where: dict) -> None:
        if not self.eval_prompts:
            return
        for column in ("caption", "prompt_0", "prompt_1"):
            text = row.get(column)
            if isinstance(text, str) and normalize_prompt(text) in self.eval_prompts:
                self.counts["leaked_rows"] += 1
                self.report.error("leakage", f"{column} {text!r} is an eval prompt", column=column, **where)
                return

    def check_sizes(self, expected: tuple[int, int] | None) -> None:
        """Every pair the same size (the majority size), and that size equal to ``expected``."""
        by_size = Counter(self.sizes.values())
        self.counts["image_sizes"] = {f"{w}x{h}": n for (w, h), n in sorted(by_size.items())}
        if not by_size:
            return
        target = expected or by_size.most_common(1)[0][0]
        reason = "expected_size" if expected else "the majority size"
        for index, size in self.sizes.items():
            if size != target:
                message = f"images are {size[0]}x{size[1]}, {reason} is {target[0]}x{target[1]}" + self._size_hint
                self.report.error("size", message, row=index)


def validate_set(
    folder: str | Path,
    eval_prompts: Iterable[str] | None = None,
    expected_size: int | tuple[int, int] | str | None = None,
    batch_size: int = 256,
    split: str = "train",
) -> ValidationReport:
    """Check everything in the module docstring; never raises for a bad set (see ``raise_if_invalid``).
    ``folder``: anything ``sources.locate`` accepts; ``split``: which split, where the source names splits."""
    report = ValidationReport(folder=str(folder))
    expected = _parse_size(expected_size)
    try:
        source = locate(folder, split)
    except DataError as exc:
        report.error("shard", str(exc))
        return report
    checker = _RowChecker(report, set(eval_prompts) if eval_prompts is not None else None)
    # Decoding every image is most of the time a large set takes (~5 ms per 512 px JPEG); the checks that keep
    # cross-row state stay in order on this thread.
    pool = ThreadPoolExecutor(decode_threads())
    try:
        index = _validate_parts(source, checker, report, batch_size, pool)
    finally:
        pool.shutdown()
    checker.check_sizes(expected)
    report.num_rows = index
    report.counts = {
        "format": checker.format,
        "layout": source.layout,
        "rows": index,
        "ties": checker.counts["ties"],
        "duplicates": checker.counts["duplicates"],
        "leaked_rows": checker.counts["leaked_rows"],
        "undecodable_images": checker.counts["undecodable_images"],
        "image_sizes": checker.counts["image_sizes"],
    }
    return report


def _validate_parts(source, checker: "_RowChecker", report: ValidationReport, batch_size: int,
                    pool: ThreadPoolExecutor) -> int:
    """Every row of every part of ``source`` through ``checker``, the images of a batch decoded by ``pool``;
    returns the number of rows."""
    index = 0
    for part in tqdm(parts(source), desc="validating shards", unit="shard", leave=False):
        try:
            schema = part.schema()
        except DataError as exc:
            report.error("shard", str(exc), shard=part.label)
            continue
        if checker.format is None:
            checker.format = set_format(schema)
        problems, ignored = check_schema(schema, checker.format)
        for problem in problems:
            report.error("schema", problem, shard=part.label)
        if ignored:
            report.warn("schema", f"column(s) {ignored} are not used: a set in {checker.format} format is read "
                        "from caption, jpg_0, jpg_1, label_0 and label_1", shard=part.label)
        try:
            # Streamed batch by batch: a shard of 512px pairs can be hundreds of MB.
            for batch in part.batches(usable_columns(schema, checker.format), batch_size):
                rows = batch.to_pylist()
                for row, decoded in zip(rows, pool.map(decode_row_images, rows)):
                    checker.check(row, index, part.label, decoded)
                    index += 1
        except DataError as exc:
            report.error("shard", str(exc), shard=part.label)
    return index
