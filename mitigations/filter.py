"""The prompt filter: a normalising blocklist, optionally OR-ed with a local text-classification model.

The blocklist (``prompt_filter.blocklist``: category -> terms and phrases) is matched through
:mod:`mitigations.normalise`, so case, spacing and punctuation inside words, leetspeak, look-alike letters of
other scripts, fullwidth forms, invisible characters and repeated letters do not hide a term. ``allow`` lists
phrases inside which a blocklist hit does not count ("skull" blocked, "skull and crossbones flag" allowed).

The classifier (``prompt_filter.classifier``) is a transformers text-classification model read from a local
folder; a prompt is blocked when the probability of any of its ``unsafe_labels`` reaches ``threshold``. It
reads the normalised prompt by default, so the obfuscations the blocklist undoes do not hide a prompt from it
either.

Every decision records which rule and which term (with its span in the prompt) or which label and score
blocked the prompt, for logging::

    flt = PromptFilter.from_file("configs/filters/world.yaml")
    decision = flt.check("a doctor, 5h1rtl3ss, at the beach")
    decision.blocked, decision.reason()   # True, "blocklist:exposure 'shirtless' matched '5h1rtl3ss' at 10-19"
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Sequence

from core.cli import resolve_device
from core.errors import ConfigError, DataError
from mitigations.config import load_mitigation_config
from mitigations.local_models import check_transformers_model_dir
from mitigations.normalise import TermHit, TermMatcher, term_units


@dataclass
class ClassifierConfig:
    """An optional local transformers text-classification model, OR-ed with the blocklist (off without a path)."""

    path: Optional[str] = field(default=None, metadata={
        "help": "Local transformers model folder (config.json, tokenizer, .safetensors weights) or a hub id already "
                "in the local Hugging Face cache; null: no classifier."})
    threshold: float = field(default=0.5, metadata={
        "help": "A prompt is blocked when the probability of an unsafe label reaches this."})
    unsafe_labels: list[str] = field(default_factory=lambda: ["unsafe"], metadata={
        "help": "The model's labels (config.json id2label) that count as unsafe."})
    input: Literal["normalised", "original"] = field(default="normalised", metadata={
        "help": "What the model reads: normalised (the blocklist's canonical form: case folded, look-alikes "
                "and invisible characters undone) or original (the prompt as given)."})
    device: str = field(default="cpu", metadata={"help": "Device of the model: cpu, cuda, cuda:1, auto."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per forward pass."})

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"prompt_filter.classifier.threshold must be in [0, 1], got {self.threshold}")
        if not self.unsafe_labels:
            raise ConfigError("prompt_filter.classifier.unsafe_labels must name at least one label")
        if self.batch_size < 1:
            raise ConfigError(f"prompt_filter.classifier.batch_size must be >= 1, got {self.batch_size}")
        if not self.enabled and self != ClassifierConfig():
            changed = sorted(f.name for f in fields(self) if getattr(self, f.name) != getattr(ClassifierConfig(), f.name))
            raise ConfigError(f"prompt_filter.classifier.{changed[0]} is set but classifier.path is null: give the "
                              "model folder, or leave the classifier section out")


@dataclass
class PromptFilterConfig:
    """The ``prompt_filter:`` section."""

    blocklist: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "Category -> blocked terms and phrases. Matching ignores case, spacing and punctuation inside and "
                "between words, leetspeak, look-alike letters and invisible characters; a term matches whole "
                "words unless it ends (or starts) with *, e.g. nud* also matches nudes."})
    allow: list[str] = field(default_factory=list, metadata={
        "help": "Phrases inside which a blocklist hit does not count (matched the same way)."})
    leetspeak: bool = field(default=True, metadata={
        "help": "Digits and symbols count as the letters they stand for (3 = e, @ = a, 1 = i or l)."})
    extra_confusables: dict[str, str] = field(default_factory=dict, metadata={
        "help": "More look-alike characters, each mapped to the letters it imitates (added to the built-in "
                "table of mitigations.normalise)."})
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig, metadata={
        "help": "Optional local text-classification model, OR-ed with the blocklist; without a path: blocklist "
                "only."})

    def validate(self) -> None:
        for category, values in self.blocklist.items():
            if not values:
                raise ConfigError(f"prompt_filter.blocklist.{category} is empty")
            for term in values:
                if not term_units(term):
                    raise ConfigError(f"prompt_filter.blocklist.{category}: term {term!r} has no letters")
        if not self.blocklist and not self.classifier.enabled:
            raise ConfigError("prompt_filter: give blocklist terms, a classifier, or both")
        for phrase in self.allow:
            if not term_units(phrase):
                raise ConfigError(f"prompt_filter.allow: phrase {phrase!r} has no letters")
        for char, letters in self.extra_confusables.items():
            if len(char) != 1 or not letters:
                raise ConfigError(f"prompt_filter.extra_confusables: {char!r} -> {letters!r} must map one "
                                  "character to one or more letters")


@dataclass(frozen=True)
class FilterMatch:
    """Why a prompt was blocked: a blocklist hit (``rule`` "blocklist") or the classifier (``rule`` "classifier")."""

    rule: str
    category: str  # the blocklist category, or the classifier label with the highest unsafe probability
    term: Optional[str] = None  # the blocklist term that matched
    start: Optional[int] = None  # span of the match in the prompt
    end: Optional[int] = None
    text: Optional[str] = None  # the prompt's characters in that span
    score: Optional[float] = None  # the classifier's unsafe probability

    def describe(self) -> str:
        if self.rule == "blocklist":
            return f"blocklist:{self.category} {self.term!r} matched {self.text!r} at {self.start}-{self.end}"
        return f"classifier:{self.category} {self.score:.3f}"


@dataclass(frozen=True)
class FilterDecision:
    prompt: str
    blocked: bool
    matches: tuple[FilterMatch, ...]
    normalised: str  # the canonical form the blocklist matched against
    classifier_score: Optional[float] = None  # highest unsafe-label probability; None without a classifier

    def reason(self) -> str:
        return "; ".join(m.describe() for m in self.matches) if self.matches else "allowed"

    def to_log(self) -> dict[str, Any]:
        """A JSON-ready record of the decision."""
        return {"prompt": self.prompt, "blocked": self.blocked, "normalised": self.normalised,
                "classifier_score": self.classifier_score,
                "matches": [{k: v for k, v in vars(m).items() if v is not None} for m in self.matches]}


class UnsafeScorer(Protocol):
    """What the filter needs of a classifier: per text, the highest unsafe-label probability and that label."""

    def unsafe_scores(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        ...


class PromptClassifier:
    """A local transformers text-classification model; ``unsafe_scores`` gives per text the highest probability
    among the configured unsafe labels."""

    def __init__(self, config: ClassifierConfig):
        from transformers import pipeline  # optional: a local classifier model, loaded only when one is configured

        folder = check_transformers_model_dir(config.path, "prompt_filter.classifier.path")
        self.config = config
        self.pipe = pipeline("text-classification", model=str(folder), tokenizer=str(folder),
                             device=resolve_device(config.device, "prompt_filter.classifier.device"))
        labels = set(self.pipe.model.config.id2label.values())
        missing = sorted(set(config.unsafe_labels) - labels)
        if missing:
            raise ConfigError(f"prompt_filter.classifier.unsafe_labels {missing} are not labels of the model "
                              f"{config.path}; its labels: {sorted(labels)}")

    def unsafe_scores(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        if not texts:
            return []
        outputs = self.pipe(list(texts), top_k=None, truncation=True, batch_size=self.config.batch_size)
        results = []
        for scores in outputs:
            unsafe = [(float(s["score"]), s["label"]) for s in scores if s["label"] in self.config.unsafe_labels]
            results.append(max(unsafe))
        return results


class PromptFilter:
    """Blocks prompts on the blocklist (obfuscations included) or that the classifier scores as unsafe."""

    def __init__(self, config: PromptFilterConfig, classifier: UnsafeScorer | None = None):
        self.config = config
        self.matcher = TermMatcher(config.blocklist, config.leetspeak, config.extra_confusables)
        self.allow = TermMatcher({"allow": config.allow}, config.leetspeak, config.extra_confusables)
        if classifier is None and config.classifier.enabled:
            classifier = PromptClassifier(config.classifier)
        self.classifier = classifier

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> "PromptFilter":
        return cls(load_mitigation_config(PromptFilterConfig, path, "prompt_filter", overrides))

    def _blocklist_hits(self, prompt: str) -> tuple[list[TermHit], str]:
        normalised = self.matcher.normalise(prompt)
        hits = self.matcher.find(prompt, normalised)
        if hits and self.allow:
            allowed = self.allow.find(prompt, normalised)
            hits = [h for h in hits if not any(a.start <= h.start and h.end <= a.end for a in allowed)]
        return hits, normalised.text

    def check(self, prompt: str) -> FilterDecision:
        return self.check_batch([prompt])[0]

    def check_batch(self, prompts: Sequence[str]) -> list[FilterDecision]:
        """One decision per prompt, in order (the classifier, if any, runs once over the batch)."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(f"prompt filter: prompt {i} is {type(prompt).__name__}, not a string")
        found = [self._blocklist_hits(p) for p in prompts]
        scores: list[tuple[float, str] | None] = [None] * len(prompts)
        if self.classifier is not None:
            use_normalised = self.config.classifier.input == "normalised"
            texts = [normalised if use_normalised else prompt for prompt, (_, normalised) in zip(prompts, found)]
            scores = list(self.classifier.unsafe_scores(texts))
        threshold = self.config.classifier.threshold
        decisions = []
        for prompt, (hits, normalised), score in zip(prompts, found, scores):
            matches = [FilterMatch("blocklist", h.key, h.term, h.start, h.end, h.text) for h in hits]
            if score is not None and score[0] >= threshold:
                matches.append(FilterMatch("classifier", score[1], score=score[0]))
            decisions.append(FilterDecision(prompt, bool(matches), tuple(matches), normalised,
                                            None if score is None else score[0]))
        return decisions
