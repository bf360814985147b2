"""Write and read preference-set folders.

Layout (docs/ARCHITECTURE.md)::

    <folder>/data/train-00000-of-00003.parquet ...   the rows, ``shard_size`` per shard
    <folder>/stats.json                             preference_sets.stats output
    <folder>/README.md                              dataset card (preference_sets.card)
    <folder>/card.json                              the card's inputs, so the card can be re-rendered
    <folder>/.safe-diffusion-dpo-output             marks the folder as ours (core.output_dir)

A folder is written inside ``core.io.atomic_directory``: readers see no folder or a complete one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from core.errors import DataError
from core.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_file
from core.output_dir import write_marker
from preference_sets.card import check_card_info, render_card
from preference_sets.schema import PREFERENCE_SCHEMA, schema_problems
from preference_sets.stats import StatsAccumulator

if TYPE_CHECKING:  # importing datasets costs seconds; only load_preference_set needs it
    import datasets

DATA_DIR = "data"
SHARD_PATTERN = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")
DEFAULT_SHARD_SIZE = 500  # pairs per shard; 64x64 PNG pairs are ~10 KB, 512px pairs ~1 MB


def shard_name(index: int, count: int) -> str:
    return f"train-{index:05d}-of-{count:05d}.parquet"


def _rows_to_table(rows: list[Mapping[str, Any]], schema: pa.Schema, first_index: int) -> pa.Table:
    """Arrow table of ``rows``; DataError naming the row if a row has missing/extra keys or bad types."""
    expected = set(schema.names)
    for offset, row in enumerate(rows):
        keys = set(row)
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise DataError(f"row {first_index + offset}: missing column(s) {missing}, unexpected {extra}")
    try:
        return pa.Table.from_pylist([dict(row) for row in rows], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        last = first_index + len(rows) - 1
        raise DataError(f"rows {first_index}-{last}: a value has the wrong type for its column ({exc})") from exc


def write_parquet_shards(
    rows: Iterable[Mapping[str, Any]],
    data_dir: Path,
    schema: pa.Schema,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_row: Callable[[Mapping[str, Any]], None] | None = None,
    desc: str = "writing pairs",
    unit: str = "pair",
) -> int:
    """Stream ``rows`` into ``data_dir/train-KKKKK-of-NNNNN.parquet``; return the number of rows.

    ``data_dir`` should live inside an atomic temp folder: shards are first written under provisional
    names (N is unknown until the iterable ends) and renamed at the end.
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    data_dir.mkdir(parents=True, exist_ok=True)
    provisional: list[Path] = []
    buffer: list[Mapping[str, Any]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        table = _rows_to_table(buffer, schema, written)
        path = data_dir / f"part-{len(provisional):05d}.parquet.tmp"
        pq.write_table(table, path)
        provisional.append(path)
        written += len(buffer)
        buffer.clear()

    for row in tqdm(rows, desc=desc, unit=unit, leave=False):
        if on_row is not None:
            on_row(row)
        buffer.append(row)
        if len(buffer) >= shard_size:
            flush()
    if buffer:
        flush()
    if written == 0:
        raise DataError(f"no {unit}s to write: the set would be empty")
    for index, path in enumerate(provisional):
        path.rename(data_dir / shard_name(index, len(provisional)))
    return written


def write_preference_set(
    rows: Iterable[Mapping[str, Any]],
    folder: str | Path,
    card: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write rows (dicts from ``schema.make_pair_row``) as a complete preference-set folder.

    Raises DataError if a row is malformed, two rows share a ``pair_id``, or there are no rows; in
    every failure case no folder is left behind. ``rows`` may be a generator reading ``folder``
    itself (rewrite in place with ``overwrite=True``): the old folder is replaced only at the end.
    ``card`` may be a function, called after the last row, for a card that reports what the rows' pass
    counted (import).
    """
    folder = Path(folder)
    if not callable(card):
        card = check_card_info(card)
        render_card({}, card)  # fail on a malformed card before any pair is written
    if folder.exists() and not overwrite:
        raise DataError(f"{folder} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    stats = StatsAccumulator()
    seen_pair_ids: dict[str, int] = {}

    def check_and_count(row: Mapping[str, Any]) -> None:
        pair_id = row.get("pair_id")
        if pair_id in seen_pair_ids:
            raise DataError(f"row {stats.num_pairs}: pair_id {pair_id!r} already used by row {seen_pair_ids[pair_id]}")
        seen_pair_ids[pair_id] = stats.num_pairs
        stats.add(row)

    with atomic_directory(folder, overwrite=overwrite) as tmp:
        write_parquet_shards(rows, tmp / DATA_DIR, PREFERENCE_SCHEMA, shard_size, on_row=check_and_count)
        result = stats.result()
        if callable(card):
            card = check_card_info(card())
        atomic_write_json(tmp / "stats.json", result)
        atomic_write_json(tmp / "card.json", card)
        atomic_write_text(tmp / "README.md", render_card(result, card))
        write_marker(tmp, "preference_set")
    return folder


def shard_paths(folder: str | Path) -> list[Path]:
    """The folder's shards in order; DataError if the folder, a shard, or the numbering is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"preference set {folder}: folder does not exist")
    data_dir = folder / DATA_DIR
    found = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if not found:
        raise DataError(f"preference set {folder}: no parquet shards in {data_dir}")
    counts = set()
    indices = []
    for path in found:
        match = SHARD_PATTERN.match(path.name)
        if not match:
            raise DataError(
                f"preference set {folder}: unexpected file {path.name} (shards are train-KKKKK-of-NNNNN.parquet)"
            )
        indices.append(int(match.group(1)))
        counts.add(int(match.group(2)))
    if len(counts) != 1:
        raise DataError(f"preference set {folder}: shards disagree on the shard count {sorted(counts)}")
    (count,) = counts
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        raise DataError(f"preference set {folder}: missing shard(s) {[shard_name(i, count) for i in missing]}")
    return found


def read_shard_schema(path: Path) -> pa.Schema:
    """The shard's arrow schema, read from its footer; DataError naming the shard if unreadable."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"parquet shard {path} cannot be read: {exc}") from exc


def check_schemas(folder: str | Path, expected: pa.Schema = PREFERENCE_SCHEMA) -> list[Path]:
    """Shard paths after checking each shard's footer and schema; DataError names the first bad shard."""
    paths = shard_paths(folder)
    for path in paths:
        problems = schema_problems(read_shard_schema(path), expected)
        if problems:
            raise DataError(f"parquet shard {path} has the wrong schema: " + "; ".join(problems))
    return paths


def load_preference_set(
    folder: str | Path, expected_schema: pa.Schema = PREFERENCE_SCHEMA, cache_dir: str | None = None
) -> datasets.Dataset:
    """The set as a ``datasets.Dataset`` via ``load_dataset("parquet", ...)`` (images stay raw bytes)."""
    paths = check_schemas(folder, expected_schema)
    try:
        return datasets.load_dataset(
            "parquet", data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir
        )
    except Exception as exc:  # noqa: BLE001 - find which shard broke it, then say so
        for path in paths:
            try:
                pq.read_table(path)
            except (pa.ArrowException, OSError) as shard_exc:
                raise DataError(f"parquet shard {path} cannot be read: {shard_exc}") from exc
        raise DataError(f"preference set {folder}: datasets could not load it: {exc}") from exc


def iter_rows(
    folder: str | Path, columns: list[str] | None = None, batch_size: int = 256, check: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows as dicts, shard by shard (memory stays at one batch). DataError names an unreadable shard."""
    paths = check_schemas(folder) if check else shard_paths(folder)
    for path in paths:
        try:
            shard = pq.ParquetFile(path)
            batches = shard.iter_batches(batch_size=batch_size, columns=columns)
            for batch in batches:
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"parquet shard {path} cannot be read: {exc}") from exc


def read_rows(folder: str | Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows as a list of dicts (convenience for small sets and tests)."""
    return list(iter_rows(folder, columns=columns))


def read_stats(folder: str | Path) -> dict[str, Any]:
    return _read_json(Path(folder) / "stats.json")


def read_card_info(folder: str | Path) -> dict[str, Any]:
    """The card inputs saved with the set ({} if the set has no card.json)."""
    path = Path(folder) / "card.json"
    return check_card_info(_read_json(path)) if path.exists() else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


def dataset_hash(folder: str | Path) -> str:
    """sha256 over the shard names and file hashes: identifies exactly which data a model saw."""
    digest = hashlib.sha256()
    for path in shard_paths(folder):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()
