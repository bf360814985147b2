"""The ``curate:`` config section: model, generation, scorers and the risk taxonomy.

Each risk declares where its prompts come from, which scorer detects it, how pairs are made
(best-of-N or minimal pair, with thresholds and corrective variants) and how many pairs it wants.
Loaded with ``core.config.load_stage_config(CurateConfig, path, "curate", overrides)``; every value is
checked here so a bad config fails before any image is generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from core.errors import ConfigError
from inference.generation import check_sampler
from inference.prompts import PromptSourceConfig
from inference.scorers import check_scorer_name
from inference.speedups import InferenceSpeedups

# The risk kinds this stage knows how to judge (see data_curation.risks for what each one means).
RISK_KINDS = ("exposure", "stereotype", "association", "misalignment")
STRATEGIES = ("best_of_n", "minimal_pair")
REQUESTABLE_KINDS = ("exposure", "association")  # content a prompt can ask for outright
REQUEST_SUFFIX = "_request"


@dataclass
class GenerationConfig:
    sampler: str = "ddim"
    steps: int = 20
    guidance: float = 5.0
    resolution: Optional[int] = None  # pixels (square); None: the model's native size
    batch_size: Union[int, Literal["auto"]] = 32  # images per batch; auto: inference.generation.resolve_batch_size
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Exact-math inference fast paths (inference/speedups.py: fused QKV, channels_last, torch.compile of the UNet
    # and the VAE decoder). "auto": on when generating on CUDA, off on a CPU (compiling costs more than it
    # saves there; inference.speedups.use_fast_paths). On an H100 at SD1.5 512 px they give 1.48x the plain
    # pipeline's images/s, 1.52x with speedups.coordinate_descent_tuning (docs/performance.md, "Generation
    # throughput"); compiling takes a few minutes up front. true / false force them.
    fast_paths: Union[bool, Literal["auto"]] = "auto"
    speedups: InferenceSpeedups = field(default_factory=InferenceSpeedups)

    def validate(self) -> None:
        check_sampler(self.sampler)
        if self.steps < 1:
            raise ConfigError(f"curate.generation.steps must be >= 1, got {self.steps}")
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ConfigError(f"curate.generation.batch_size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"curate.generation.resolution must be a multiple of 8, got {self.resolution}")


@dataclass
class DetectorConfig:
    """How a scorer's output says "this image carries the risk".

    exposure / association: ``scores[key] >= threshold`` (oracle scores are 0/1; NudeNet and CLIP
    give probabilities). A preferred image must have ``scores[key] < safe_below`` (default: threshold).
    stereotype / misalignment: the categorical label ``labels[attribute]`` is compared with the
    prompt's request (misalignment) or the group balance (stereotype).
    """

    scorer: str = "oracle"
    key: Optional[str] = None
    threshold: float = 0.5
    safe_below: Optional[float] = None
    attribute: Optional[str] = None

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

    scorer: Optional[str] = None  # None: no alignment check
    check_slots: bool = True
    min_clip_score: Optional[float] = None
    # Minimal pairs change only the risk: the preferred image must read the same as the rejected one on each
    # of these scorer labels (the risk's own detector attribute excepted). A preferred image in a park for a
    # "dressed for a date" prompt whose rejected image was at the beach teaches "avoid beaches", not "stay
    # clothed". Empty: no check (a real-model scorer may read none of them).
    keep_attributes: list[str] = field(default_factory=list)

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

    rewrite: Optional[str] = None
    set_slots: dict[str, Any] = field(default_factory=dict)
    negative_prompt: str = ""
    guidance: Optional[float] = None  # stronger guidance for this variant (same seed); None: as generation


@dataclass
class BalanceConfig:
    """Stereotype pairs: steer the distribution of ``attribute`` toward ``target`` (uniform if empty).

    ``values`` lists the attribute's values (defaults to the world's groups); ``stratify_by`` names
    the prompt slot within which the distribution is measured (e.g. role: each role has its own bias;
    ``prompt``: each prompt on its own; null: the whole risk at once).

    ``every_deficit_group`` (minimal pair only): correct each risky image once per under-represented
    group, one pair each, instead of once with the group the schedule hands out. Every scene then
    prefers all the deficit groups equally over the same rejected image, and a group whose corrections
    are often refused (e.g. flagged by another risk's detector) is not left short.
    """

    attribute: str = "group"
    values: list[str] = field(default_factory=list)
    target: dict[str, float] = field(default_factory=dict)
    stratify_by: Optional[str] = "role"
    every_deficit_group: bool = False

    def validate(self) -> None:
        if self.target:
            unknown = sorted(set(self.target) - set(self.values)) if self.values else []
            if unknown:
                raise ConfigError(f"balance.target names value(s) {unknown} not in balance.values {self.values}")
            if any(v < 0 for v in self.target.values()) or sum(self.target.values()) <= 0:
                raise ConfigError(f"balance.target must be non-negative shares with a positive sum, got {self.target}")


@dataclass
class RiskConfig:
    prompts: PromptSourceConfig
    kind: Optional[str] = None  # defaults to the risk's name
    strategy: Literal["best_of_n", "minimal_pair"] = "minimal_pair"
    # 0: curate nothing for this risk, but keep its detector in the cross-risk check of the others
    # (e.g. a stereotype-only round that must still refuse preferred images with a symbol).
    target_pairs: int = 100
    images_per_prompt: int = 4  # best-of-N: N; minimal pair: seeds tried per prompt per round
    max_rounds: int = 4  # more seeds per prompt, a round at a time, until target_pairs is reached
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    corrective: list[CorrectiveVariant] = field(default_factory=list)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    min_margin: float = 0.0  # best-of-N: rejected score - preferred score must reach this
    min_similarity: float = 0.0  # minimal pair: drop pairs whose images differ more than this
    # Explicit-request policy for prompts that ask for this risk's content (a bare torso, a symbol):
    # honour: pairs prefer the image that shows what was asked for over the same picture without it;
    # suppress: pairs prefer the picture without it, as for unrequested content. The pairs are curated as the
    # task "<risk>_request" from `request_prompts`, with this risk's detector and corrective variants.
    requested: Literal["honour", "suppress"] = "honour"
    request_prompts: Optional[PromptSourceConfig] = None
    request_pairs: int = 0  # pairs of the "<risk>_request" task (0: none)

    def validate(self) -> None:
        if self.request_pairs < 0:
            raise ConfigError(f"request_pairs must be >= 0, got {self.request_pairs}")
        if self.request_pairs and self.request_prompts is None:
            raise ConfigError("request_pairs > 0 needs request_prompts (prompts that ask for the risk's content)")
        if self.target_pairs < 0:
            raise ConfigError(f"target_pairs must be >= 0 (0: check only), got {self.target_pairs}")
        if self.images_per_prompt < 1 or self.max_rounds < 1:
            raise ConfigError("images_per_prompt and max_rounds must be >= 1")
        if self.strategy == "best_of_n" and self.balance.every_deficit_group:
            raise ConfigError("balance.every_deficit_group applies to strategy minimal_pair only")
        if self.strategy == "best_of_n" and self.images_per_prompt < 2:
            raise ConfigError("best_of_n needs images_per_prompt >= 2")
        if self.strategy == "minimal_pair" and not self.corrective:
            raise ConfigError("minimal_pair needs at least one corrective variant (corrective: [...])")


@dataclass
class RetainConfig:
    """Base-model images of prompts unrelated to any risk (preference_sets/retain.py), written beside
    the preference set. The trainer anchors the LoRA to the base model on them (train.retain), which
    is what keeps unrelated prompts unchanged. ``prompts: null`` = no retain set."""

    prompts: Optional[PromptSourceConfig] = None
    # More prompt sources anchored the same way: preservation prompts that keep the trigger contexts, named
    # groups and explicit attributes in the anchor (clothed figures at the beach, named groups at a party),
    # so the LoRA cannot learn "avoid beaches" or "move groups" where it should learn "remove the risk".
    extra_prompts: list[PromptSourceConfig] = field(default_factory=list)
    # Prompts that ask for a risk's content (a bare torso, a symbol): under the honour policy their base images
    # are anchored as generated, requested content included (only invalid images are dropped), so the LoRA keeps
    # honouring the request while its pairs remove the unrequested content.
    request_prompts: list[PromptSourceConfig] = field(default_factory=list)
    images_per_prompt: int = 1
    output_dir: Optional[str] = None  # None: retain_set beside the preference set (runs/<config name>/retain_set)
    # Drop images that carry an exposure/association risk by that risk's own detector, and invalid
    # images: anchoring to a base-model failure would fight the pairs.
    drop_risky: bool = True

    def validate(self) -> None:
        if self.images_per_prompt < 1:
            raise ConfigError(f"curate.retain.images_per_prompt must be >= 1, got {self.images_per_prompt}")


PROCESS_SPLITS = ("auto", "tasks", "batches")


@dataclass
class CurateConfig:
    model: str = "models/synthetic-sd"
    variant: Optional[str] = None  # weight files to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors); None: the plain files
    model_name: Optional[str] = None  # recorded as model_id; None: the model path
    # Generate with the model plus this LoRA (a folder written by `make train`): on-policy pairs for a
    # later round of iterative DPO (train.init_lora continues from the same LoRA). Loaded with stock
    # diffusers `load_lora_weights`; part of every image key, so its images never mix with the base model's.
    lora: Optional[str] = None
    output_dir: Optional[str] = None  # None: runs/<config name>/preference_set
    work_dir: Optional[str] = None  # None: runs/<config name>/curate_work (image store, score cache)
    # output_dir (and the retain set's folder) are replaced when the run finishes. A folder this project wrote
    # (it holds the .safe-diffusion-dpo-output marker) or an empty one always may be; any other non-empty folder
    # is refused before curation starts, listing what would be deleted, unless overwrite is true.
    overwrite: bool = False
    seed: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scorers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"oracle": {}})
    risks: dict[str, RiskConfig] = field(default_factory=dict)
    retain: RetainConfig = field(default_factory=RetainConfig)
    precision_recall_scorer: Optional[str] = None  # measure this scorer against `reference_scorer`
    reference_scorer: str = "oracle"
    # A preferred image must also pass every other exposure/association risk's detector (see
    # data_curation/strategies.py): a pair must never prefer an image that carries another risk.
    cross_risk_check: bool = True
    # Each pair is also written with this many other captions of the same request (the same slots under other
    # curation templates; file prompts have none), same images: the LoRA then learns the risk, not one phrasing.
    caption_variants: int = 0
    shard_size: int = 500
    # How a launch of several processes shares the work (data_curation/curate.py):
    #   batches: every generate/score call is split into batches across the processes;
    #   tasks: each process curates whole risks (and the retain set) alone, then the main process replays the
    #     curation from the shared caches (the same pairs as one process; no collective call per batch);
    #   auto: tasks on a CPU launch (its many small calls made batches slower than one process), batches on GPUs.
    process_split: str = "auto"

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
            if risk.prompts.source == "file" and any(v.set_slots for v in risk.corrective):
                raise ConfigError(f"curate.risks.{name}: set_slots needs world or template prompts, not a file")
            if risk.request_pairs and kind not in REQUESTABLE_KINDS:
                raise ConfigError(f"curate.risks.{name}: request pairs apply to risks whose content a prompt can ask "
                                  f"for ({list(REQUESTABLE_KINDS)}), not {kind}")
            if risk.request_pairs and risk.requested == "honour" and risk.strategy != "minimal_pair":
                raise ConfigError(f"curate.risks.{name}: honoured request pairs are minimal pairs (the same picture "
                                  "with and without the requested content); set strategy: minimal_pair")
            if risk.request_pairs and f"{name}{REQUEST_SUFFIX}" in self.risks:
                raise ConfigError(f"curate.risks: {name}{REQUEST_SUFFIX} is the name of {name}'s request task; "
                                  "rename that risk")
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
        import dataclasses

        out: dict[str, RiskConfig] = {}
        for name, risk in self.risks.items():
            out[name] = risk
            if risk.request_pairs:
                out[f"{name}{REQUEST_SUFFIX}"] = dataclasses.replace(
                    risk, kind=risk.kind or name, prompts=risk.request_prompts, target_pairs=risk.request_pairs,
                    request_prompts=None, request_pairs=0)
        return out
