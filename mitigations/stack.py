"""The layered guarded generator: prompt filter -> rewrite -> model -> output check -> regenerate -> blur or refuse.

Each layer is one of this package's parts, switched on or off in :class:`StackConfig` (the ``stack:`` of a config
section such as ``serve:``):

1. **prompt filter** (:mod:`mitigations.filter`): a blocked prompt is not generated at all;
2. **rewrite** (:mod:`mitigations.rewrite`): the prompt the model sees (diversity, safety reframing);
3. **model**: any diffusers pipeline (a LoRA loaded or not), called through the project's generation engine
   (:func:`inference.generation.generate`: one seeded generator per image, so an image depends only on its own
   prompt, negative prompt and seed, never on its batch neighbours); ``negative_prompt`` is added to every call
   (a predefined negative-prompt list);
4. **output check** (:mod:`mitigations.moderation`): the configured scorers, built by name through the plug-in
   registry (the synthetic world's ``oracle``, ``nudenet``, ``clip``), and flag rules over their outputs;
5. **regenerate** a flagged image up to ``regenerate.max_tries`` generations in all: ``plain`` draws new seeds
   (the seeds the eval's filter + regenerate baseline draws); ``guided`` keeps the seed and steers away from the
   concepts the image was flagged for, by a negative prompt or by Safe Latent Diffusion (:mod:`inference.sld`);
6. what is still flagged when the tries run out is **blurred** (or refused, or kept) and comes with warnings.

Every prompt gets a :class:`GuardRecord`: the filter's decision (rule, term, span), the rewrite, each try (seed,
negative prompt, guidance, flags), the outcome, the warnings and the wall time of each layer.
:meth:`GuardedGenerator.run` takes a batch of prompts and seeds, so an eval compares configurations on the same
prompts and seeds; a service calls it with one prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from core.errors import ConfigError, DataError
from core.models import load_pipeline, lora_weights_file
from inference.config import GenerationConfig
from inference.generation import GenerationSpec, derive_seed, generate, native_resolution, resolve_batch_size
from inference.sld import SLDConfig, sld_view
from mitigations.config import load_mitigation_config
from mitigations.filter import FilterDecision, PromptFilter, PromptFilterConfig
from mitigations.moderation import ImageModerator, ImageVerdict, ModerationConfig
from mitigations.rewrite import PromptRewriter, RewriteConfig, RewriteResult

OUTCOMES = ("blocked", "clean", "regenerated", "blurred", "refused", "flagged")


# --- config ------------------------------------------------------------------------------------------------------

@dataclass
class GuardLayer:
    """One switchable layer, configured by a file that holds its section."""

    enabled: bool = field(default=True, metadata={"help": "Run this layer; false: skip it."})
    config: Optional[str] = field(default=None, metadata={
        "help": "YAML file holding the layer's section (prompt_filter:, rewrite: or moderate:), e.g. "
                "configs/filters/world.yaml; a run config that holds the section beside its stage sections works "
                "too."})

    def check(self, where: str, section: str) -> None:
        if self.enabled and self.config is None:
            raise ConfigError(f"{where}.config is not set: give a file holding a {section}: section, or set "
                              f"{where}.enabled=false")


@dataclass
class RegenerateConfig:
    """What happens to a flagged image before the stack gives up on it."""

    mode: Literal["off", "plain", "guided"] = field(default="guided", metadata={
        "help": "off: no regeneration; plain: regenerate with new seeds (the eval's filter + regenerate "
                "baseline); guided: keep the seed and steer away from the flagged concepts (guidance), taking a "
                "new seed only once that seed has been tried with those concepts."})
    max_tries: int = field(default=3, metadata={
        "help": "Generations per prompt in all, the first included (1: never regenerate)."})
    guidance: Literal["negative_prompt", "sld"] = field(default="negative_prompt", metadata={
        "help": "How guided mode steers: negative_prompt (the flagged concepts' texts added to the negative "
                "prompt) or sld (Safe Latent Diffusion with the concepts as its safety concept; SD 1.x/2.x only, "
                "needs generation.guidance > 1)."})
    concepts: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Flag name (a rule of the output check) -> the text guided mode steers away from, e.g. "
                "{exposed: 'bare torso, shirtless'}; guided mode needs one for every flag rule."})
    sld: SLDConfig = field(default_factory=SLDConfig, metadata={
        "help": "Safe Latent Diffusion settings of guidance: sld (its safety_concept is replaced by the flagged "
                "concepts' texts)."})

    def validate(self) -> None:
        if self.max_tries < 1:
            raise ConfigError(f"stack.regenerate.max_tries must be >= 1, got {self.max_tries}")
        for flag, text in self.concepts.items():
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"stack.regenerate.concepts.{flag} is empty: give the concept's text")


@dataclass
class StackConfig:
    """The guarded generator's layers: which run, and what each does."""

    prompt_filter: GuardLayer = field(default_factory=GuardLayer, metadata={
        "help": "Prompt filter (mitigations.filter): a blocked prompt is not generated."})
    rewrite: GuardLayer = field(default_factory=GuardLayer, metadata={
        "help": "Prompt rewriter (mitigations.rewrite): the prompt the model is given."})
    output_check: GuardLayer = field(default_factory=GuardLayer, metadata={
        "help": "Output check (mitigations.moderation, a moderate: section): scorers and flag rules over every "
                "generated image."})
    negative_prompt: str = field(default="", metadata={
        "help": "Negative prompt of every generation (a predefined list of concepts to avoid); empty: none."})
    regenerate: RegenerateConfig = field(default_factory=RegenerateConfig, metadata={
        "help": "Regeneration of flagged images (only with the output check on: without it nothing is flagged)."})
    on_flag: Literal["blur", "refuse", "keep"] = field(default="blur", metadata={
        "help": "An image still flagged after the last try: blur (returned blurred, with a warning), refuse (no "
                "image, a warning) or keep (returned as it is, with a warning)."})
    blur_radius: float = field(default=0.08, metadata={
        "help": "Gaussian blur radius as a fraction of the image's longer side (0.08: 41 px at 512 px)."})

    def validate(self) -> None:
        self.prompt_filter.check("stack.prompt_filter", "prompt_filter")
        self.rewrite.check("stack.rewrite", "rewrite")
        self.output_check.check("stack.output_check", "moderate")
        if not 0 < self.blur_radius <= 1:
            raise ConfigError(f"stack.blur_radius must be in (0, 1], got {self.blur_radius}")

    @property
    def regenerates(self) -> bool:
        """Whether a flagged image is generated again (there is an output check to flag it, and tries to spare)."""
        return self.output_check.enabled and self.regenerate.mode != "off" and self.regenerate.max_tries > 1


