"""The preference-set columns (the contract in docs/ARCHITECTURE.md) and how to build one row.

Pick-a-Pic v2 convention: ``caption``, ``jpg_0``/``jpg_1`` as raw encoded image bytes (not the
``datasets.Image`` struct), ``label_0``/``label_1`` as floats with a tie as 0.5/0.5. Everything after
the labels is provenance that diffusers' ``train_diffusion_dpo.py`` ignores.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import pyarrow as pa

from core.errors import DataError
from core.io import sha256_bytes, stable_key

# Ordered (name, arrow type). Changing a name breaks curation, training, annotation and eval.
COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("caption", pa.string()),
    ("jpg_0", pa.binary()),
    ("jpg_1", pa.binary()),
    ("label_0", pa.float64()),
    ("label_1", pa.float64()),
    ("pair_id", pa.string()),
    ("risk", pa.string()),
    ("strategy", pa.string()),
    ("seed_0", pa.int64()),
    ("seed_1", pa.int64()),
    ("prompt_0", pa.string()),
    ("prompt_1", pa.string()),
    ("negative_prompt_0", pa.string()),
    ("negative_prompt_1", pa.string()),
    ("model_id", pa.string()),
    ("generation", pa.string()),
    ("scores_0", pa.string()),
    ("scores_1", pa.string()),
    ("proposal", pa.string()),
    ("pair_similarity", pa.float64()),
    ("annotation_status", pa.string()),
    ("annotations", pa.string()),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
JSON_OBJECT_COLUMNS = ("generation", "scores_0", "scores_1")
JSON_LIST_COLUMNS = ("annotations",)
PREFERENCE_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype in COLUMNS])

# The four columns diffusers' train_diffusion_dpo.py reads, plus label_1 (Pick-a-Pic keeps it).
EXPORT_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
EXPORT_SCHEMA = pa.schema([PREFERENCE_SCHEMA.field(name) for name in EXPORT_COLUMNS])

TIE = 0.5
PROPOSALS = ("0", "1", "tie")
ANNOTATION_STATUSES = ("auto", "annotated", "adjudicated")
# "external": made outside this project (an imported Pick-a-Pic-style set); how the pair was formed is unknown.
STRATEGIES = ("best_of_n", "minimal_pair", "external")
EXTERNAL_STRATEGY = "external"
# The risk of a pair whose set does not say (a five-column set, trained directly or imported without --risk).
DEFAULT_RISK = "unspecified"


def provenance_defaults(risk: str = DEFAULT_RISK) -> dict[str, str]:
    """What a set with only the five Pick-a-Pic columns gets in each provenance column (``import`` writes
    these; the trainer reads such a set directly with the same ``risk``). Values as the card shows them."""
    return {
        "pair_id": "content key of the caption and both images (the same pair always gets the same id)",
        "risk": risk,
        "strategy": EXTERNAL_STRATEGY,
        "seed_0, seed_1": "-1 (unknown)",
        "prompt_0, prompt_1": "the caption",
        "negative_prompt_0, negative_prompt_1": "empty",
        "model_id": "empty (unknown)",
        "generation, scores_0, scores_1": "{} (unknown)",
        "proposal": "what the labels say: 0, 1 or tie",
        "pair_similarity": "NaN (not computed)",
        "annotation_status": "auto (not reviewed with the annotation tool)",
        "annotations": "[]",
    }


def pair_key(caption: str, image_0: bytes, image_1: bytes) -> str:
    """Content key of a pair: the caption plus both images' hashes, independent of image order.

    Swapping the two images (and their labels) describes the same comparison, so it gets the same key.
    """
    first, second = sorted((sha256_bytes(bytes(image_0)), sha256_bytes(bytes(image_1))))
    return stable_key("pair", caption, first, second)


def proposal_from_labels(label_0: float) -> str:
    """"0" if image 0 is preferred, "1" if image 1 is, "tie" for 0.5."""
    if label_0 == TIE:
        return "tie"
    return "0" if label_0 > TIE else "1"


def preferred_image_hash(row: Mapping[str, Any]) -> str:
    """The sha256 of the preferred image, or "tie": a decision that does not depend on image order."""
    if row["label_0"] == TIE:
        return "tie"
    image = row["jpg_0"] if row["label_0"] > TIE else row["jpg_1"]
    return sha256_bytes(bytes(image))


def _as_json(value: Any, column: str, kind: type) -> str:
    """Store dict/list provenance as JSON text; accept already-encoded JSON text unchanged."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"column {column!r}: not valid JSON ({exc})") from exc
    else:
        parsed = value
    if not isinstance(parsed, kind):
        raise DataError(f"column {column!r}: expected a JSON {kind.__name__}, got {type(parsed).__name__}")
    return json.dumps(parsed, sort_keys=True, default=str)


