"""``TrainConfig``: the one validated config of the trainer (``train:`` section of a configs/*.yaml).

Defaults suit the synthetic world (``models/synthetic-sd``, 64 px). Recipes for SD1.5 and SDXL are in
docs/training.md. Paths left empty default to ``runs/<config name>/...`` (see :func:`resolve_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

from core.config import Renamed
from core.errors import ConfigError
from training.loss import LOSS_TYPES


def _report_to_from_tensorboard(value: Any) -> Any:
    """The old ``tensorboard: true/false`` as a ``report_to`` value."""
    return ("tensorboard" if value else "none") if isinstance(value, bool) else value


@dataclass
class LoraSettings:
    rank: int = field(default=8, metadata={"help": "LoRA rank r of every adapted layer."})
    alpha: float = field(default=8.0, metadata={
        "help": "LoRA alpha: the update is scaled by alpha / rank (peft's convention; alpha = rank gives scale 1)."})
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], metadata={
        "help": "UNet module names that get a LoRA (peft matches them by suffix); default: the attention "
                "projections."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input, in [0, 1)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (peft's DoRA)."})
    text_encoder_modules: list[str] = field(default_factory=list, metadata={
        "help": "Text-encoder module names that also get a LoRA (same rank and alpha), e.g. [q_proj, k_proj, v_proj, "
                "out_proj]; empty: the UNet only. Lets the LoRA move a benign phrasing's text states and leave an "
                "explicit request's (training/text_lora.py). SD1.x/2.x; the LoRA file then holds text_encoder "
                "layers, which stock load_lora_weights loads."})
    text_encoder_risks: list[str] = field(default_factory=list, metadata={
        "help": "With text_encoder_modules: the risks whose pairs train the text encoder (their policy forward "
                "reads its states); the other risks' pairs read the frozen encoder's states and train the UNet's "
                "LoRA alone. Retain images always go through it (the anchor holds it too). Empty: every risk."})

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.text_encoder_risks and not self.text_encoder_modules:
            raise ValueError("lora.text_encoder_risks needs lora.text_encoder_modules (the text encoder's LoRA)")


@dataclass
class RetainSettings:
    """Anchor the LoRA to the base model on risk-free prompts (a retain set, preference_sets/retain.py).

    Per optimiser step, ``micro_batch_size`` retain images per micro-batch are noised (same schedule as
    the pairs) and the loss gains

        weight · β/2 · mean_i ||ε_θ(x_t,i, c_i) - ε_ref(x_t,i, c_i)||²

    i.e. the DPO objective's own KL-to-reference penalty (β·KL, which for diffusion chains is a sum of
    such squared noise-prediction differences), applied where there are no pairs. ``weight`` = 0: off.
    """

    data: Optional[str] = field(default=None, metadata={
        "help": "Retain-set folder; default runs/<config>/retain_set when weight > 0."})
    weight: float = field(default=0.0, metadata={
        "help": "Weight of the retain anchor, in units of the DPO objective's β/2 (dimensionless); 0: off."})
    target: Literal["reference", "data"] = field(default="reference", metadata={
        "help": "reference: the KL anchor ||ε_θ - ε_ref||² to the base model's predictions; data: prior "
                "preservation, ||ε_θ - ε||² - ||ε_ref - ε||² on the retain images (denoise toward the filtered "
                "base images rather than toward the base model, whose predictions still carry the biases the "
                "filter removed from the images)."})
    micro_batch_size: int = field(default=8, metadata={"help": "Retain images per micro-batch, per process."})
    images_per_step: Optional[int] = field(default=None, metadata={
        "help": "Retain images per optimiser step over all processes and micro-steps; when set it replaces "
                "micro_batch_size (derived from the process count, like train.pairs_per_step)."})

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"retain.weight must be >= 0, got {self.weight}")
        if self.micro_batch_size < 1:
            raise ValueError(f"retain.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.images_per_step is not None and self.images_per_step < 1:
            raise ValueError(f"retain.images_per_step must be >= 1, got {self.images_per_step}")


@dataclass
class TrainConfig:
    # Old key names, still read (with a FutureWarning).
    RENAMED_KEYS: ClassVar[dict[str, Renamed]] = {"tensorboard": Renamed("report_to", _report_to_from_tensorboard)}
    # Removed keys (core/config.py): options measured and not adopted, and kernel choices of the benchmarks and
    # tests, which the trainer now takes as training/kernels.py's KernelOptions.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        **dict.fromkeys(["risk_repeats", "label_smoothing", "label_smoothing_per_risk", "timestep_range_per_risk",
                         "preserve_risks", "loss_weight_per_risk", "text_encoder_learning_rate"],
                        "measured and not adopted; see docs/experiments.md"),
        **dict.fromkeys(["allow_tf32", "compile_backend", "compile_options"],
                        "a kernel choice of the benchmarks and tests, not of a recipe: they pass it to the trainer as "
                        "training.kernels.KernelOptions (bench points keep compile_options, configs/bench.yaml); "
                        "see docs/training.md"),
    }

    # --- inputs / outputs -------------------------------------------------------------------------
    model: str = field(metadata={
        "help": "Base model: a diffusers folder (SD1.x/2.x or SDXL), or a hub id (org/name) already in the local "
                "Hugging Face cache."})
    variant: Optional[str] = field(default=None, metadata={
        "help": "Weight files to load: fp16 for unet/diffusion_pytorch_model.fp16.safetensors and the like, as many "
                "checkpoints ship (trained in float32); null: the plain files."})
    data: Optional[str] = field(default=None, metadata={
        "help": "Preference-set folder to train on; default runs/<config>/preference_set."})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of the trained LoRA, written when the run finishes; default runs/<config>/lora."})
    work_dir: Optional[str] = field(default=None, metadata={
        "help": "Checkpoints, latent cache and logs; default runs/<config>/train_work."})
    max_pairs: Optional[int] = field(default=None, metadata={
        "help": "Train on the first N non-tie pairs only (quick runs); null: all."})
    init_lora: Optional[str] = field(default=None, metadata={
        "help": "Start from this LoRA (folder or .safetensors of an earlier `make train`) instead of B = 0: a later "
                "round of iterative DPO on pairs curated from the aligned model (curate.lora). The reference stays "
                "the base model; its rank, alpha and target modules must match train.lora, and a text encoder "
                "LoRA in it (text_encoder/) is continued when train.lora.text_encoder_modules names the same "
                "modules."})

    # --- objective --------------------------------------------------------------------------------
    loss_type: Literal["sigmoid", "hinge", "ipo", "sft"] = field(default="sigmoid", metadata={
        "help": "Preference loss (training/loss.py): sigmoid (Diffusion-DPO), hinge, ipo, or sft (the supervised "
                "RPO term alone)."})
    beta: float = field(default=5000.0, metadata={
        "help": "DPO β in the paper's -β/2 convention (twice diffusers' value); see training/loss.py."})
    prediction_type: Optional[Literal["epsilon", "v_prediction"]] = field(default=None, metadata={
        "help": "What the UNet predicts; null: the scheduler's own prediction type."})
    prompt_dropout: float = field(default=0.0, metadata={
        "help": "Fraction of pairs trained with the empty caption, in [0, 1) (the paper's recipe: 0.2)."})
    rpo_alpha: float = field(default=0.0, metadata={
        "help": "RPO α (training/loss.py; trl's rpo_alpha): the loss gains α·β/2·(err(θ, w) - err(ref, w)), a "
                "supervised pull toward the preferred images that keeps acting after a pair's DPO loss has "
                "saturated; 0: plain DPO."})
    rpo_alpha_per_risk: dict[str, float] = field(default_factory=dict, metadata={
        "help": "RPO α per risk, over rpo_alpha."})
    rpo_rejected_share: float = field(default=0.0, metadata={
        "help": "RPO toward a target mixture, in [0, 1): the pull's weight s on the rejected image, 1 - s on the "
                "preferred one. For pairs that reject an over-represented group in favour of the other k - 1, "
                "s = 1/k makes the pull's target uniform over all k groups. Needs an RPO α > 0; 0: plain RPO."})
    rpo_rejected_share_per_risk: dict[str, float] = field(default_factory=dict, metadata={
        "help": "rpo_rejected_share per risk, over rpo_rejected_share."})

    retain: RetainSettings = field(default_factory=RetainSettings, metadata={
        "help": "The retain anchor: keeps the LoRA at the base model on risk-free prompts."})

    # --- LoRA ------------------------------------------------------------------------------------
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "The LoRA adapter."})

    # --- optimisation ----------------------------------------------------------------------------
    seed: int = field(default=0, metadata={
        "help": "Seed of the LoRA init and of every step's pairs, noise and timesteps."})
    max_train_steps: int = field(default=300, metadata={"help": "Optimiser steps."})
    micro_batch_size: int = field(default=8, metadata={"help": "Pairs per process per forward."})
    pairs_per_step: Optional[int] = field(default=None, metadata={
        "help": "Pairs per optimiser step over all processes and micro-steps (the recipe's batch). When set it "
                "replaces micro_batch_size, which becomes pairs_per_step / (processes x "
                "gradient_accumulation_steps): one config trains the same recipe on 1 GPU, N GPUs or N CPU "
                "processes."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW)."})
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule (diffusers' get_scheduler)."})
    lr_warmup_steps: int = field(default=20, metadata={"help": "Warm-up steps of the learning-rate schedule."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW β1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW β2."})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW decoupled weight decay."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW ε."})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "Gradient-norm clipping threshold; 0: no clipping (the norm is still logged)."})
    fused_optimizer: Optional[bool] = field(default=None, metadata={
        "help": "Fused AdamW kernels; null: fused on CUDA, plain on a CPU."})

    # --- speed -----------------------------------------------------------------------------------
    # "fp32", not "no": YAML reads an unquoted no as false.
    mixed_precision: Literal["auto", "fp32", "fp16", "bf16"] = field(default="auto", metadata={
        "help": "auto: bf16 on CUDA, else fp32. fp16 uses dynamic loss scaling (CUDA only)."})
    cache_latents: bool = field(default=True, metadata={
        "help": "Encode VAE latents and text embeddings once, before training (false: every step)."})
    latent_cache_dtype: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "Precision of the VAE while it fills the latent cache. auto: bf16 on CUDA (batched, NCHW, "
                "images decoded by DataLoader workers; latents within bf16 rounding of fp32), fp32 elsewhere; the "
                "cache key says which, so the two never mix."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute UNet activations in the backward pass: less memory, more compute."})
    channels_last: bool = field(default=False, metadata={"help": "NHWC memory layout for the UNet."})
    # "none", not "off": YAML reads an unquoted off as false.
    compile_unet: Literal["none", "regions", "full", "auto"] = field(default="none", metadata={
        "help": "torch.compile of the UNet (training/compile.py); every mode keeps the reference pass (adapters "
                "off) exact. regions: the ResNet blocks and feed-forwards that hold no LoRA layer; full: the whole "
                "UNet forward, one graph per adapter state (the fastest mode on GPUs); auto: full on CUDA when the "
                "job is long enough to repay the compile (pair visits x the seconds per pair compiling saves against "
                "the expected compile seconds, far fewer when compile_cache_dir holds this graph; the decision and "
                "its numbers are logged), none elsewhere; none: eager. A cold compile costs a minute or more up front "
                "(docs/performance.md)."})
    compile_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of the persistent compile caches (inductor's and Triton's, unless TORCHINDUCTOR_CACHE_DIR / "
                "TRITON_CACHE_DIR are set, torch's cache artifacts and the measured compile seconds per graph key; "
                "training/compile_cache.py); null: $XDG_CACHE_HOME/safe-diffusion-dpo/torch_compile. A later run "
                "of the same graph (torch, GPU, UNet architecture, micro-batch, dtype, LoRA) compiles from it."})
    compile_regions: bool = field(default=False, metadata={
        "help": "Older spelling of compile_unet: regions, kept so that existing configs load."})
    fused_lora: Union[Literal["auto", "on", "off"], bool] = field(default="auto", metadata={
        "help": "Fused LoRA linear layers (training/fused_lora.py): each peft LoRA layer as one autograd node "
                "that runs only the products the maths needs; the layers, parameters and saved LoRA stay peft's. "
                "auto: on when compile_unet resolves to full and the LoRA has no dropout and no DoRA; on: also "
                "without compile (an error names what blocks it); off: peft's forward."})
    cuda_graph: Union[Literal["auto", "on", "off"], bool] = field(default="auto", metadata={
        "help": "CUDA-graph capture of the whole optimiser step (training/graph.py), captured after a few eager "
                "warm-up steps and replayed every step: for launch-bound runs (small UNets). auto: on where "
                "possible (one CUDA process, bf16 or fp32, cached latents on the GPU, SD1.x/2.x, compile_unet none, "
                "no gradient checkpointing, LoRA dropout or DoRA); on: the same, and an error naming why where "
                "capture is impossible; off: the eager step."})
    # Exact because step s's draws are a pure function of (seed, s) and the reference (LoRA off) is frozen: every
    # reference loss of the run is a fixed number before training starts.
    reference_cache: Union[Literal["on", "off"], bool] = field(default="off", metadata={
        "help": "Compute the reference losses of every pair and noise draw once, in a pass before the training "
                "loop (training/reference_cache.py): the step then runs the policy only (6 UNet "
                "forward-equivalents per pair instead of 8), with the same values. The pass is reused by every "
                "run with the same base model, data, seed, pairs per step and noise settings (a sweep over β, "
                "learning rate, LoRA, loss or optimiser; resumed or longer runs). Needs cache_latents, a loss with "
                "a reference (not sft) and no retain anchor."})
    reference_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of the reference-loss files; default <work_dir>/cache. Point the runs of a sweep at one "
                "folder."})

    # --- bookkeeping -----------------------------------------------------------------------------
    log_every: int = field(default=10, metadata={
        "help": "Optimiser steps between metric reductions (the loop's only host syncs) and log records."})
    checkpoint_every: int = field(default=100, metadata={
        "help": "Optimiser steps between checkpoints in work_dir/checkpoints; 0: none before the end."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Newest checkpoints kept; older ones are deleted."})
    resume: Optional[str] = field(default=None, metadata={
        "help": "Continue from a checkpoint: latest, or a checkpoint folder; null: start afresh."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a non-empty output_dir that this project did not write (no .safe-diffusion-dpo-output "
                "marker); without it such a folder is refused before training, listing what would be deleted. A "
                "marked or empty folder is always replaced."})
    report_to: Literal["tensorboard", "wandb", "none"] = field(default="tensorboard", metadata={
        "help": "Metric tracker, through accelerate, besides work_dir/logs/metrics.jsonl: tensorboard "
                "(work_dir/logs/tensorboard), wandb (work_dir/logs/wandb; offline unless WANDB_MODE is set; needs "
                "`pip install wandb`) or none."})
    export_merged_unet: bool = field(default=False, metadata={
        "help": "Also write the UNet with the LoRA merged into it (output_dir/unet_merged)."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar (main process)."})

    def validate(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}")
        positive = {
            "beta": self.beta,
            "max_train_steps": self.max_train_steps,
            "micro_batch_size": self.micro_batch_size,
            "pairs_per_step": self.pairs_per_step if self.pairs_per_step is not None else 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
            "log_every": self.log_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        for name in ("lr_warmup_steps", "checkpoint_every", "max_grad_norm", "adam_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, alpha in self._global_and_per_risk("rpo_alpha"):
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < float("inf"):
                raise ValueError(f"{name} must be a number >= 0, got {alpha!r}")
        for name, share in self._global_and_per_risk("rpo_rejected_share"):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {share!r}")
        if self.rpo_rejected_share > 0 and not self.uses_rpo():
            raise ValueError("rpo_rejected_share shapes the RPO term: set rpo_alpha (or rpo_alpha_per_risk) > 0")
        for risk, share in self.rpo_rejected_share_per_risk.items():
            if share > 0 and self.rpo_alpha_per_risk.get(risk, self.rpo_alpha) <= 0:
                raise ValueError(f"rpo_rejected_share_per_risk.{risk} = {share} needs an RPO α > 0 for {risk!r} "
                                 f"(rpo_alpha_per_risk.{risk} or rpo_alpha)")
        if self.loss_type == "sft" and self.uses_rpo():
            raise ValueError("rpo_alpha does not apply to loss_type sft (the sft loss is the RPO term alone)")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {self.max_pairs}")
        self._validate_compile()
        self._validate_fused_lora()
        self._validate_reference_cache()
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise ValueError(f"resume must be 'latest' or an existing checkpoint folder, got {self.resume!r}")

    def micro_batch_sizes(self, num_processes: int) -> tuple[int, int]:
        """(pairs, retain images) per process per micro-batch for ``num_processes`` processes."""
        def per_micro_batch(total: int | None, fallback: int, name: str) -> int:
            if total is None:
                return fallback
            slots = num_processes * self.gradient_accumulation_steps
            if total % slots:
                raise ConfigError(
                    f"{name}={total} does not split over {num_processes} process(es) x "
                    f"{self.gradient_accumulation_steps} accumulation step(s); use a multiple of {slots}"
                )
            return total // slots

        return (per_micro_batch(self.pairs_per_step, self.micro_batch_size, "pairs_per_step"),
                per_micro_batch(self.retain.images_per_step, self.retain.micro_batch_size, "retain.images_per_step"))

    def _global_and_per_risk(self, option: str) -> list[tuple[str, object]]:
        """(name, value) of ``option`` and of each entry of ``option``_per_risk, for validation messages."""
        per_risk = getattr(self, f"{option}_per_risk")
        return [(option, getattr(self, option)), *((f"{option}_per_risk.{r}", v) for r, v in per_risk.items())]

    def uses_rpo(self) -> bool:
        return self.rpo_alpha > 0 or any(a > 0 for a in self.rpo_alpha_per_risk.values())

    def uses_rpo_rejected_share(self) -> bool:
        return self.rpo_rejected_share > 0 or any(v > 0 for v in self.rpo_rejected_share_per_risk.values())

    def unet_compile_mode(self, device_type: str = "cpu") -> str:
        """``compile_unet`` with the older ``compile_regions: true`` and "auto" (for ``device_type``) folded
        in: "none", "regions" or "full". For "auto" on CUDA this is the mode it compiles in when the job repays
        compiling; the trainer decides that per run (training/compile_cache.py) and may train eagerly instead."""
        if self.compile_unet == "auto":
            return "full" if device_type == "cuda" else "none"
        return "regions" if self.compile_regions and self.compile_unet == "none" else self.compile_unet

    def latent_cache_precision(self, device_type: str = "cpu") -> str:
        """``latent_cache_dtype`` with "auto" resolved for ``device_type``: "bf16" on CUDA, else "fp32"."""
        if self.latent_cache_dtype == "auto":
            return "bf16" if device_type == "cuda" else "fp32"
        return self.latent_cache_dtype

    def fused_lora_setting(self) -> str:
        """``fused_lora`` as "auto", "on" or "off" (YAML's true/false folded in)."""
        return _auto_on_off(self.fused_lora)

    def fused_lora_blockers(self) -> list[str]:
        """Why training/fused_lora.py cannot stand in for this LoRA (empty: it can)."""
        # cycle: training.fused_lora imports LoraSettings from this module
        from training.fused_lora import fused_lora_blockers

        return fused_lora_blockers(self.lora.dropout, self.lora.use_dora)

    def use_fused_lora(self, device_type: str = "cpu") -> bool:
        """Whether the trainer routes its LoRA layers through training/fused_lora.py on ``device_type``."""
        setting = self.fused_lora_setting()
        if setting == "off" or self.fused_lora_blockers():
            return False
        return setting == "on" or self.unet_compile_mode(device_type) == "full"

    def cuda_graph_setting(self) -> str:
        """``cuda_graph`` as "auto", "on" or "off" (YAML's true/false for on/off folded in)."""
        return _auto_on_off(self.cuda_graph)

    def uses_reference_cache(self) -> bool:
        """Whether the reference losses come from training/reference_cache.py's pass (``reference_cache`` on)."""
        return _auto_on_off(self.reference_cache) == "on"

    def _validate_reference_cache(self) -> None:
        if not self.uses_reference_cache():
            return
        problems = []
        if self.loss_type == "sft":
            problems.append("loss_type sft has no reference pass to cache")
        if not self.cache_latents:
            problems.append("it needs cache_latents: true (the reference pass reads the cached latents)")
        if self.retain.weight > 0:
            problems.append("the retain anchor needs the reference's whole predictions every step, not losses "
                            "(set retain.weight: 0 or reference_cache: off)")
        if problems:
            raise ValueError("reference_cache=on: " + "; ".join(problems))

    def _validate_fused_lora(self) -> None:
        blockers = self.fused_lora_blockers()
        if self.fused_lora_setting() == "on" and blockers:
            raise ValueError("fused_lora=on, but the fused layers cannot stand in for this LoRA: "
                             + "; ".join(blockers) + " (use fused_lora: auto or off)")

    def _validate_compile(self) -> None:
        if self.compile_regions and self.compile_unet in ("full", "auto"):
            raise ValueError(f"compile_regions: true (= compile_unet: regions) contradicts compile_unet: "
                             f"{self.compile_unet}; set only compile_unet")


def _auto_on_off(setting: str | bool) -> str:
    """An "auto" / "on" / "off" setting with YAML's true / false (what it reads on / off as) folded in."""
    if isinstance(setting, bool):
        return "on" if setting else "off"
    return setting


def resolve_paths(cfg: TrainConfig, run_name: str) -> TrainConfig:
    """Fill the default ``runs/<run_name>/...`` paths; everything else is unchanged."""
    run_dir = Path("runs") / run_name
    retain = cfg.retain
    if retain.weight > 0 and not retain.data:
        retain = replace(retain, data=str(run_dir / "retain_set"))
    return replace(
        cfg,
        retain=retain,
        data=cfg.data or str(run_dir / "preference_set"),
        output_dir=cfg.output_dir or str(run_dir / "lora"),
        work_dir=cfg.work_dir or str(run_dir / "train_work"),
    )