# --- results -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TryRecord:
    """One generation of a prompt: its settings and what the output check found."""

    attempt: int  # 1: the first generation
    seed: int
    negative_prompt: str
    guidance: str  # none (the first try), new_seed, negative_prompt or sld
    safety_concept: Optional[str]  # the concepts steered away from (guided tries)
    flags: tuple[str, ...]
    outputs: Mapping[str, Mapping[str, Any]]  # scorer -> {"scores", "labels"}; empty without an output check

    def to_log(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "seed": self.seed, "negative_prompt": self.negative_prompt,
                "guidance": self.guidance, "safety_concept": self.safety_concept, "flags": list(self.flags),
                "outputs": _jsonable(self.outputs)}


@dataclass
class GuardRecord:
    """What every layer decided for one prompt."""

    index: int
    prompt: str
    seed: int
    outcome: str = "clean"  # one of OUTCOMES
    filter: Optional[FilterDecision] = None  # None: the filter is off
    rewrite: Optional[RewriteResult] = None  # None: the rewriter is off or the prompt was blocked
    tries: list[TryRecord] = field(default_factory=list)
    blurred: bool = False
    warnings: list[str] = field(default_factory=list)
    # Wall time (ms) of each layer call this prompt took part in; calls run over the whole batch, so in a batch
    # of several prompts these are the batch's times. "generate" and "output_check" add up over the tries.
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.outcome == "blocked"

    @property
    def model_prompt(self) -> Optional[str]:
        """The prompt the model was given (after the rewrite); None for a blocked prompt."""
        if self.blocked:
            return None
        return self.rewrite.prompt if self.rewrite is not None else self.prompt

    @property
    def tries_used(self) -> int:
        return len(self.tries)

    @property
    def extra_generations(self) -> int:
        return max(0, len(self.tries) - 1)

    @property
    def flagged(self) -> bool:
        """Whether the image of the last try was flagged."""
        return bool(self.tries and self.tries[-1].flags)

    @property
    def flags_seen(self) -> tuple[str, ...]:
        """Every flag raised on any try, in first-seen order."""
        seen: dict[str, None] = {}
        for attempt in self.tries:
            seen.update(dict.fromkeys(attempt.flags))
        return tuple(seen)

    def to_log(self, prompt_text: bool = True) -> dict[str, Any]:
        """A JSON-ready record. ``prompt_text=False`` leaves out every piece of the prompt's text (the prompt,
        the filter's normalised form and matched spans' text, the rewrite), keeping the decisions: for logging a
        blocked prompt without storing it."""
        filter_log = None
        if self.filter is not None:
            filter_log = self.filter.to_log()
            filter_log["reason"] = self.filter.reason() if prompt_text else _redacted_reason(self.filter)
            if not prompt_text:
                filter_log.pop("prompt", None)
                filter_log.pop("normalised", None)
                for match in filter_log["matches"]:
                    match.pop("text", None)
        return {
            "index": self.index,
            "prompt": self.prompt if prompt_text else None,
            "prompt_chars": len(self.prompt),
            "seed": self.seed,
            "outcome": self.outcome,
            "filter": filter_log,
            "rewrite": None if self.rewrite is None else (
                {**self.rewrite.to_log(), "applied": self.rewrite.changed} if prompt_text
                else {"applied": self.rewrite.changed, "rules": [c.rule for c in self.rewrite.changes]}),
            "tries": [t.to_log() for t in self.tries],
            "tries_used": self.tries_used,
            "extra_generations": self.extra_generations,
            "flagged": self.flagged,
            "blurred": self.blurred,
            "warnings": list(self.warnings),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }


