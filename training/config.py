"""``TrainConfig``: the one validated config of the trainer (``train:`` section of a configs/*.yaml).

Defaults suit the synthetic world (``models/synthetic-sd``, 64 px). Recipes for SD1.5 and SDXL are in
docs/training.md. Paths left empty default to ``runs/<config name>/...`` (see :func:`resolve_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union

from core.errors import ConfigError
from training.loss import LOSS_TYPES


@dataclass
class LoraSettings:
    rank: int = 8
    # Scale of the LoRA update is alpha / rank (peft convention); alpha = rank gives scale 1.
    alpha: float = 8.0
    # Module names inside the UNet (peft matches by suffix). Attention projections by default.
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0
    # Weight-decomposed LoRA (peft's DoRA).
    use_dora: bool = False

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class RetainSettings:
    """Anchor the LoRA to the base model on risk-free prompts (a retain set, preference_sets/retain.py).

    Per optimiser step, ``micro_batch_size`` retain images per micro-batch are noised (same schedule as
    the pairs) and the loss gains

        weight · β/2 · mean_i ||ε_θ(x_t,i, c_i) - ε_ref(x_t,i, c_i)||²

    i.e. the DPO objective's own KL-to-reference penalty (β·KL, which for diffusion chains is a sum of
    such squared noise-prediction differences), applied where there are no pairs. ``weight`` = 0: off.
    """

    data: Optional[str] = None  # retain-set folder; default runs/<config>/retain_set when weight > 0
    weight: float = 0.0  # dimensionless, in units of the DPO objective's β/2 (see above)
    # "reference": the KL anchor above. "data": prior preservation, ||ε_θ - ε||² - ||ε_ref - ε||² on the
    # retain images (denoising towards the filtered base images rather than towards the base model,
    # whose predictions still carry the biases that the filter removed from the images).
    target: Literal["reference", "data"] = "reference"
    micro_batch_size: int = 8  # retain images per micro-batch (per process)
    # Retain images per optimiser step over all processes and micro-steps; when set it replaces
    # micro_batch_size (derived per process count, like TrainConfig.pairs_per_step).
    images_per_step: Optional[int] = None

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"retain.weight must be >= 0, got {self.weight}")
        if self.micro_batch_size < 1:
            raise ValueError(f"retain.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.images_per_step is not None and self.images_per_step < 1:
            raise ValueError(f"retain.images_per_step must be >= 1, got {self.images_per_step}")


@dataclass
class TrainConfig:
    # --- inputs / outputs -------------------------------------------------------------------------
    # A diffusers folder (SD1.x/2.x or SDXL), or a hub id (org/name) already in the local Hugging Face cache.
    model: str = "models/synthetic-sd"
    # Which weight files to load: "fp16" for unet/diffusion_pytorch_model.fp16.safetensors and the like, as many
    # checkpoints ship (loaded as float32 for training); None: the plain files.
    variant: Optional[str] = None
    data: Optional[str] = None  # preference-set folder; default runs/<config>/preference_set
    output_dir: Optional[str] = None  # final LoRA folder; default runs/<config>/lora
    work_dir: Optional[str] = None  # checkpoints, cache, logs; default runs/<config>/train_work
    max_pairs: Optional[int] = None  # use only the first N non-tie pairs (quick runs)
    # Start from this LoRA (folder or .safetensors written by a previous `make train`) instead of B = 0:
    # a later round of iterative DPO on pairs curated from the aligned model (curate.lora). The reference
    # stays the base model. Its rank/alpha/targets must match train.lora.
    init_lora: Optional[str] = None

    # --- objective --------------------------------------------------------------------------------
    loss_type: Literal["sigmoid", "hinge", "ipo", "sft"] = "sigmoid"
    beta: float = 5000.0  # official -β/2 convention (= diffusers' 2500); see training/loss.py
    # None = the scheduler's own prediction type (epsilon or v_prediction).
    prediction_type: Optional[Literal["epsilon", "v_prediction"]] = None
    prompt_dropout: float = 0.0  # fraction of pairs trained with the empty caption (official: 0.2)
    # Per-risk sampling: a pair whose ``risk`` column is R is visited risk_repeats[R] times per epoch
    # (default 1; 0 leaves that risk out). A risk that needs a whole distribution moved (stereotypes)
    # can get more optimiser updates without more curated pairs or more steps.
    risk_repeats: dict[str, int] = field(default_factory=dict)
    # Conservative DPO (training/loss.py): trust each label with probability 1 - ε, so a pair stops pulling
    # at a finite margin log((1-ε)/ε). `label_smoothing` is ε for every pair, `label_smoothing_per_risk`
    # overrides it per risk. For a risk whose target is a distribution (stereotypes: uniform over groups,
    # not "never the majority group"), hard labels push the majority group below its target share.
    label_smoothing: float = 0.0
    label_smoothing_per_risk: dict[str, float] = field(default_factory=dict)
    # RPO (training/loss.py; trl's rpo_alpha): + α·β/2·(err(θ, w) - err(ref, w)), a supervised pull toward the
    # preferred images that keeps acting after a pair's DPO loss has saturated. `rpo_alpha` is α for every
    # pair, `rpo_alpha_per_risk` overrides it per risk. 0 = plain DPO.
    rpo_alpha: float = 0.0
    rpo_alpha_per_risk: dict[str, float] = field(default_factory=dict)
    # RPO toward a target mixture (training/loss.py): the pull's weight s on the *rejected* image, 1 - s on the
    # preferred one. 0 = plain RPO. For a risk whose pairs reject an over-represented group in favour of the
    # other k - 1 (stereotypes), s = 1/k makes the pull's target uniform over all k groups instead of a 50/50
    # mix of the non-majority ones. Needs α > 0 for the same pairs. Per risk as rpo_alpha.
    rpo_rejected_share: float = 0.0
    rpo_rejected_share_per_risk: dict[str, float] = field(default_factory=dict)
    # Per-risk timestep range [low, high) in training timesteps (default: every pair draws t uniformly from
    # [0, num_train_timesteps)). The DPO objective is an expectation over t (paper eq. 14); drawing t from
    # U[low, high) for a risk's pairs reweights that risk's terms toward the noise levels where its attribute is
    # decided. On the synthetic model a figure's group is settled only above t ≈ 400: denoised from t = 400 the
    # preferred group survives 88% of the time, from t = 800 only 15% (docs/training.md): the stereotype pairs
    # drawn below that level teach nothing about which group to draw. Measured on the demo: a stronger push that
    # overshoots onto one other group, not a better balance, so the demo does not use it.
    timestep_range_per_risk: dict[str, list[int]] = field(default_factory=dict)

    retain: RetainSettings = field(default_factory=RetainSettings)

    # --- LoRA ------------------------------------------------------------------------------------
    lora: LoraSettings = field(default_factory=LoraSettings)

    # --- optimisation ----------------------------------------------------------------------------
    seed: int = 0
    max_train_steps: int = 300  # optimiser steps
    micro_batch_size: int = 8  # pairs per process per forward
    # Pairs per optimiser step over all processes and micro-steps (the recipe's batch). When set it
    # replaces micro_batch_size, which becomes pairs_per_step / (processes x gradient_accumulation_steps),
    # so one config trains the same recipe on 1 GPU, N GPUs or N CPU processes: the trainer draws each
    # step's pairs, noise and timesteps globally and slices them per process (training/step.py).
    pairs_per_step: Optional[int] = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant_with_warmup"
    lr_warmup_steps: int = 20
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping (the norm is still logged)
    fused_optimizer: Optional[bool] = None  # None = fused AdamW on CUDA, plain on CPU

    # --- speed -----------------------------------------------------------------------------------
    # auto = bf16 on CUDA, else fp32. fp16 uses dynamic loss scaling. (Not "no": YAML reads that as false.)
    mixed_precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    cache_latents: bool = True  # VAE latents + text embeddings encoded once (False = every step)
    gradient_checkpointing: bool = False
    channels_last: bool = False
    # torch.compile of the UNet (training/compile.py). Off by default: compiling costs a minute or more
    # up front, which only pays on long GPU runs. Both modes keep the reference pass (adapters off) exact:
    # "regions": only the ResNet blocks and feed-forwards that hold no LoRA layer; the adapter switch stays
    #   eager. Measured on an H200: +30% pairs/s on SD1.5 at 512 px, +18% on SDXL at 1024 px
    #   (docs/experiments.md, "Fast path, regional compile, channels_last, checkpointing").
    # "full": the whole UNet forward, one graph per adapter state (policy, reference), keyed on the state
    #   explicitly; exactness checked on CPU in tests/training/test_compile.py. Adds what regions leave
    #   eager (attention blocks, LoRA layers, layer-norms, the glue between blocks). Measured on an H200:
    #   SD1.5 512 px 61.3 pairs/s at micro-batch 16 (regions 45.4), SDXL 1024 px 8.59 at 4 (regions 6.75);
    #   the fastest mode for GPU runs (docs/experiments.md, "Whole-UNet compile"). On a CPU it does not pay
    #   (60 demo steps: 15.1 vs 14.5 pairs/s, after ~160 s of compiling).
    # "auto": "full" on a CUDA device, "none" elsewhere (one config for the CPU and GPU runs of a recipe).
    # ("none", not "off": YAML reads off as false.)
    compile_unet: Literal["none", "regions", "full", "auto"] = "none"
    compile_regions: bool = False  # older spelling of compile_unet=regions, kept so existing configs load
    # torch.compile backend. "aot_eager" traces and runs autograd like inductor but without code generation
    # (no speed-up): for CPU tests and for telling a dynamo problem from an inductor one.
    compile_backend: str = "inductor"
    # Inductor options for compile_unet (torch.compile's ``options=``; the keys of
    # torch._inductor.list_options(), e.g. {conv_1x1_as_mm: true, coordinate_descent_tuning: true}).
    # They change kernel choice and scheduling only, never the maths. Empty = inductor's defaults.
    compile_options: dict[str, Any] = field(default_factory=dict)
    # Fused LoRA linear layers (training/fused_lora.py): each peft LoRA layer as one autograd node that runs only
    # the products the maths needs (none of the casts, scalings and copies of peft's traced graph); the same
    # maths, bf16 rounding apart. The layers, parameters and saved LoRA stay peft's. Measured on an H100, SD1.5
    # 512 px micro-batch 48 with compile_unet full: 61.4 against 60.5 pairs/s and 62.5 against 66.7 GiB
    # (docs/experiments.md, "Fused LoRA layers"). "auto": on when compile_unet resolves to "full" and the LoRA has no
    # dropout and no DoRA; "on": also without compile, and an error naming what blocks it; "off": peft's forward.
    fused_lora: Union[Literal["auto", "on", "off"], bool] = "auto"
    # CUDA-graph capture of the whole optimiser step (training/graph.py): cache gathers, reference and policy
    # forwards, DPO loss + retain anchor, backward, clipping and the AdamW update are captured once after a few
    # eager warm-up steps and replayed every step after copying the step's draws into static tensors. For
    # launch-bound runs (the demo's tiny UNet: ~600 module calls per forward, ~160 ms of Python per step).
    # "auto": on when it is possible (one CUDA process, bf16 or fp32, cached latents held on the GPU, SD1.x/2.x,
    # compile_unet none, no gradient checkpointing, LoRA dropout or DoRA), else off; "on": the same, but a
    # configuration where capture is impossible is an error naming why; "off": the eager step. YAML reads on/off
    # as true/false, so both spellings are accepted (cuda_graph_setting() folds them).
    cuda_graph: Union[Literal["auto", "on", "off"], bool] = "auto"
    # Reference losses computed once per pair and noise draw, in a pass before the training loop
    # (training/reference_cache.py). Step s's draws are a pure function of (seed, s) and the reference (LoRA off)
    # is frozen, so err(ref, w) and err(ref, l) of every pair of every step are fixed numbers before training
    # starts: the pass computes the same values the inline reference forward would (same inputs, same graph). The
    # training step then runs the policy only (6 UNet forward-equivalents per pair instead of 8). The pass costs
    # the reference's 2 forward-equivalents per pair once; they are reused by every run that shares the base
    # model, data, seed, pairs per step and noise settings, whatever its β, learning rate, LoRA, loss type or
    # optimiser (a sweep), and by resumed or longer runs. Needs cache_latents, a loss with a reference (not sft)
    # and no retain anchor (which needs whole reference predictions, not losses). "on"/"off" (or true/false).
    reference_cache: Union[Literal["on", "off"], bool] = "off"
    # Where the reference-loss files live; default <work_dir>/cache. Point the runs of a sweep at one folder.
    reference_cache_dir: Optional[str] = None
    allow_tf32: bool = True

    # --- bookkeeping -----------------------------------------------------------------------------
    log_every: int = 10  # optimiser steps between metric reductions (the only host syncs)
    checkpoint_every: int = 100  # optimiser steps; 0 = no intermediate checkpoints
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # "latest" or a checkpoint folder
    # output_dir is replaced when the run finishes. A folder this project wrote (it holds the
    # .safe-diffusion-dpo-output marker) or an empty one always may be; any other non-empty folder is refused
    # before training starts, listing what would be deleted, unless overwrite is true.
    overwrite: bool = False
    tensorboard: bool = True
    export_merged_unet: bool = False
    progress_bar: bool = True

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
        for risk, repeats in self.risk_repeats.items():
            if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 0:
                raise ValueError(f"risk_repeats.{risk} must be a whole number >= 0, got {repeats!r}")
        for name, eps in self._global_and_per_risk("label_smoothing"):
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 0.5:
                raise ValueError(f"{name} must be a number in [0, 0.5), got {eps!r}")
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
        for risk, bounds in self.timestep_range_per_risk.items():
            ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
                  and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) and 0 <= bounds[0] < bounds[1])
            if not ok:
                raise ValueError(f"timestep_range_per_risk.{risk} must be [low, high) with 0 <= low < high, whole "
                                 f"numbers, got {bounds!r}")
        if self.loss_type == "sft" and self.uses_rpo():
            raise ValueError("rpo_alpha does not apply to loss_type sft (the sft loss is the RPO term alone)")
        if self.loss_type != "sigmoid" and self.uses_label_smoothing():
            raise ValueError(f"label smoothing applies to loss_type sigmoid only, not {self.loss_type!r}")
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

    def uses_label_smoothing(self) -> bool:
        return self.label_smoothing > 0 or any(e > 0 for e in self.label_smoothing_per_risk.values())

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
        in: "none", "regions" or "full"."""
        if self.compile_unet == "auto":
            return "full" if device_type == "cuda" else "none"
        return "regions" if self.compile_regions and self.compile_unet == "none" else self.compile_unet

    def fused_lora_setting(self) -> str:
        """``fused_lora`` as "auto", "on" or "off" (YAML's true/false folded in)."""
        return _auto_on_off(self.fused_lora)

    def fused_lora_blockers(self) -> list[str]:
        """Why training/fused_lora.py cannot stand in for this LoRA (empty: it can)."""
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
        if self.unet_compile_mode("cuda") != "none":
            import torch._dynamo

            try:
                torch._dynamo.lookup_backend(self.compile_backend)
            except Exception as exc:  # dynamo's InvalidBackend, or a backend that fails to import
                raise ValueError(f"compile_backend {self.compile_backend!r}: {exc}") from exc
        if self.compile_options:
            if self.unet_compile_mode("cuda") == "none" or self.compile_backend != "inductor":
                raise ValueError("compile_options are inductor options: they need compile_unet regions, full "
                                 f"or auto and compile_backend inductor (got {self.compile_unet!r}, "
                                 f"{self.compile_backend!r})")
            from inference.speedups import check_inductor_options

            check_inductor_options(self.compile_options, "compile_options")


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
