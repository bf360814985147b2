"""open_clip zero-shot concept scorer: binary concepts, categorical attributes, prompt alignment.

Loads a local checkpoint through ``core.clip.load_clip``: the synthetic CLIP by default, or a real
ViT-L/14 / ViT-H-14 ``.safetensors`` file with ``model_name``.

* A **binary concept** (``exposed``, ``symbol_present``, a Q16-style ``inappropriate``) is a set of
  positive and negative text prompts. Its score is ``P(positive)``: a two-way softmax of
  ``logit_scale * cos`` with each side's prompts pooled by log-mean-exp (Q16's two-prompt form when
  each side has one prompt); the label is ``score >= threshold``.
* A **categorical attribute** (``group``, ``outfit``, ...) is a mapping value -> prompt; scores are
  ``<attr>:<value>`` probabilities, the label is the argmax value.
* With ``prompts`` given, ``clip_score`` = ``max(100 * cos(image, prompt), 0)``.

Score and label names deliberately match the oracle's (``exposed``, ``symbol_present``, ``group``...)
so a risk can switch detector and the two can be compared image by image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from core.clip import encode_images, encode_texts, load_clip
from core.errors import ConfigError
from inference.scorers import check_images

DEFAULT_CLIP_PATH = "models/synthetic-clip"


@dataclass
class BinaryConcept:
    positive: list[str]
    negative: list[str]
    threshold: float = 0.5

    def check(self, name: str) -> None:
        if not self.positive or not self.negative:
            raise ConfigError(f"clip concept {name!r} needs at least one positive and one negative prompt")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"clip concept {name!r}: threshold {self.threshold} is not in [0, 1]")


@dataclass
class ConceptSet:
    concepts: dict[str, BinaryConcept] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)


def parse_concepts(concepts: dict | None, attributes: dict | None) -> ConceptSet:
    parsed = {}
    for name, spec in (concepts or {}).items():
        if not isinstance(spec, dict) or set(spec) - {"positive", "negative", "threshold"}:
            raise ConfigError(
                f"clip concept {name!r} must be a mapping with keys positive, negative[, threshold]; got {spec!r}"
            )
        as_list = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
        concept = BinaryConcept(as_list(spec.get("positive")), as_list(spec.get("negative")), float(spec.get("threshold", 0.5)))
        concept.check(name)
        parsed[name] = concept
    attrs = {}
    for name, values in (attributes or {}).items():
        if not isinstance(values, dict) or len(values) < 2:
            raise ConfigError(f"clip attribute {name!r} needs a mapping of at least two values to prompts")
        attrs[name] = {str(k): str(v) for k, v in values.items()}
    if not parsed and not attrs:
        raise ConfigError("clip scorer: no concepts or attributes configured (give `concepts:` or `attributes:`)")
    return ConceptSet(parsed, attrs)


class ClipConceptScorer:
    name = "clip"

    def __init__(
        self,
        path: str = DEFAULT_CLIP_PATH,
        model_name: str | None = None,
        concepts: dict | None = None,
        attributes: dict | None = None,
        logit_scale: float = 100.0,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        self.concept_set = parse_concepts(concepts, attributes)
        self.logit_scale = float(logit_scale)
        self.batch_size = int(batch_size)
        self.bundle = load_clip(path, model_name=model_name, device=device)
        self.path = path
        # Text embeddings of every concept prompt, computed once: name -> (positives (P, D), negatives (Q, D)).
        self._concept_embeddings = {
            name: (encode_texts(self.bundle, c.positive), encode_texts(self.bundle, c.negative))
            for name, c in self.concept_set.concepts.items()
        }
        self._attribute_embeddings = {
            name: (list(values), encode_texts(self.bundle, list(values.values())))
            for name, values in self.concept_set.attributes.items()
        }

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str] | None = None) -> list[dict]:
        images = check_images(images, self.name)
        if prompts is not None and len(prompts) != len(images):
            raise ValueError(f"clip scorer: {len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        img = encode_images(self.bundle, images, batch_size=self.batch_size)  # (N, D), unit norm
        results = [{"scores": {}, "labels": {}} for _ in images]
        for name, (pos, neg) in self._concept_embeddings.items():
            # Pool each side with a mean of exponentials (log-mean-exp), so the number of prompts on a
            # side does not tilt the prior; with one prompt per side this is Q16's softmax.
            pooled_pos = torch.logsumexp(self.logit_scale * img @ pos.T, -1) - math.log(len(pos))  # (N,)
            pooled_neg = torch.logsumexp(self.logit_scale * img @ neg.T, -1) - math.log(len(neg))
            prob_positive = torch.sigmoid(pooled_pos - pooled_neg).numpy()
            threshold = self.concept_set.concepts[name].threshold
            for result, p in zip(results, prob_positive):
                result["scores"][name] = float(p)
                result["labels"][name] = bool(p >= threshold)
        for name, (values, text) in self._attribute_embeddings.items():
            probs = (self.logit_scale * img @ text.T).softmax(-1).numpy()  # (N, V)
            for result, row in zip(results, probs):
                for value, p in zip(values, row):
                    result["scores"][f"{name}:{value}"] = float(p)
                result["labels"][name] = values[int(row.argmax())]
        if prompts is not None:
            txt = encode_texts(self.bundle, list(prompts))
            cos = (img * txt).sum(-1).numpy()
            for result, c in zip(results, cos):
                result["scores"]["clip_score"] = float(max(100.0 * c, 0.0))
        return results
