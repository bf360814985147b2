"""Loading a mitigation's config section from a YAML file.

Each mitigation has one config dataclass and one top-level section: ``prompt_filter:``
(:class:`mitigations.filter.PromptFilterConfig`), ``rewrite:`` (:class:`mitigations.rewrite.RewriteConfig`) and
``moderate:`` (:class:`mitigations.moderation.ModerationConfig`). A section may stand in a file of its own
(``configs/filters/world.yaml``) or beside the stage sections of a run's config. Keys and types are checked
by :func:`core.config.config_from_dict`: an unknown key fails and lists the valid ones. A ``plugins:`` list at the
top of the file is loaded first (:mod:`core.plugins`), as for the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

from core.config import KNOWN_SECTIONS, config_from_dict, read_yaml
from core.errors import ConfigError
from core.plugins import load_plugins

T = TypeVar("T")

MITIGATION_SECTIONS = ("prompt_filter", "rewrite", "moderate")


def load_mitigation_config(cls: type[T], path: str | Path | None, section: str, overrides: Sequence[str] = (),
                           validate: bool = True) -> T:
    """Section ``section`` of the YAML file ``path`` as ``cls``, with ``key=value`` overrides (with or without the
    section prefix). The file must hold the section; any other top-level key must be a known section."""
    if section not in MITIGATION_SECTIONS:
        raise ConfigError(f"unknown mitigation section {section!r}; valid: {list(MITIGATION_SECTIONS)}")
    prefix = f"{section}."
    overrides = [o[len(prefix):] if o.startswith(prefix) else o for o in overrides]
    data = read_yaml(path) if path is not None else {section: {}}
    unknown = sorted(set(data) - set(KNOWN_SECTIONS) - set(MITIGATION_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level section(s) {unknown}. Valid sections: "
                          f"{list(dict.fromkeys([*KNOWN_SECTIONS, *MITIGATION_SECTIONS]))}")
    if section not in data:
        raise ConfigError(f"{path}: no {section}: section (the file's sections: {sorted(data)})")
    load_plugins(data.get("plugins"), str(path))  # a plug-in's scorers, as the stages' configs load them
    return config_from_dict(cls, data[section] or {}, list(overrides), where=section, validate=validate)
