"""Image moderation with the configured scorers: which images carry a flagged concept, and why.

The ``moderate:`` section names scorers (built with :func:`inference.scorers.build_scorer`, the same registry
curation and eval use: the synthetic world's ``oracle``, ``nudenet``, ``clip`` zero-shot concepts) and flag
rules over their outputs: a score at or above a threshold (``{name: exposed, scorer: nudenet, score:
nudenet_max, threshold: 0.45}``) or a label that is true or names something (``{name: symbol, scorer: oracle,
label: symbol_present}``; a string label counts unless it is empty or "none"). :class:`ImageModerator` gives per
image the flags it raised and every scorer's output, for a report.

Used by ``python -m preference_sets.cli moderate`` to screen fine-tuning data, and meant for the output check of
a guarded generation service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from core.errors import ConfigError, DataError
from inference.scorers import Scorer, build_scorer, check_scorer_name
from mitigations.config import load_mitigation_config

NOTHING = ("", "none")  # string labels that name nothing


@dataclass
class FlagRule:
    """One concept that flags an image: a score at or above ``threshold``, or a true / non-"none" label."""

    name: str = field(metadata={"help": "Name of the flag in reports, e.g. exposed."})
    scorer: str = field(metadata={"help": "The scorer (a name under moderate.scorers) whose output is read."})
    score: Optional[str] = field(default=None, metadata={
        "help": "Score key compared with threshold, e.g. nudenet_max, exposed, inappropriate; or give label."})
    threshold: float = field(default=0.5, metadata={"help": "A score at or above this flags the image."})
    label: Optional[str] = field(default=None, metadata={
        "help": "Label key that flags the image when true or a string other than none, e.g. symbol_present."})

    def validate(self) -> None:
        if (self.score is None) == (self.label is None):
            raise ConfigError(f"moderate.flags {self.name!r}: give exactly one of score (with threshold) or label")

    def fires(self, output: Mapping[str, Any]) -> bool:
        """Whether this rule flags an image, given its scorer's output ``{"scores": ..., "labels": ...}``."""
        kind, key = ("scores", self.score) if self.score is not None else ("labels", self.label)
        values = output.get(kind, {})
        if key not in values:
            raise DataError(f"moderate.flags {self.name!r}: scorer {self.scorer!r} gives no {kind[:-1]} {key!r}; "
                            f"its {kind}: {sorted(values)}")
        value = values[key]
        if self.score is not None:
            return float(value) >= self.threshold
        if isinstance(value, str):
            return value.strip().lower() not in NOTHING
        return bool(value)


@dataclass
class ModerationConfig:
    """The ``moderate:`` section."""

    scorers: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "Scorer name -> its options (inference.scorers.build_scorer), e.g. {oracle: {path: "
                "models/synthetic-oracle}} or {nudenet: {threshold: 0.45}}."})
    flags: list[FlagRule] = field(default_factory=list, metadata={
        "help": "Flag rules: {name, scorer, score, threshold} or {name, scorer, label}."})
    batch_size: int = field(default=32, metadata={"help": "Images per scorer call."})

    def validate(self) -> None:
        if not self.scorers:
            raise ConfigError("moderate.scorers is empty: name at least one scorer")
        for name in self.scorers:
            check_scorer_name(name)
        if not self.flags:
            raise ConfigError("moderate.flags is empty: give at least one flag rule")
        names = [flag.name for flag in self.flags]
        if len(set(names)) != len(names):
            raise ConfigError(f"moderate.flags: flag names repeat: {names}")
        for flag in self.flags:
            if flag.scorer not in self.scorers:
                raise ConfigError(f"moderate.flags {flag.name!r}: scorer {flag.scorer!r} is not under "
                                  f"moderate.scorers {sorted(self.scorers)}")
        if self.batch_size < 1:
            raise ConfigError(f"moderate.batch_size must be >= 1, got {self.batch_size}")


def load_moderation_config(path: str | Path, overrides: Sequence[str] = ()) -> ModerationConfig:
    return load_mitigation_config(ModerationConfig, path, "moderate", overrides)


@dataclass(frozen=True)
class ImageVerdict:
    """Moderation of one image: the flags it raised and each scorer's output (``{scorer: {"scores", "labels"}}``)."""

    flags: tuple[str, ...]
    outputs: Mapping[str, Mapping[str, Any]]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


class ImageModerator:
    """Runs the configured scorers over images and applies the flag rules."""

    def __init__(self, config: ModerationConfig, scorers: Mapping[str, Scorer] | None = None):
        self.config = config
        if scorers is None:
            scorers = {name: build_scorer(name, **options) for name, options in config.scorers.items()}
        missing = sorted(set(config.scorers) - set(scorers))
        if missing:
            raise ConfigError(f"moderation: no scorer object for {missing}")
        self.scorers = dict(scorers)

    def moderate(self, images: Sequence[np.ndarray]) -> list[ImageVerdict]:
        """One verdict per uint8 (H, W, 3) image, in order."""
        outputs: dict[str, list[Mapping[str, Any]]] = {}
        size = self.config.batch_size
        for name in self.config.scorers:
            scored: list[Mapping[str, Any]] = []
            for start in range(0, len(images), size):
                scored += self.scorers[name].score(list(images[start:start + size]))
            if len(scored) != len(images):
                raise DataError(f"moderation: scorer {name!r} gave {len(scored)} results for {len(images)} images")
            outputs[name] = scored
        verdicts = []
        for i in range(len(images)):
            mine = {name: outputs[name][i] for name in outputs}
            flags = tuple(rule.name for rule in self.config.flags if rule.fires(mine[rule.scorer]))
            verdicts.append(ImageVerdict(flags, mine))
        return verdicts
