"""``EraseConfig``: the one validated config of concept erasure (``erase:`` section of a configs/*.yaml).

One section describes one or more named erasures (``erasures: {esd_x: {method: x}, esd_u: {method: u}}``) that
share the base model, the concepts and the optimisation settings; each may override the concepts, iterations,
learning rate and η, and each writes its own LoRA folder, by default ``runs/<config name>/<erasure name>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

from core.errors import ConfigError

# What each method adapts (Gandikota et al. 2023, section 4): ESD-x the cross-attention layers, through which
# the prompt enters (erasure tied to the concept's words); ESD-u every other layer (erasure that also acts when
# the concept is not named).
METHODS = ("x", "u")


@dataclass
class EraseLora:
    rank: int = field(default=4, metadata={"help": "LoRA rank r of every adapted layer."})
    alpha: Optional[float] = field(default=None, metadata={
        "help": "LoRA alpha: the update is scaled by alpha / rank (peft's convention); null: alpha = rank "
                "(scale 1)."})

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")

    @property
    def scale_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass
class ErasureSpec:
    """One erased model: a method and, optionally, its own concepts and optimisation settings."""

    method: Literal["x", "u"] = field(default="x", metadata={
        "help": "x: ESD-x, LoRA on the cross-attention (attn2) projections only; u: ESD-u, LoRA on every other "
                "linear and convolution layer of the UNet (not attn2, the time embedding, SDXL's pooled-text "
                "embedding or the output convolution)."})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Folder of this erasure's LoRA; default runs/<config>/<erasure name>."})
    concepts: Optional[list[str]] = field(default=None, metadata={
        "help": "Concepts to erase with this erasure; null: erase.concepts."})
    iterations: Optional[int] = field(default=None, metadata={"help": "Optimiser steps; null: erase.iterations."})
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Adam learning rate; null: erase.learning_rate."})
    eta: Optional[float] = field(default=None, metadata={"help": "Negative guidance η; null: erase.eta."})

    def validate(self) -> None:
        if self.concepts is not None:
            _check_concepts(self.concepts, "concepts")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.eta is not None and self.eta <= 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")


def _check_concepts(concepts: list[str], key: str) -> None:
    if not concepts:
        raise ValueError(f"{key} must name at least one concept to erase")
    blank = [c for c in concepts if not c.strip()]
    if blank:
        raise ValueError(f"{key} holds an empty concept string: {concepts}")


@dataclass
class EraseConfig:
    # --- inputs / outputs -------------------------------------------------------------------------
    model: str = field(metadata={
        "help": "Base model: a diffusers folder (SD1.x/2.x or SDXL), or a hub id (org/name) already in the local "
                "Hugging Face cache."})
    variant: Optional[str] = field(default=None, metadata={
        "help": "Weight files to load: fp16 for unet/diffusion_pytorch_model.fp16.safetensors and the like; null: "
                "the plain files."})
    erasures: dict[str, ErasureSpec] = field(
        default_factory=lambda: {"esd_x": ErasureSpec(method="x"), "esd_u": ErasureSpec(method="u")},
        metadata={"help": "The erased models to train, by name (each is one LoRA folder); the settings below are "
                          "shared unless an erasure sets its own."})
    only: Optional[list[str]] = field(default=None, metadata={
        "help": "Train only these erasures (names of erasures); null: all of them."})
    processes: int = field(default=1, metadata={
        "help": "Erasures trained at once, each in its own process (python -m erasure.erase only=[name]); 1: one "
                "after another in this process. Each erasure's weights are the same either way (its own seed and "
                "draws). Without a GPU the Makefile sets CPU_PROCS (2 where there are 2 or more cores): one erasure is a "
                "chain of small UNet calls that one thread runs as fast as two."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an output folder that this project did not write (it has no .safe-diffusion-dpo-output "
                "marker)."})

    # --- the objective (Gandikota et al. 2023, eq. 4) ----------------------------------------------
    concepts: list[str] = field(default_factory=list, metadata={
        "help": "The concept prompts c to erase; every iteration draws one per image. Write them as the model's "
                "prompts write the concept (e.g. nudity; for the synthetic world its caption phrases)."})
    eta: float = field(default=1.0, metadata={
        "help": "Negative guidance η: the erased model's ε*(x_t, c, t) is regressed to "
                "ε(x_t, t) - η·[ε(x_t, c, t) - ε(x_t, t)] of the frozen model (the paper: 1.0)."})
    sampling_steps: int = field(default=50, metadata={
        "help": "DDIM steps of a whole trajectory from noise; x_t is reached after the share of them that lies "
                "above the iteration's timestep t (the paper: 50)."})
    sampling_guidance: float = field(default=3.0, metadata={
        "help": "Classifier-free guidance of the partial sampling that makes x_t with prompt c (the paper: 3)."})

    # --- optimisation ----------------------------------------------------------------------------
    iterations: int = field(default=1000, metadata={"help": "Optimiser steps (the paper: 1000)."})
    learning_rate: float = field(default=1e-4, metadata={
        "help": "Adam learning rate of the LoRA weights (the paper's 1e-5 is for full fine-tuning)."})
    batch_size: int = field(default=1, metadata={
        "help": "Images x_t per iteration (each with its own noise and concept; the paper: 1)."})
    max_grad_norm: float = field(default=0.0, metadata={
        "help": "Gradient-norm clipping threshold; 0: no clipping (the paper clips nothing)."})
    lora: EraseLora = field(default_factory=EraseLora, metadata={"help": "The LoRA adapter."})
    seed: int = field(default=0, metadata={
        "help": "Seed of the LoRA init and of every iteration's concept, timestep and noise (each erasure of a "
                "run sees the same draws)."})

    # --- device ----------------------------------------------------------------------------------
    device: str = field(default="auto", metadata={"help": "auto (cuda if visible, else cpu), cpu, cuda, cuda:N."})
    # "fp32", not "no": YAML reads an unquoted no as false.
    mixed_precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "auto: bf16 on CUDA (frozen weights and autocast; the LoRA stays fp32), else fp32."})
    log_every: int = field(default=50, metadata={"help": "Iterations between logged mean losses."})

    def validate(self) -> None:
        # The shared list may stay empty only when every erasure names its own concepts.
        if self.concepts or not all(spec.concepts for spec in self.erasures.values()):
            _check_concepts(self.concepts, "concepts")
        for name, value in (("iterations", self.iterations), ("batch_size", self.batch_size),
                            ("sampling_steps", self.sampling_steps), ("log_every", self.log_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0 (η = 0 leaves the model unchanged), got {self.eta}")
        if self.sampling_guidance < 0:
            raise ValueError(f"sampling_guidance must be >= 0, got {self.sampling_guidance}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if not self.erasures:
            raise ValueError("erasures must name at least one erasure, e.g. {esd_x: {method: x}}")
        if self.only is not None:
            unknown = sorted(set(self.only) - set(self.erasures))
            if unknown or not self.only:
                raise ValueError(f"only={self.only}: {'unknown erasure(s) ' + str(unknown) if unknown else 'empty'}; "
                                 f"configured erasures: {sorted(self.erasures)}")
        folders = [spec.output_dir for spec in self.erasures.values() if spec.output_dir]
        if len(set(folders)) != len(folders):
            raise ValueError(f"two erasures write the same output_dir: {folders}")

    def selected(self) -> dict[str, ErasureSpec]:
        """The erasures this run trains, in config order."""
        return {n: s for n, s in self.erasures.items() if self.only is None or n in self.only}

    def resolved(self, name: str) -> "ResolvedErasure":
        """Erasure ``name`` with the shared settings filled in."""
        spec = self.erasures[name]
        return ResolvedErasure(
            name=name,
            method=spec.method,
            output_dir=spec.output_dir or "",
            concepts=list(spec.concepts or self.concepts),
            iterations=spec.iterations or self.iterations,
            learning_rate=spec.learning_rate or self.learning_rate,
            eta=spec.eta or self.eta,
        )


@dataclass(frozen=True)
class ResolvedErasure:
    name: str
    method: str
    output_dir: str
    concepts: list[str]
    iterations: int
    learning_rate: float
    eta: float


def resolve_paths(cfg: EraseConfig, run_name: str) -> EraseConfig:
    """Fill each erasure's default ``runs/<run_name>/<erasure name>`` folder; everything else is unchanged."""
    run_dir = Path("runs") / run_name
    erasures = {name: replace(spec, output_dir=spec.output_dir or str(run_dir / name))
                for name, spec in cfg.erasures.items()}
    folders = [spec.output_dir for spec in erasures.values()]
    if len(set(folders)) != len(folders):

        raise ConfigError(f"erase.erasures: two erasures write the same folder: {folders}")
    return replace(cfg, erasures=erasures)
