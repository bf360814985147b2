"""The synthetic world's eval suite (``eval.mode: synthetic``; registered by :mod:`synthetic_world.plugin`).

Prompts: the world's held-out ``eval`` split (``in_grammar``) and the same slot combinations in the phrasing-shift
grammar (``phrasing_shift``, :func:`synthetic_world.prompts.shift_records`), a deterministic subset per family,
checked by the world's own leakage rules. Every image is read by the oracle (the scorer ``oracle``); the metrics and
bars are :mod:`synthetic_world.eval_metrics`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from core.errors import ConfigError, DataError
from synthetic_world import eval_metrics
from synthetic_world import prompts as world_prompts
from synthetic_world.vocab import ASSOCIATION_GROUP

SUITE_NAME = "synthetic"
EVAL_FAMILIES = ("exposure", "stereotype", "association", "misalignment", "explicit", "neutral",
                 "exposure_request", "symbol_request")
# The committed oracle, read when eval.oracle_path is null.
DEFAULT_ORACLE = "models/synthetic-oracle"
# The world's record splits behind the eval splits.
SPLIT_OF_RECORD = {"eval": "in_grammar", "shift": "phrasing_shift"}
GRID_TITLES = {"exposure": "Unintended exposure", "association": "Harmful association",
               "stereotype": "Stereotypes (group not named)", "misalignment": "Misalignment (requested outfit)",
               "explicit": "Explicit attributes", "neutral": "Neutral prompts (collateral)",
               "exposure_request": "Requested exposure", "symbol_request": "Requested symbols"}


def world_eval_records(families: Sequence[str], per_family: int,
                       family_prompts: Mapping[str, int] | None = None, split: str = "in_grammar") -> list[dict]:
    """Up to ``per_family`` prompt records of each family (``family_prompts[f]`` for a family named there) of
    one eval split (``in_grammar``: the world's eval split; ``phrasing_shift``: the shift grammar), in a fixed
    order. Each record carries ``eval_split``.

    The subset is spread over the whole family (every k-th record), so a small eval still covers
    many templates and slot combinations.
    """
    out: list[dict] = []
    for family in families:
        count = (family_prompts or {}).get(family, per_family)
        found = (world_prompts.prompt_records(family=family, split="eval") if split == "in_grammar"
                 else world_prompts.shift_records(family))
        pool = [dict(r, family=r.get("family", family), eval_split=split) for r in found]
        if not pool:
            raise DataError(f"the world's eval split has no prompts of family {family!r}")
        if family == "association":
            # The association bar is about the affected group, which names only a third of the family:
            # take `per_family` prompts naming it, and half as many naming the other groups (spill-over).
            affected = [r for r in pool if r.get("slots", {}).get("group") == ASSOCIATION_GROUP]
            others = [r for r in pool if r.get("slots", {}).get("group") != ASSOCIATION_GROUP]
            out += _spread(affected, count) + _spread(others, max(1, count // 2))
        elif family == "stereotype":
            # The stereotype metric is a mean over roles of each role's max group share: give every role
            # the same number of prompts (spread over the whole family, 4 pilot prompts against 10 doctor
            # ones left the pilot share resting on 16 images).
            out += _spread_by_slot(pool, count, "role")
        elif family == "symbol_request":
            # One "requested symbol honoured" bar per group: the same number of prompts for each.
            out += _spread_by_slot(pool, count, "group")
        else:
            out += _spread(pool, count)
    return out


def _spread(pool: list[dict], count: int) -> list[dict]:
    """``count`` records taken every k-th over the pool (covers many templates and slot combinations)."""
    step = max(1, len(pool) // count)
    return pool[::step][:count]


def _spread_by_slot(pool: list[dict], count: int, slot: str) -> list[dict]:
    """``count`` records split as evenly as possible over the values of ``slot`` (the first
    ``count % k`` values in sorted order get one more), each value's share taken by :func:`_spread`."""
    strata: dict[str, list[dict]] = {}
    for record in pool:
        strata.setdefault(str(record.get("slots", {}).get(slot)), []).append(record)
    values = sorted(strata)
    base, extra = divmod(count, len(values))
    out = []
    for i, value in enumerate(values):
        share = base + (1 if i < extra else 0)
        if share:
            out += _spread(strata[value], share)
    return out


def world_curation_records(families: Sequence[str]) -> list[dict]:
    """The curation split of every family named, in family order."""
    return [r for family in families for r in world_prompts.prompt_records(family=family, split="curation")]


class WorldEvalSuite:
    """The eval suite ``synthetic``: the world's held-out prompts, read by its exact oracle."""

    reader = "oracle"

    @staticmethod
    def families(cfg) -> list[str]:
        """eval.families, or every family of the world when it is empty."""
        return list(cfg.families) or list(EVAL_FAMILIES)

    def check_config(self, cfg) -> None:
        bad = sorted((set(cfg.families) | set(cfg.family_prompts)) - set(EVAL_FAMILIES))
        if bad:
            raise ConfigError(f"eval.families: unknown family(ies) {bad}; valid: {list(EVAL_FAMILIES)}")

    def scorer_options(self, name: str, cfg) -> dict[str, Any] | None:
        return {"path": cfg.oracle_path or DEFAULT_ORACLE} if name == self.reader else None

    def prompt_records(self, cfg) -> list[dict]:
        records = []
        families = self.families(cfg)
        for split in cfg.splits:
            records += world_eval_records(families, cfg.prompts_per_family, cfg.family_prompts, split)
        in_grammar = [r for r in records if r["eval_split"] == "in_grammar"]
        shift = [r for r in records if r["eval_split"] == "phrasing_shift"]
        # Held out by template and slot combination; the shift split is written in a grammar curation never uses
        # (checked against every curation prompt of every family).
        curation = world_curation_records(world_prompts.FAMILIES if shift else families)
        world_prompts.check_no_leakage([r for r in curation if r["family"] in families], in_grammar)
        if shift:
            world_prompts.check_shift_disjoint(curation, shift)
        return records

    def summary(self, items, records, results, boot, policy, split) -> dict:
        return eval_metrics.compute_world_summary(items, records, results, boot, policy, split)

    def describe_read(self, read: dict) -> str:
        return eval_metrics.describe_read(read)

    def grid_title(self, family: str) -> str:
        return GRID_TITLES.get(family, family)

    def notes(self, cfg) -> list[str]:
        if cfg.filter.scorer == self.reader and "filter_regenerate" in cfg.models:
            return ["The filter baseline uses the exact oracle as its classifier: an upper bound on what a "
                    "real output filter achieves."]
        return []


EVAL_SUITE = WorldEvalSuite()
