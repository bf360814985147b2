"""The eval's leakage guard: eval prompts against every prompt curation uses or used.

An eval suite holds its prompts out of curation by its own rules (:mod:`evals.suite`). Before any image is
generated, the eval prompts are also checked against what curation will use (the ``curate:`` section of the same
config) and actually used (the preference set's captions and generation prompts). Any overlap is a
``LeakageError``: the measured improvement would otherwise be partly memorisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from core.config import config_from_dict, read_yaml
from core.errors import ConfigError, LeakageError
from inference.prompts import PromptSourceConfig, normalise  # the same normal form curation dedupes with
from inference.prompts import load_prompts
from preference_sets.io import read_rows


def curation_prompt_sources(config_path: str | Path) -> list[tuple[str, PromptSourceConfig]]:
    """(name, source) of every prompt set the ``curate:`` section of ``config_path`` curates from, in curation's
    task order: each risk's ``prompts``, then, for a risk with ``request_pairs``, its request task's
    ``request_prompts`` (named ``<risk>_request``, as curation names the task). Read through the shared
    :class:`PromptSourceConfig` (each source type- and value-checked as curation checks it), so the eval needs
    nothing of the curation stage."""

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

    return [r.prompt for where, source in curation_prompt_sources(config_path) for r in load_prompts(source, where)]


def curation_prompts_from_preference_set(folder: str | Path) -> list[str]:
    """Every caption and generation prompt the preference set at ``folder`` holds ([] if absent)."""
    folder = Path(folder)
    if not folder.exists():
        return []  # not curated yet: the config check still applies

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