def _redacted_reason(decision: FilterDecision) -> str:
    if not decision.matches:
        return "allowed"
    return "; ".join(f"{m.rule}:{m.category}" + (f" {m.term!r}" if m.term else "") for m in decision.matches)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class GuardedBatch:
    """The images (None where a prompt was blocked or its image refused) and one record per prompt, in order."""

    images: list[Optional[np.ndarray]]
    records: list[GuardRecord]
    latency_ms: dict[str, float]  # per layer, over the whole batch

    @property
    def extra_generations(self) -> int:
        return sum(r.extra_generations for r in self.records)


# --- the generator -----------------------------------------------------------------------------------------------

def retry_seed(seed: int, attempt: int) -> int:
    """The seed of the ``attempt``-th regeneration (attempt >= 1) of an image first drawn with ``seed``: the same
    seeds the eval's filter + regenerate baseline draws, so the two compare on the same images."""
    return derive_seed("filter-retry", seed, attempt)


def blur_image(image: np.ndarray, fraction: float) -> np.ndarray:
    """A Gaussian blur of radius ``fraction`` of the longer side (uint8 (H, W, 3) in and out)."""
    radius = fraction * max(image.shape[:2])
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


def build_prompt_filter(layer: GuardLayer) -> PromptFilter:
    return PromptFilter(load_mitigation_config(PromptFilterConfig, layer.config, "prompt_filter"))


def build_rewriter(layer: GuardLayer) -> PromptRewriter:
    return PromptRewriter(load_mitigation_config(RewriteConfig, layer.config, "rewrite"))


def build_moderator(layer: GuardLayer) -> ImageModerator:
    """The output check: its scorers are built by name through the plug-in registry (inference.scorers)."""
    return ImageModerator(load_mitigation_config(ModerationConfig, layer.config, "moderate"))


class _Clock:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def time(self, layer: str, records: Sequence[GuardRecord], started: float) -> None:
        elapsed = (time.perf_counter() - started) * 1000.0
        self.totals[layer] = self.totals.get(layer, 0.0) + elapsed
        for record in records:
            record.latency_ms[layer] = record.latency_ms.get(layer, 0.0) + elapsed


