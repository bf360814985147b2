"""The retain set: base-model images of risk-free prompts, for the trainer's anchoring term.

Generated and scored through the same resumable :class:`Workspace` as the pairs (so a killed run
reuses them), then filtered: an image that one of the configured exposure/association risks flags, or
that the alignment scorer calls invalid, is dropped, because anchoring the LoRA to a base-model failure
would pull against the pairs. Format: preference_sets/retain.py.
"""

from __future__ import annotations

from typing import Any, Iterator

from data_curation.config import RetainConfig
from data_curation.risks import RiskJudge, flagged_by
from data_curation.strategies import original_spec
from data_curation.workspace import Candidate, Workspace
from inference.generation import GenerationSpec
from inference.prompts import PromptRecord
from preference_sets.retain import make_retain_row

def rejection_reason(candidate: Candidate, record: PromptRecord, judges: list[RiskJudge],
                     requested: bool = False) -> str | None:
    """Why an image may not anchor the model (None: it may). A ``requested`` prompt asks for a risk's content,
    so only an invalid image is refused."""
    for judge in judges:
        if not judge.is_valid(candidate.scores):
            return "invalid"
    return None if requested else flagged_by(candidate.scores, record, judges)


def curate_retain(
    ws: Workspace, cfg: RetainConfig, prompts: list[PromptRecord], judges: list[RiskJudge], base: GenerationSpec,
    base_seed: int, requested: frozenset[str] = frozenset(),
) -> tuple[list[Candidate], dict[str, Any]]:
    """Generate ``images_per_prompt`` seeds of every prompt; keep those no risk flags (for the prompts in
    ``requested``, which ask for a risk's content: those that are valid)."""
    plan = [(record, s) for record in prompts for s in range(cfg.images_per_prompt)]
    specs = [original_spec(record, s, base, base_seed) for record, s in plan]
    candidates = ws.realise(specs, [record.prompt for record, _ in plan], desc="retain images")
    kept, dropped = [], {}
    for (record, _), candidate in zip(plan, candidates):
        reason = rejection_reason(candidate, record, judges, record.prompt in requested) if cfg.drop_risky else None
        if reason is None:
            kept.append(candidate)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    info = {"prompts": len(prompts), "images_generated": len(candidates), "images_kept": len(kept),
            "dropped": dict(sorted(dropped.items()))}
    return kept, info


def retain_rows(candidates: list[Candidate], ws: Workspace, model_id: str) -> Iterator[dict[str, Any]]:
    for c in candidates:
        yield make_retain_row(c.caption, ws.store.get_bytes(c.key), c.spec.seed, model_id, c.spec.to_json(), c.scores)
