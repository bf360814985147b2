"""Pick-a-Pic-compatible preference sets: schema, write/read, validate, stats, merge, split, export, import, card.

Typical use::

    from preference_sets import make_pair_row, write_preference_set, load_preference_set, validate_set
"""

from preference_sets.importer import import_set
from preference_sets.io import (
    dataset_hash,
    iter_rows,
    load_preference_set,
    read_card_info,
    read_rows,
    read_stats,
    write_preference_set,
)
from preference_sets.ops import export, merge, split
from preference_sets.schema import COLUMN_NAMES, PREFERENCE_SCHEMA, make_pair_row, pair_key
from preference_sets.stats import compute_stats
from preference_sets.validate import ValidationReport, load_prompt_list, validate_set

__all__ = [
    "COLUMN_NAMES",
    "PREFERENCE_SCHEMA",
    "ValidationReport",
    "compute_stats",
    "dataset_hash",
    "export",
    "import_set",
    "iter_rows",
    "load_preference_set",
    "load_prompt_list",
    "make_pair_row",
    "merge",
    "pair_key",
    "read_card_info",
    "read_rows",
    "read_stats",
    "split",
    "validate_set",
    "write_preference_set",
]