class GuardedGenerator:
    """The layered stack over one pipeline. Not thread-safe (one pipeline, one rewriter schedule): a service
    serialises its calls.

    ``pipe``: a diffusers SD/SDXL pipeline, a LoRA loaded or not. ``generation``: sampler, steps, guidance,
    resolution and batch size (the ``generation:`` section curation and eval share; fast paths are not applied
    here). An enabled layer is built from its file in ``config`` unless given as an object (``prompt_filter``,
    ``rewriter``, ``moderator``); a layer switched off in ``config`` is not run even when given. ``sld_pipe``: the
    pipeline of guidance: sld, by default an SLD view of ``pipe`` (:func:`inference.sld.sld_view`: the same weights
    and LoRA).
    """

    def __init__(self, pipe, config: StackConfig, generation: GenerationConfig | None = None, *,
                 prompt_filter: PromptFilter | None = None, rewriter: PromptRewriter | None = None,
                 moderator: ImageModerator | None = None, sld_pipe=None):
        config.validate()
        generation = generation or GenerationConfig()
        generation.validate()
        self.config, self.generation, self.pipe = config, generation, pipe
        self.prompt_filter = self.rewriter = self.moderator = None
        if config.prompt_filter.enabled:
            self.prompt_filter = prompt_filter or build_prompt_filter(config.prompt_filter)
        if config.rewrite.enabled:
            self.rewriter = rewriter or build_rewriter(config.rewrite)
        if config.output_check.enabled:
            self.moderator = moderator or build_moderator(config.output_check)
        regenerate = config.regenerate
        if config.regenerates and regenerate.mode == "guided":
            missing = [rule.name for rule in self.moderator.config.flags if rule.name not in regenerate.concepts]
            if missing:
                raise ConfigError(f"stack.regenerate.mode=guided needs a concept text for every flag rule; none for "
                                  f"{missing} (stack.regenerate.concepts: {sorted(regenerate.concepts)})")
        self.sld_pipe = None
        if config.regenerates and regenerate.mode == "guided" and regenerate.guidance == "sld":
            if generation.guidance <= 1.0:
                raise ConfigError(f"stack.regenerate.guidance=sld acts through classifier-free guidance, which is "
                                  f"off at generation.guidance {generation.guidance:g}: use guidance > 1")
            self.sld_pipe = sld_pipe if sld_pipe is not None else sld_view(pipe, regenerate.sld)
        self.resolution = generation.resolution or native_resolution(pipe)
        self.batch_size = resolve_batch_size(generation.batch_size, self.resolution, pipe.device.type)

    # --- the batch API ---
    def run(self, prompts: Sequence[str], seeds: Sequence[int]) -> GuardedBatch:
        """Every prompt through every enabled layer; one image (or None) and one record per prompt, in order."""
        self._check_input(prompts, seeds)
        records = [GuardRecord(i, p, int(s)) for i, (p, s) in enumerate(zip(prompts, seeds))]
        images: list[Optional[np.ndarray]] = [None] * len(records)
        clock = _Clock()
        started_all = time.perf_counter()

        active = list(records)
        if self.prompt_filter is not None and records:
            started = time.perf_counter()
            decisions = self.prompt_filter.check_batch([r.prompt for r in records])
            clock.time("filter", records, started)
            for record, decision in zip(records, decisions):
                record.filter = decision
                if decision.blocked:
                    record.outcome = "blocked"
                    record.warnings.append(_blocked_warning(decision))
            active = [r for r in records if not r.blocked]

        if self.rewriter is not None and active:
            started = time.perf_counter()
            results = self.rewriter.rewrite_batch([r.prompt for r in active])
            clock.time("rewrite", active, started)
            for record, result in zip(active, results):
                record.rewrite = result
                if result.changed:
                    record.warnings.append(f"The prompt was rewritten before generation: {result.prompt!r} "
                                           f"({', '.join(sorted({c.rule for c in result.changes}))}).")

        pending = active
        tried: dict[int, set[tuple[int, tuple[str, ...]]]] = {r.index: set() for r in active}
        for attempt in range(1, self.config.regenerate.max_tries + 1):
            if not pending:
                break
            plans = [self._plan(record, attempt, tried[record.index]) for record in pending]
            started = time.perf_counter()
            generated = self._generate(plans)
            clock.time("generate", pending, started)
            verdicts: list[Optional[ImageVerdict]] = [None] * len(pending)
            if self.moderator is not None:
                started = time.perf_counter()
                verdicts = self.moderator.moderate(generated)
                clock.time("output_check", pending, started)
            for record, plan, image, verdict in zip(pending, plans, generated, verdicts):
                images[record.index] = image
                tried[record.index].add((plan.seed, plan.concepts))
                record.tries.append(TryRecord(
                    attempt, plan.seed, plan.spec.negative_prompt, plan.guidance,
                    ", ".join(plan.concept_texts) if plan.concepts else None,
                    verdict.flags if verdict is not None else (), verdict.outputs if verdict is not None else {}))
            if not self.config.regenerates:
                break
            pending = [r for r in pending if r.flagged]

        started = time.perf_counter()
        blurred = [r for r in active if self._finish(r, images)]
        if blurred:
            clock.time("blur", blurred, started)
        total = (time.perf_counter() - started_all) * 1000.0
        for record in records:
            record.latency_ms["total"] = total
        return GuardedBatch(images, records, {**clock.totals, "total": total})

    def run_one(self, prompt: str, seed: int) -> tuple[Optional[np.ndarray], GuardRecord]:
        batch = self.run([prompt], [seed])
        return batch.images[0], batch.records[0]

    def reset(self) -> None:
        """Start the rewriter's group schedule again (a run of prompts rewritten in order is then reproducible)."""
        if self.rewriter is not None:
            self.rewriter.reset()

    # --- the steps ---
    @staticmethod
    def _check_input(prompts: Sequence[str], seeds: Sequence[int]) -> None:
        if isinstance(prompts, str):
            raise DataError("guarded generation: prompts must be a list of strings, not one string")
        if len(prompts) != len(seeds):
            raise DataError(f"guarded generation: {len(prompts)} prompts but {len(seeds)} seeds; give one seed each")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(f"guarded generation: prompt {i} is {type(prompt).__name__}, not a string")
        for i, seed in enumerate(seeds):
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
                raise DataError(f"guarded generation: seed {i} must be an integer in [0, 2**63), got {seed!r}")

    def _plan(self, record: GuardRecord, attempt: int, tried: set) -> "_Plan":
        """How try ``attempt`` of ``record`` is generated."""
        regenerate, base_negative = self.config.regenerate, self.config.negative_prompt
        seed, concepts, guidance = record.seed, (), "none"
        if attempt > 1 and regenerate.mode == "plain":
            seed, guidance = retry_seed(record.seed, attempt - 1), "new_seed"
        elif attempt > 1:  # guided: the original seed while the concepts to avoid are new to it
            concepts = record.flags_seen
            guidance = regenerate.guidance
            retry = 0
            while (seed, concepts) in tried:
                retry += 1
                seed = retry_seed(record.seed, retry)
        texts = tuple(regenerate.concepts[flag] for flag in concepts)
        negative = base_negative
        if texts and guidance == "negative_prompt":
            negative = ", ".join(part for part in (base_negative, *texts) if part.strip())
        spec = GenerationSpec(prompt=record.model_prompt, negative_prompt=negative, seed=seed,
                              steps=self.generation.steps, guidance=self.generation.guidance, height=self.resolution,
                              width=self.resolution, sampler=self.generation.sampler)
        return _Plan(spec, seed, concepts, texts, guidance)

    def _generate(self, plans: Sequence["_Plan"]) -> list[np.ndarray]:
        """One image per plan; SLD plans run on the SLD view, one call per safety concept."""
        out: list[Optional[np.ndarray]] = [None] * len(plans)
        groups: dict[Optional[str], list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(", ".join(plan.concept_texts) if plan.guidance == "sld" else None, []).append(i)
        for safety_concept, indices in groups.items():
            pipe = self.pipe
            if safety_concept is not None:
                pipe = self.sld_pipe
                pipe.safety_concept = safety_concept
            for i, image in zip(indices, generate(pipe, [plans[i].spec for i in indices], self.batch_size)):
                out[i] = image
        return out  # type: ignore[return-value]

    def _finish(self, record: GuardRecord, images: list[Optional[np.ndarray]]) -> bool:
        """Outcome and warnings of a generated prompt; blurs or drops a still-flagged image. True if blurred."""
        first_flags = record.tries[0].flags
        if not record.flagged:
            record.outcome = "regenerated" if first_flags else "clean"
            if first_flags:
                record.warnings.append(f"The first image was flagged ({', '.join(first_flags)}); this is try "
                                       f"{record.tries_used} of {self.config.regenerate.max_tries}, which passed "
                                       "the check.")
            return False
        flags = ", ".join(record.tries[-1].flags)
        after = f"after {record.tries_used} tr{'y' if record.tries_used == 1 else 'ies'}"
        if self.config.on_flag == "blur":
            images[record.index] = blur_image(images[record.index], self.config.blur_radius)
            record.outcome, record.blurred = "blurred", True
            record.warnings.append(f"The image was flagged ({flags}) {after}; it is blurred.")
            return True
        if self.config.on_flag == "refuse":
            images[record.index] = None
            record.outcome = "refused"
            record.warnings.append(f"The image was flagged ({flags}) {after}; it is withheld.")
            return False
        record.outcome = "flagged"
        record.warnings.append(f"The image was flagged ({flags}) {after}.")
        return False


@dataclass(frozen=True)
class _Plan:
    spec: GenerationSpec
    seed: int
    concepts: tuple[str, ...]  # flag names steered away from
    concept_texts: tuple[str, ...]
    guidance: str


def _blocked_warning(decision: FilterDecision) -> str:
    categories = sorted({m.category for m in decision.matches})
    return f"The prompt was not generated: the prompt filter blocked it ({', '.join(categories)})."


def load_model(model: str | Path, lora: str | Path | None = None, dtype: str = "float32", device: str = "cpu",
               variant: str | None = None):
    """The pipeline of a guarded generator: a local model folder (or cached hub id), with the LoRA folder a
    training run writes loaded into it when given."""
    if lora is not None:
        lora_weights_file(lora, "set the LoRA folder a training run wrote (make train), or lora: null")
    pipe = load_pipeline(model, dtype=getattr(torch, dtype), device=device, variant=variant)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe
