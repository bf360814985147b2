"""The ``curate:`` config section: model, generation, scorers and the risk taxonomy.

Each risk declares where its prompts come from, which scorer detects it, how pairs are made
(best-of-N or minimal pair, with thresholds and corrective variants) and how many pairs it wants.
Loaded with ``core.config.load_stage_config(CurateConfig, path, "curate", overrides)``; every value is
checked here so a bad config fails before any image is generated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from core.errors import ConfigError
from inference.config import GenerationConfig
from inference.prompts import PromptSourceConfig, prompt_source
from inference.scorers import check_scorer_name

# The risk kinds this stage knows how to judge (see data_curation.risks for what each one means).
RISK_KINDS = ("exposure", "stereotype", "association", "misalignment")
STRATEGIES = ("best_of_n", "minimal_pair")
REQUESTABLE_KINDS = ("exposure", "association")  # content a prompt can ask for outright
REQUEST_SUFFIX = "_request"
MIRROR_SUFFIX = "_mirror"


@dataclass
class DetectorConfig:
    """How a scorer's output says "this image carries the risk".

    exposure / association: ``scores[key] >= threshold`` (oracle scores are 0/1; NudeNet and CLIP
    give probabilities). A preferred image must have ``scores[key] < safe_below`` (default: threshold).
    stereotype / misalignment: the categorical label ``labels[attribute]`` is compared with the
    prompt's request (misalignment) or the group balance (stereotype).
    """

    scorer: str = field(metadata={"help": "Scorer (a name under curate.scorers) that reads the risk."})
    key: Optional[str] = field(default=None, metadata={
        "help": "Score that flags the risk (exposure, association), e.g. exposed or symbol."})
    threshold: float = field(default=0.5, metadata={"help": "A score at or above this flags the image."})
    safe_below: Optional[float] = field(default=None, metadata={
        "help": "A preferred image's score must be below this; null: threshold."})
    attribute: Optional[str] = field(default=None, metadata={
        "help": "Categorical label compared (stereotype, misalignment), e.g. group or outfit."})

    def validate(self) -> None:
        check_scorer_name(self.scorer)

    @property
    def safe_threshold(self) -> float:
        return self.threshold if self.safe_below is None else self.safe_below


@dataclass
class AlignmentConfig:
    """What "prompt-aligned" means for a preferred image.

    With ``check_slots`` every prompt slot that the scorer labels (e.g. the oracle's setting, role,
    outfit) must match, and a ``valid`` label, if the scorer gives one, must be true. With
    ``min_clip_score`` the CLIP score of the image against the training caption must reach it.
    """

    scorer: Optional[str] = field(default=None, metadata={
        "help": "Scorer (a name under curate.scorers) of the alignment check; null: no check."})
    check_slots: bool = field(default=True, metadata={
        "help": "Every prompt slot the scorer labels must match, and a valid label must be true."})
    min_clip_score: Optional[float] = field(default=None, metadata={
        "help": "Minimum CLIP score of the preferred image against the training caption; null: none."})
    keep_attributes: list[str] = field(default_factory=list, metadata={
        "help": "Minimal pairs change only the risk: the preferred image must read the same as the rejected one "
                "on these scorer labels (the risk's own detector attribute excepted), so that a pair teaches "
                "'stay clothed', not 'avoid beaches'. Empty: no check."})

    def validate(self) -> None:
        if self.scorer is not None:
            check_scorer_name(self.scorer)


@dataclass
class CorrectiveVariant:
    """One way to make the preferred image of a minimal pair from the original prompt.

    ``rewrite``: a format string over ``{prompt}``, the prompt's slots and ``{group}`` (the scheduled
    group of a stereotype pair), e.g. ``"{prompt}, fully clothed"``. ``set_slots``: for world/template
    prompts, re-render the same template with these slots changed (values may use ``{group}`` or
    other slots). ``negative_prompt``: may also use the slots (it only acts through classifier-free
    guidance, so a stronger ``guidance`` can make it bite). Variants are tried in order until the
    scorers confirm one.
    """

    rewrite: Optional[str] = field(default=None, metadata={
        "help": "Format string of the preferred image's prompt over {prompt}, the prompt's slots and {group}, e.g. "
                "'{prompt}, fully clothed'."})
    set_slots: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "World/template prompts: re-render the same template with these slots changed (values may use "
                "{group} or other slots)."})
    negative_prompt: str = field(default="", metadata={
        "help": "Negative prompt of the variant (may use the slots; acts through classifier-free guidance)."})
    guidance: Optional[float] = field(default=None, metadata={
        "help": "Guidance scale of this variant (same seed); null: curate.generation.guidance."})


@dataclass
class BalanceConfig:
    """Stereotype pairs: steer the distribution of the detector's ``attribute`` toward ``target`` (uniform if
    empty).

    ``values`` lists the attribute's values (defaults to every value the risk's prompt source gives the
    attribute); ``stratify_by`` names the prompt slot within which the distribution is measured (e.g. role: each
    role has its own bias; ``prompt``: each prompt on its own; null: the whole risk at once).
    """

    # Removed keys (core/config.py): measured, not adopted.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {"every_deficit_group": "measured and not adopted; see docs/experiments.md"}

    attribute: Optional[str] = field(default=None, metadata={
        "help": "Label whose distribution is steered: the risk's detector.attribute (null: that one)."})
    values: list[str] = field(default_factory=list, metadata={
        "help": "The attribute's values; empty: every value the risk's prompt source gives it (its slot values)."})
    target: dict[str, float] = field(default_factory=dict, metadata={
        "help": "Target share per value (non-negative, normalised); empty: uniform."})
    stratify_by: Optional[str] = field(default=None, metadata={
        "help": "Prompt slot within which the distribution is measured (e.g. role: each role its own bias; "
                "prompt: each prompt alone; null: the whole risk at once)."})

    def validate(self) -> None:
        if self.target:
            unknown = sorted(set(self.target) - set(self.values)) if self.values else []
            if unknown:
                raise ConfigError(f"balance.target names value(s) {unknown} not in balance.values {self.values}")
            if any(v < 0 for v in self.target.values()) or sum(self.target.values()) <= 0:
                raise ConfigError(f"balance.target must be non-negative shares with a positive sum, got {self.target}")


@dataclass
class RiskConfig:
    prompts: PromptSourceConfig = field(metadata={"help": "Where the risk's prompts come from."})
    detector: DetectorConfig = field(metadata={"help": "How a scorer's output says an image carries the risk."})
    kind: Optional[str] = field(default=None, metadata={
        "help": f"Risk kind, one of {', '.join(RISK_KINDS)}; null: the risk's name."})
    strategy: Literal["best_of_n", "minimal_pair"] = field(default="minimal_pair", metadata={
        "help": "best_of_n: the best and worst of N images of a prompt; minimal_pair: the same seed re-generated "
                "with a corrective variant, so that only the risk changes."})
    # 0 keeps the detector in the cross-risk check of the others (e.g. a stereotype-only round that must still
    # refuse preferred images with a symbol).
    target_pairs: int = field(default=100, metadata={
        "help": "Pairs wanted for this risk; 0: curate none, but keep its detector in the cross-risk check."})
    images_per_prompt: int = field(default=4, metadata={
        "help": "best_of_n: N; minimal_pair: seeds tried per prompt per round."})
    max_rounds: int = field(default=4, metadata={
        "help": "Rounds of more seeds per prompt until target_pairs is reached."})
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig, metadata={
        "help": "What prompt-aligned means for a preferred image."})
    corrective: list[CorrectiveVariant] = field(default_factory=list, metadata={
        "help": "Ways to make a minimal pair's preferred image, tried in order until the scorers confirm one."})
    balance: BalanceConfig = field(default_factory=BalanceConfig, metadata={
        "help": "Stereotype pairs: the target distribution of the attribute."})
    min_margin: float = field(default=0.0, metadata={
        "help": "best_of_n: the rejected image's score minus the preferred one's must reach this."})
    min_similarity: float = field(default=0.0, metadata={
        "help": "minimal_pair: drop pairs whose images are less similar than this (1 = identical)."})
    requested: Literal["honour", "suppress"] = field(default="honour", metadata={
        "help": "Policy for prompts that ask for this risk's content (a bare torso, a symbol): honour: pairs prefer "
                "the image that shows what was asked for over the same picture without it; suppress: pairs prefer "
                "the picture without it. Curated as the task <risk>_request from request_prompts."})
    request_prompts: Optional[PromptSourceConfig] = field(default=None, metadata={
        "help": "Prompts that ask for the risk's content, for the <risk>_request task."})
    request_pairs: int = field(default=0, metadata={"help": "Pairs of the <risk>_request task; 0: none."})
    # Mirror pairs hold the same two images with the preference reversed, under a prompt that differs from the
    # pair's only by the request: what the LoRA can learn from the pair and its mirror together is "remove the
    # content unless the prompt asks for it", not "remove the content" (which also drops requested content) nor
    # "avoid the context" (a named group redrawn, a beach turned into a park).
    mirror: Optional[str] = field(default=None, metadata={
        "help": "Also write each pair's mirror, as the task <risk>_mirror: its caption is the pair's prompt with "
                "this slot set to what the rejected image shows (the detector scorer's label of the same name: "
                "exposed, symbol, group, outfit), and it prefers the rejected image over the preferred one. Pairs "
                "whose request is held out for eval get none. null: no mirrors. Needs a rewritable prompt source."})

    def validate(self) -> None:
        if self.request_pairs < 0:
            raise ConfigError(f"request_pairs must be >= 0, got {self.request_pairs}")
        if self.request_pairs and self.request_prompts is None:
            raise ConfigError("request_pairs > 0 needs request_prompts (prompts that ask for the risk's content)")
        if self.target_pairs < 0:
            raise ConfigError(f"target_pairs must be >= 0 (0: check only), got {self.target_pairs}")
        if self.images_per_prompt < 1 or self.max_rounds < 1:
            raise ConfigError("images_per_prompt and max_rounds must be >= 1")
        if self.strategy == "best_of_n" and self.images_per_prompt < 2:
            raise ConfigError("best_of_n needs images_per_prompt >= 2")
        if self.strategy == "minimal_pair" and not self.corrective:
            raise ConfigError("minimal_pair needs at least one corrective variant (corrective: [...])")


@dataclass
class RetainConfig:
    """Base-model images of prompts unrelated to any risk (preference_sets/retain.py), written beside
    the preference set. The trainer anchors the LoRA to the base model on them (train.retain), which
    is what keeps unrelated prompts unchanged. ``prompts: null`` = no retain set."""

    prompts: Optional[PromptSourceConfig] = field(default=None, metadata={
        "help": "Risk-free prompts whose base images anchor the LoRA; null: no retain set."})
    extra_prompts: list[PromptSourceConfig] = field(default_factory=list, metadata={
        "help": "More sources anchored the same way: preservation prompts that keep the trigger contexts, named "
                "groups and explicit attributes in the anchor (clothed figures at the beach), so that the LoRA "
                "learns 'remove the risk', not 'avoid beaches'."})
    request_prompts: list[PromptSourceConfig] = field(default_factory=list, metadata={
        "help": "Prompts that ask for a risk's content: their base images are anchored as generated, requested "
                "content included (only invalid images dropped), so the LoRA keeps honouring requests."})
    images_per_prompt: int = field(default=1, metadata={"help": "Base images per retain prompt."})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Retain-set folder; null: retain_set beside the preference set (runs/<config>/retain_set)."})
    # Anchoring to a base-model failure would fight the pairs.
    drop_risky: bool = field(default=True, metadata={
        "help": "Drop invalid images and images that an exposure/association risk's own detector flags."})

    def validate(self) -> None:
        if self.images_per_prompt < 1:
            raise ConfigError(f"curate.retain.images_per_prompt must be >= 1, got {self.images_per_prompt}")


PROCESS_SPLITS = ("auto", "tasks", "batches")


@dataclass
class CurateConfig:
    model: str = field(metadata={
        "help": "Base model: a diffusers folder, or a hub id (org/name) already in the local Hugging Face cache."})
    variant: Optional[str] = field(default=None, metadata={
        "help": "Weight files to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors); null: the plain files."})
    model_name: Optional[str] = field(default=None, metadata={
        "help": "Name recorded as the pairs' model_id; null: the model path."})
    lora: Optional[str] = field(default=None, metadata={
        "help": "Generate with the model plus this LoRA (a folder written by `make train`): on-policy pairs for a "
                "later round of iterative DPO (train.init_lora). Part of every image key, so its images never mix "
                "with the base model's."})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Preference-set folder; null: runs/<config>/preference_set."})
    work_dir: Optional[str] = field(default=None, metadata={
        "help": "Image store and score cache of the run (resumable); null: runs/<config>/curate_work."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a non-empty output_dir (or retain-set folder) that this project did not write (no "
                ".safe-diffusion-dpo-output marker); without it such a folder is refused before curation. A marked "
                "or empty folder is always replaced."})
    seed: int = field(default=0, metadata={"help": "Base seed of every generated image."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={
        "help": "How images are generated (the same keys as eval.generation)."})
    scorers: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "Scorers by name (oracle, nudenet, clip), each with its settings (inference/scorers/), e.g. "
                "{nudenet: {threshold: 0.45}}; every scorer a risk names is declared here."})
    risks: dict[str, RiskConfig] = field(default_factory=dict, metadata={
        "help": "The risks to curate pairs for, by name (a new risk is declared in the config file)."})
    retain: RetainConfig = field(default_factory=RetainConfig, metadata={
        "help": "The retain set: base-model images of risk-free prompts the trainer anchors the LoRA to."})
    precision_recall_scorer: Optional[str] = field(default=None, metadata={
        "help": "Measure this scorer's precision and recall against reference_scorer; null: no measurement."})
    reference_scorer: Optional[str] = field(default=None, metadata={
        "help": "The ground truth of precision_recall_scorer (a name under curate.scorers)."})
    cross_risk_check: bool = field(default=True, metadata={
        "help": "A preferred image must also pass every other exposure/association risk's detector: a pair never "
                "prefers an image that carries another risk."})
    caption_variants: int = field(default=0, metadata={
        "help": "Also write each pair with this many other captions of the same request (other curation "
                "templates, same images; file prompts have none): the LoRA learns the risk, not one phrasing."})
    shard_size: int = field(default=500, metadata={"help": "Pairs per parquet shard of the preference set."})
    # Split by batch on a CPU, many small collective generate/score calls made 2 processes slower than one.
    process_split: str = field(default="auto", metadata={
        "help": "How several processes share the work: batches: every generate/score call split across them; "
                "tasks: each process curates whole risks (and the retain set), then the main process replays the "
                "curation from the shared caches (the same pairs as one process); auto: tasks on a CPU launch, "
                "batches on GPUs."})

    def validate(self) -> None:
        for name in self.scorers:
            check_scorer_name(name)
        if not self.risks:
            raise ConfigError(f"curate.risks is empty: declare at least one of {list(RISK_KINDS)}")
        if self.caption_variants < 0:
            raise ConfigError(f"curate.caption_variants must be >= 0, got {self.caption_variants}")
        if self.process_split not in PROCESS_SPLITS:
            raise ConfigError(f"curate.process_split must be one of {list(PROCESS_SPLITS)}, got {self.process_split!r}")
        if "retain" in self.risks:
            raise ConfigError("curate.risks: 'retain' names the retain set; give the risk another name (and `kind:`)")
        for name, risk in self.risks.items():
            kind = risk.kind or name
            if kind not in RISK_KINDS:
                raise ConfigError(
                    f"curate.risks.{name}: unknown risk {kind!r}; valid risks: {list(RISK_KINDS)} "
                    "(set `kind:` to use another name)"
                )
            used = [risk.detector.scorer] + ([risk.alignment.scorer] if risk.alignment.scorer else [])
            for scorer in used:
                if scorer not in self.scorers:
                    raise ConfigError(
                        f"curate.risks.{name} uses scorer {scorer!r}, which is not configured under "
                        f"curate.scorers (configured: {sorted(self.scorers)})"
                    )
            if kind in ("exposure", "association") and not risk.detector.key:
                raise ConfigError(f"curate.risks.{name}.detector.key is required for {kind} (e.g. exposed)")
            if kind in ("stereotype", "misalignment") and not risk.detector.attribute:
                raise ConfigError(f"curate.risks.{name}.detector.attribute is required for {kind} (e.g. group)")
            if risk.balance.attribute not in (None, risk.detector.attribute):
                raise ConfigError(f"curate.risks.{name}.balance.attribute is {risk.balance.attribute!r}, but the "
                                  f"pairs steer the label the detector reads ({risk.detector.attribute!r}); set that "
                                  "or leave it out")
            if any(v.set_slots for v in risk.corrective) and not prompt_source(risk.prompts.source).rewritable:
                raise ConfigError(f"curate.risks.{name}: set_slots needs prompts whose slots can be re-rendered "
                                  f"(templates, or a plug-in source such as world), not {risk.prompts.source}")
            if risk.request_pairs and kind not in REQUESTABLE_KINDS:
                raise ConfigError(f"curate.risks.{name}: request pairs apply to risks whose content a prompt can ask "
                                  f"for ({list(REQUESTABLE_KINDS)}), not {kind}")
            if risk.mirror and not prompt_source(risk.prompts.source).rewritable:
                raise ConfigError(f"curate.risks.{name}.mirror needs prompts whose slots can be re-rendered "
                                  f"(prompts.source {risk.prompts.source!r} cannot)")
            if risk.mirror and risk.requested == "suppress":
                raise ConfigError(f"curate.risks.{name}: mirror pairs teach honouring a request, which contradicts "
                                  "requested: suppress; drop one of them")
            if risk.request_pairs and risk.requested == "honour" and risk.strategy != "minimal_pair":
                raise ConfigError(f"curate.risks.{name}: honoured request pairs are minimal pairs (the same picture "
                                  "with and without the requested content); set strategy: minimal_pair")
            if risk.mirror and f"{name}{MIRROR_SUFFIX}" in self.risks:
                raise ConfigError(f"curate.risks: {name}{MIRROR_SUFFIX} is the name of {name}'s mirror pairs; "
                                  "rename that risk")
            if risk.request_pairs and f"{name}{REQUEST_SUFFIX}" in self.risks:
                raise ConfigError(f"curate.risks: {name}{REQUEST_SUFFIX} is the name of {name}'s request task; "
                                  "rename that risk")
        if self.precision_recall_scorer is not None and self.reference_scorer is None:
            raise ConfigError("curate.precision_recall_scorer needs curate.reference_scorer (its ground truth)")
        for name in (self.precision_recall_scorer, self.reference_scorer):
            if name is not None and self.precision_recall_scorer is not None and name not in self.scorers:
                raise ConfigError(f"curate: scorer {name!r} for precision/recall is not configured under curate.scorers")

    def risk_kind(self, name: str) -> str:
        return self.tasks()[name].kind or name

    def request_tasks(self) -> dict[str, str]:
        """Request task name -> the risk it belongs to, for every risk with request pairs."""
        return {f"{name}{REQUEST_SUFFIX}": name for name, risk in self.risks.items() if risk.request_pairs}

    def tasks(self) -> dict[str, RiskConfig]:
        """What curation runs: every risk, each followed by its request task (same kind, detector and
        corrective variants; the request prompts and pair count)."""
        out: dict[str, RiskConfig] = {}
        for name, risk in self.risks.items():
            out[name] = risk
            if risk.request_pairs:
                out[f"{name}{REQUEST_SUFFIX}"] = dataclasses.replace(
                    risk, kind=risk.kind or name, prompts=risk.request_prompts, target_pairs=risk.request_pairs,
                    request_prompts=None, request_pairs=0)
        return out
