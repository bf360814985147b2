"""Find and read a preference set however it is stored: this project's sets and Pick-a-Pic-style sets.

What a user may hand over (``locate``):

* a folder with ``data/<split>-KKKKK-of-NNNNN[-hash].parquet`` shards (this project's layout, and the HF Hub's);
* a folder with parquet files at its top (what diffusers' ``train_diffusion_dpo.py`` reads with
  ``--dataset_name=<folder>``);
* a single ``.parquet`` file;
* a ``datasets`` ``save_to_disk`` folder (one dataset, or a dataset dict with a ``train`` split).

What the rows may hold (``set_format``):

* ``FULL``: every column of ``schema.PREFERENCE_SCHEMA`` (caption, images, labels and provenance);
* ``PICKAPIC``: the five Pick-a-Pic columns the DPO trainers read (``caption``, ``jpg_0``, ``jpg_1``,
  ``label_0``, ``label_1``) and none of our provenance columns; other columns (Pick-a-Pic's ``user_id``,
  ``model_0``, ...) are ignored. The missing provenance takes ``schema.provenance_defaults``.

Images are raw encoded bytes (``binary``) or the ``datasets.Image`` struct ``{bytes, path}`` with the bytes
embedded (what ``push_to_hub`` and ``to_parquet`` write); :func:`image_bytes` reads both.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core.errors import DataError
from core.images import decode_image, encode_png
from core.io import sha256_file
from preference_sets.schema import (
    COLUMN_NAMES,
    EXPORT_COLUMNS,
    IMAGE_COLUMNS,
    PREFERENCE_SCHEMA,
    TIE,
    schema_problems,
    types_compatible,
)

if TYPE_CHECKING:  # importing datasets costs seconds; only load_dataset needs it
    import datasets

FULL = "preference set"
PICKAPIC = "Pick-a-Pic"
# The columns every set must have (the ones train_diffusion_dpo.py reads, plus label_1).
REQUIRED_COLUMNS = EXPORT_COLUMNS
PROVENANCE_COLUMNS = tuple(name for name in COLUMN_NAMES if name not in REQUIRED_COLUMNS)

DATA_FOLDER = "data/ folder"
FLAT_FOLDER = "flat folder"
PARQUET_FILE = "parquet file"
SAVED_FOLDER = "save_to_disk folder"

# <split>-<index>-of-<count>.parquet, optionally with the Hub's content suffix (train-00000-of-00014-1a2b.parquet).
SPLIT_SHARD = re.compile(
    r"^(?P<split>[A-Za-z][A-Za-z0-9_]*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?:-[0-9a-f]+)?\.parquet$"
)
ACCEPTED = (
    "a preference set is a parquet file, a folder of parquet files (at its top or under data/), or a "
    "datasets save_to_disk folder"
)


@dataclass(frozen=True)
class Source:
    """Where a set's rows are: ``files`` in load order (parquet files, or a save_to_disk folder's arrow files)."""

    path: Path
    layout: str  # DATA_FOLDER | FLAT_FOLDER | PARQUET_FILE | SAVED_FOLDER
    files: tuple[Path, ...]
    split: str | None = None  # the split read, where the source names splits

    def describe(self) -> str:
        split = f", split {self.split!r}" if self.split else ""
        return f"{self.path} ({self.layout}, {len(self.files)} file(s){split})"


def _split_files(files: Sequence[Path], split: str, where: str) -> tuple[list[Path], str | None]:
    """The files of ``split`` when the names carry splits (checking that none is missing), else all of them."""
    matches = {path: SPLIT_SHARD.match(path.name) for path in files}
    if not any(matches.values()):
        return sorted(files), None
    odd = sorted(path.name for path, match in matches.items() if match is None)
    if odd:
        raise DataError(f"{where}: unexpected file {odd[0]} beside shards named <split>-KKKKK-of-NNNNN.parquet")
    splits = sorted({match["split"] for match in matches.values()})
    if split not in splits:
        raise DataError(f"{where}: no {split!r} split; the shards hold split(s) {splits} (choose one with --split)")
    mine = sorted((int(m["index"]), int(m["count"]), path) for path, m in matches.items() if m["split"] == split)
    counts = {count for _, count, _ in mine}
    if len(counts) != 1:
        raise DataError(f"{where}: {split} shards disagree on the shard count {sorted(counts)}")
    (count,) = counts
    missing = sorted(set(range(count)) - {index for index, _, _ in mine})
    if missing:
        raise DataError(f"{where}: missing shard(s) {[f'{split}-{i:05d}-of-{count:05d}.parquet' for i in missing]}")
    return [path for _, _, path in mine], split


def _saved_files(folder: Path, split: str, where: str) -> tuple[list[Path], str | None]:
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{where}: dataset_dict.json cannot be read ({exc})") from exc
        if split not in splits:
            raise DataError(
                f"{where}: no {split!r} split; the dataset dict holds {sorted(splits)} (choose one with --split)"
            )
        return sorted((folder / split).glob("*.arrow")), split
    return sorted(folder.glob("*.arrow")), None


def locate(path: str | Path, split: str = "train") -> Source:
    """The set at ``path``; DataError saying what was expected if there is none."""
    path = Path(path)
    where = f"preference set {path}"
    if not path.exists():
        raise DataError(f"{where}: folder does not exist")
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{where} is a file but not a .parquet file; {ACCEPTED}")
        return Source(path, PARQUET_FILE, (path,))
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        files, chosen = _saved_files(path, split, where)
        return Source(path, SAVED_FOLDER, tuple(files), chosen)
    data_dir = path / "data"
    for folder, layout in ((data_dir, DATA_FOLDER), (path, FLAT_FOLDER)):
        found = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if found:
            files, chosen = _split_files(found, split, where)
            return Source(path, layout, tuple(files), chosen)
    raise DataError(f"{where}: no parquet files in {path} or {data_dir}, and no save_to_disk files; {ACCEPTED}")


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Part:
    """One readable unit of a source: a parquet file, or a save_to_disk dataset. ``label`` names it in errors."""

    source: Source
    path: Path
    label: str

    def schema(self) -> pa.Schema:
        if self.source.layout == SAVED_FOLDER:
            return _saved_table(self.source).schema
        try:
            return pq.read_schema(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"parquet file {self.path} cannot be read (truncated, or not parquet?): {exc}") from exc

    def batches(self, columns: Sequence[str], batch_size: int = 256) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns``; DataError naming the file if it cannot be read."""
        if self.source.layout == SAVED_FOLDER:
            yield from _saved_table(self.source).select(list(columns)).to_batches(max_chunksize=batch_size)
            return
        try:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_size, columns=list(columns))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"parquet file {self.path} cannot be read (truncated, or not parquet?): {exc}") from exc


def parts(source: Source) -> list[Part]:
    if source.layout == SAVED_FOLDER:
        return [Part(source, source.path, source.path.name)]
    return [Part(source, path, path.name) for path in source.files]


def _saved_dataset(source: Source) -> "datasets.Dataset":
    try:
        loaded = datasets.load_from_disk(str(source.path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; the folder is what the user must fix
        raise DataError(f"save_to_disk folder {source.path} cannot be read: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[source.split]
    return loaded


def _saved_table(source: Source) -> pa.Table:
    return _saved_dataset(source).data.table


# ------------------------------------------------------------------------------------------------ formats


def _is_image_type(dtype: pa.DataType) -> bool:
    if dtype in (pa.binary(), pa.large_binary()):
        return True
    # datasets.Image: struct<bytes: binary, path: string>
    if pa.types.is_struct(dtype) and dtype.get_field_index("bytes") >= 0:
        return dtype.field("bytes").type in (pa.binary(), pa.large_binary())
    return False


def _pickapic_type_ok(name: str, dtype: pa.DataType) -> bool:
    if name == "caption":
        return dtype in (pa.string(), pa.large_string())
    if name in IMAGE_COLUMNS:
        return _is_image_type(dtype)
    return pa.types.is_floating(dtype) or pa.types.is_integer(dtype)  # labels


def set_format(schema: pa.Schema) -> str:
    """FULL if any of our provenance columns is there (then all must be), else PICKAPIC."""
    return FULL if any(name in schema.names for name in PROVENANCE_COLUMNS) else PICKAPIC


def check_schema(schema: pa.Schema, fmt: str) -> tuple[list[str], list[str]]:
    """(problems, ignored columns) of a file's schema read as ``fmt``."""
    if fmt == FULL:
        return schema_problems(schema), []
    problems = []
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            problems.append(f"missing column {name!r} ({PREFERENCE_SCHEMA.field(name).type}); a set needs at least "
                            f"{list(REQUIRED_COLUMNS)}")
        elif not _pickapic_type_ok(name, schema.field(name).type):
            problems.append(f"column {name!r} has type {schema.field(name).type}, expected "
                            f"{PREFERENCE_SCHEMA.field(name).type}")
    return problems, [name for name in schema.names if name not in REQUIRED_COLUMNS]


def usable_columns(schema: pa.Schema, fmt: str) -> list[str]:
    """The columns of the file worth reading: the contract's, where their type is right."""
    if fmt == FULL:
        expected = {f.name: f.type for f in PREFERENCE_SCHEMA}
        return [f.name for f in schema if f.name in expected and types_compatible(f.type, expected[f.name])]
    return [name for name in REQUIRED_COLUMNS
            if name in schema.names and _pickapic_type_ok(name, schema.field(name).type)]


def source_format(source: Source) -> str:
    """The format of the set (read from its first file); DataError if that file is unreadable or incomplete."""
    first = parts(source)[0]
    schema = first.schema()
    fmt = set_format(schema)
    problems, _ = check_schema(schema, fmt)
    if problems:
        raise DataError(f"{first.path} has the wrong schema: " + "; ".join(problems))
    return fmt


# ------------------------------------------------------------------------------------------------- values


def image_bytes(value: Any, what: str) -> bytes:
    """Encoded image bytes from raw bytes or a ``datasets.Image`` struct; DataError saying what is wrong."""
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data is None and value.get("path"):
            raise DataError(f"{what}: the image is stored as a file path ({value['path']}), not as bytes; embed the "
                            "bytes (datasets' to_parquet and push_to_hub do) and try again")
        value = data
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
        raise DataError(f"{what}: no image bytes")
    return bytes(value)


def label_problem(label_0: Any, label_1: Any) -> str | None:
    """Why (label_0, label_1) is not a valid preference, or None. Valid: (1, 0), (0, 1), a (0.5, 0.5) tie."""
    valid = ((1.0, 0.0), (0.0, 1.0), (TIE, TIE))
    try:
        pair = (float(label_0), float(label_1))
    except (TypeError, ValueError):
        return f"labels ({label_0}, {label_1}) are not numbers"
    if pair not in valid:
        return f"labels ({label_0}, {label_1}) must be (1, 0), (0, 1) or a (0.5, 0.5) tie"
    return None


def screen_row(row: Mapping[str, Any], what: str) -> tuple[dict[str, Any], list[str]]:
    """(row with image bytes and float labels, problems): what a row needs before it is written or trained on
    (caption text, both images decode, labels valid)."""
    clean = dict(row)
    problems = []
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        problems.append("caption is empty")
    for column in IMAGE_COLUMNS:
        try:
            clean[column] = image_bytes(row.get(column), f"{what}: {column}")
            decode_image(clean[column], f"{what}: {column}")
        except DataError as exc:
            problems.append(str(exc).removeprefix(f"{what}: "))
    problem = label_problem(row.get("label_0"), row.get("label_1"))
    if problem:
        problems.append(problem)
    else:
        clean["label_0"], clean["label_1"] = float(row["label_0"]), float(row["label_1"])
    return clean, problems


def fit_image(data: bytes, resolution: int, what: str) -> bytes:
    """``data`` unchanged if it is resolution² px, else resized (shorter side to ``resolution``, bilinear) and
    centre-cropped, as PNG: what train_diffusion_dpo.py does to every image before training."""
    with Image.open(io.BytesIO(data)) as probe:
        if probe.size == (resolution, resolution):
            return data
    image = decode_image(data, what)
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return encode_png(image.crop((left, top, left + resolution, top + resolution)))


class ProblemLog:
    """Row problems gathered over a whole pass, so one error lists them all (up to ``shown``)."""

    def __init__(self, what: str, shown: int = 20):
        self.what, self.shown = what, shown
        self.problems: list[str] = []

    def add(self, where: str, problems: Sequence[str]) -> None:
        self.problems += [f"{where}: {problem}" for problem in problems]

    def raise_if_any(self, hint: str = "") -> None:
        if not self.problems:
            return
        listed = "\n".join(f"  {problem}" for problem in self.problems[: self.shown])
        more = f"\n  ... and {len(self.problems) - self.shown} more" if len(self.problems) > self.shown else ""
        raise DataError(f"{self.what}: {len(self.problems)} problem(s) in the input:\n{listed}{more}{hint}")


def iter_rows(source: Source, columns: Sequence[str], batch_size: int = 256) -> Iterator[tuple[int, str, dict]]:
    """(row number in load order, file label, row) over the whole source; DataError names an unreadable file
    or one that lacks a column of ``columns``."""
    index = 0
    for part in parts(source):
        missing = [name for name in columns if name not in part.schema().names]
        if missing:
            raise DataError(f"{part.path} lacks column(s) {missing} that the set's other files have")
        for batch in part.batches(columns, batch_size):
            for row in batch.to_pylist():
                yield index, part.label, row
                index += 1


# ------------------------------------------------------------------------------------------ whole-set views


def content_hash(source: Source) -> str:
    """sha256 over the files' names and hashes (for a data/ folder: ``preference_sets.io.dataset_hash``)."""
    digest = hashlib.sha256()
    for path in source.files:
        name = path.relative_to(source.path).as_posix() if source.layout == SAVED_FOLDER else path.name
        digest.update(f"{name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def load_dataset(source: Source, columns: Sequence[str], cache_dir: str | None = None) -> "datasets.Dataset":
    """``columns`` of the set as a memory-mapped ``datasets.Dataset``; images stay encoded bytes (a
    ``datasets.Image`` column reads as ``{bytes, path}``)."""
    if source.layout == SAVED_FOLDER:
        table = _saved_dataset(source).select_columns(list(columns))
    else:
        try:
            table = datasets.load_dataset("parquet", data_files=[str(p) for p in source.files], split="train",
                                          columns=list(columns), cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - find which file broke it, then say so
            for part in parts(source):
                part.schema()
                for _ in part.batches(columns):
                    pass
            raise DataError(f"preference set {source.path}: datasets could not load it: {exc}") from exc
    for column in IMAGE_COLUMNS:
        if isinstance(table.features.get(column), datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
    return table
