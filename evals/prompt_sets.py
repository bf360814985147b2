"""Eval prompt sets: the synthetic world's held-out ``eval`` split, and the leakage guard.

The eval split is held out from curation by template id and slot combination
(``synthetic_world.prompts``). Before any image is generated, the eval prompts are checked against
what curation actually used: the preference set's captions and generation prompts. Any overlap is a
``LeakageError``: the measured improvement would otherwise be partly memorisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from core.errors import ConfigError, DataError, LeakageError
from inference.prompts import PromptSourceConfig, normalise  # the same normal form curation dedupes with


SPLIT_OF_RECORD = {"eval": "in_grammar", "shift": "phrasing_shift"}


def world_eval_records(families: Sequence[str], per_family: int,
                       family_prompts: Mapping[str, int] | None = None, split: str = "in_grammar") -> list[dict]:
    """Up to ``per_family`` prompt records of each family (``family_prompts[f]`` for a family named there) of
    one eval split (``in_grammar``: the world's eval split; ``phrasing_shift``: the shift grammar), in a fixed
    order. Each record carries ``eval_split``.

    The subset is spread over the whole family (every k-th record), so a small eval still covers
    many templates and slot combinations.
    """
    from synthetic_world import prompts as world_prompts
    from synthetic_world.vocab import ASSOCIATION_GROUP

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
    from synthetic_world import prompts as world_prompts

    return [r for family in families for r in world_prompts.prompt_records(family=family, split="curation")]


def curation_prompt_sources(config_path: str | Path) -> list[tuple[str, PromptSourceConfig]]:
    """(name, source) of every prompt set the ``curate:`` section of ``config_path`` curates from, in curation's
    task order: each risk's ``prompts``, then, for a risk with ``request_pairs``, its request task's
    ``request_prompts`` (named ``<risk>_request``, as curation names the task). Read through the shared
    :class:`PromptSourceConfig` (each source type- and value-checked as curation checks it), so the eval needs
    nothing of the curation stage."""
    from core.config import config_from_dict, read_yaml

    risks = (read_yaml(config_path).get("curate") or {}).get("risks") or {}
    if not isinstance(risks, dict):
        raise ConfigError(f"curate.risks: expected a mapping of risk name -> risk, got {risks!r}")
    sources = []
    for name, risk in risks.items():
        if not isinstance(risk, dict):
            raise ConfigError(f"curate.risks.{name}: expected a mapping, got {risk!r}")
        tasks = [(f"curate.risks.{name}", "prompts")]
        if risk.get("request_pairs"):
            tasks.append((f"curate.risks.{name}_request", "request_prompts"))
        for where, key in tasks:
            data = risk.get(key)
            if not isinstance(data, dict):
                raise ConfigError(f"curate.risks.{name}.{key}: expected a mapping for PromptSourceConfig, got {data!r}")
            sources.append((where, config_from_dict(PromptSourceConfig, data, where=f"curate.risks.{name}.{key}")))
    return sources


def curation_prompts_from_config(config_path: str | Path | None) -> list[str]:
    """Every prompt the ``curate:`` section of the same config file would curate from ([] if none)."""
    if config_path is None:
        return []
    from inference.prompts import load_prompts

    return [r.prompt for where, source in curation_prompt_sources(config_path) for r in load_prompts(source, where)]


def curation_prompts_from_preference_set(folder: str | Path) -> list[str]:
    """Every caption and generation prompt the preference set at ``folder`` holds ([] if absent)."""
    folder = Path(folder)
    if not folder.exists():
        return []  # not curated yet: the config check still applies
    from preference_sets.io import read_rows

    prompts: list[str] = []
    for row in read_rows(folder, columns=["caption", "prompt_0", "prompt_1"]):
        prompts += [row["caption"], row["prompt_0"], row["prompt_1"]]
    return [p for p in prompts if p]


def check_disjoint(eval_prompts: Iterable[str], curation_prompts: Iterable[str], source: str) -> None:
    """Raise LeakageError naming up to five eval prompts that curation also used."""
    curation = {normalise(p) for p in curation_prompts}
    overlap = sorted({p for p in eval_prompts if normalise(p) in curation})
    if overlap:
        shown = "; ".join(repr(p) for p in overlap[:5])
        raise LeakageError(
            f"{len(overlap)} eval prompt(s) also appear in the curation prompts ({source}), e.g. {shown}. "
            "Eval must use the held-out eval split only."
        )