def make_pair_row(
    caption: str,
    jpg_0: bytes,
    jpg_1: bytes,
    label_0: float,
    *,
    risk: str,
    strategy: str,
    pair_id: str | None = None,
    seed_0: int = -1,
    seed_1: int = -1,
    prompt_0: str | None = None,
    prompt_1: str | None = None,
    negative_prompt_0: str = "",
    negative_prompt_1: str = "",
    model_id: str = "",
    generation: Mapping[str, Any] | str | None = None,
    scores_0: Mapping[str, Any] | str | None = None,
    scores_1: Mapping[str, Any] | str | None = None,
    proposal: str | None = None,
    pair_similarity: float = math.nan,
    annotation_status: str = "auto",
    annotations: list | str | None = None,
) -> dict[str, Any]:
    """One row with every column filled: ``label_1 = 1 - label_0``; provenance gets safe defaults.

    ``prompt_0``/``prompt_1`` default to the caption (best-of-N generates both from it); ``proposal``
    defaults to what the labels say; ``pair_id`` defaults to :func:`pair_key`; seeds of -1 mean unknown.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise DataError("make_pair_row: caption must be a non-empty string")
    for name, image in (("jpg_0", jpg_0), ("jpg_1", jpg_1)):
        if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) == 0:
            raise DataError(f"make_pair_row: {name} must be non-empty encoded image bytes")
    label_0 = float(label_0)
    if label_0 not in (0.0, TIE, 1.0):
        raise DataError(f"make_pair_row: label_0 must be 0, 0.5 (tie) or 1, got {label_0}")
    if annotation_status not in ANNOTATION_STATUSES:
        raise DataError(f"make_pair_row: annotation_status {annotation_status!r} not in {ANNOTATION_STATUSES}")
    proposal = proposal if proposal is not None else proposal_from_labels(label_0)
    if proposal not in PROPOSALS:
        raise DataError(f"make_pair_row: proposal {proposal!r} not in {PROPOSALS}")
    return {
        "caption": caption,
        "jpg_0": bytes(jpg_0),
        "jpg_1": bytes(jpg_1),
        "label_0": label_0,
        "label_1": 1.0 - label_0,
        "pair_id": pair_id or pair_key(caption, jpg_0, jpg_1),
        "risk": risk,
        "strategy": strategy,
        "seed_0": int(seed_0),
        "seed_1": int(seed_1),
        "prompt_0": caption if prompt_0 is None else prompt_0,
        "prompt_1": caption if prompt_1 is None else prompt_1,
        "negative_prompt_0": negative_prompt_0,
        "negative_prompt_1": negative_prompt_1,
        "model_id": str(model_id),
        "generation": _as_json(generation if generation is not None else {}, "generation", dict),
        "scores_0": _as_json(scores_0 if scores_0 is not None else {}, "scores_0", dict),
        "scores_1": _as_json(scores_1 if scores_1 is not None else {}, "scores_1", dict),
        "proposal": proposal,
        "pair_similarity": float(pair_similarity),
        "annotation_status": annotation_status,
        "annotations": _as_json(annotations if annotations is not None else [], "annotations", list),
    }


def schema_problems(schema: pa.Schema, expected: pa.Schema = PREFERENCE_SCHEMA) -> list[str]:
    """Human-readable differences between a file's schema and the expected one (empty = matches)."""
    problems = []
    have = {field.name: field.type for field in schema}
    for field in expected:
        if field.name not in have:
            problems.append(f"missing column {field.name!r} ({field.type})")
        elif not types_compatible(have[field.name], field.type):
            problems.append(f"column {field.name!r} has type {have[field.name]}, expected {field.type}")
    extra = [name for name in have if expected.get_field_index(name) < 0]
    if extra:
        problems.append(f"unexpected column(s) {extra}")
    return problems


def types_compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    # large_string/large_binary hold the same values; other tools (pandas, polars) may write them.
    if actual == expected:
        return True
    return (expected == pa.string() and actual == pa.large_string()) or (
        expected == pa.binary() and actual == pa.large_binary()
    )
