"""``BenchConfig``: the ``bench:`` section of configs/bench.yaml (``make bench``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from benchmarks.architectures import ARCHS
from benchmarks.generation_bench import GenerationBenchSettings
from benchmarks.train_bench import POINT_OWNED_TRAIN_KEYS

PARTS = ("train", "generation", "scaling")


def _check_one_compile_mode(settings) -> None:
    if settings.regional_compile and settings.full_compile:
        raise ValueError("regional_compile and full_compile are two compile modes; set one")


@dataclass
class PointSettings:
    micro_batch: int = field(metadata={"help": "Pairs per forward (the trainer's micro_batch_size)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "The trainer's gradient_checkpointing."})
    path: Literal["fast", "simple"] = field(default="fast", metadata={
        "help": "fast: the trainer's fast config (cached latents); simple: VAE and text encoders every step."})
    regional_compile: bool = field(default=False, metadata={"help": "The trainer's compile_unet: regions."})
    # Off by default: slower in eager (docs/experiments.md, "Fast path, regional compile, channels_last, ...").
    channels_last: bool = field(default=False, metadata={
        "help": "NHWC UNet layout (fast path only; the simple path is always NCHW)."})
    full_compile: bool = field(default=False, metadata={
        "help": "The trainer's compile_unet: full (the whole UNet, one graph per adapter state)."})
    compile_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Inductor options of the trainer's compile (e.g. {conv_1x1_as_mm: true}; training/kernels.py "
                "KernelOptions, not a train: key); needs a compile mode."})
    trainer: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "More train: keys for this point only (over bench.trainer_extra), e.g. {fused_lora: on}: A/B runs "
                "in one call."})

    def validate(self) -> None:
        owned = sorted(POINT_OWNED_TRAIN_KEYS & set(self.trainer))
        if owned:
            raise ValueError(f"trainer {owned}: set by the point's own fields (micro_batch, gradient_checkpointing, "
                             "path, channels_last, regional_compile/full_compile, compile_options), not here")
        if self.compile_options and not (self.regional_compile or self.full_compile):
            raise ValueError("compile_options need regional_compile or full_compile")
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {self.micro_batch}")
        _check_one_compile_mode(self)


@dataclass
class ArchSettings:
    train_points: list[PointSettings] = field(default_factory=list, metadata={
        "help": "The training sweep: the trainer at several micro-batches, with or without checkpointing, and the "
                "simple path as the baseline."})
    generation_batch: int = field(default=4, metadata={"help": "Images per generation call."})
    num_pairs: int = field(default=64, metadata={
        "help": "Pairs in the synthetic preference set (with cached latents the set size does not matter)."})
    parts: Optional[list[str]] = field(default=None, metadata={
        "help": "This architecture's parts (train, generation); null: bench.parts."})

    def validate(self) -> None:
        if self.generation_batch < 1 or self.num_pairs < 1:
            raise ValueError("generation_batch and num_pairs must be >= 1")
        if self.parts is not None and set(self.parts) - {"train", "generation"}:
            raise ValueError(f"parts {self.parts}: an architecture's parts are train and/or generation")


def _sd15_default() -> ArchSettings:
    return ArchSettings(
        train_points=[
            PointSettings(8), PointSettings(16), PointSettings(32), PointSettings(32, True),
            PointSettings(16, path="simple"),
        ],
        generation_batch=16,
        num_pairs=16,
    )


def _sdxl_default() -> ArchSettings:
    return ArchSettings(
        train_points=[
            PointSettings(2), PointSettings(4), PointSettings(4, True), PointSettings(8, True),
            PointSettings(2, path="simple"),
        ],
        generation_batch=4,
        num_pairs=4,
    )


@dataclass
class ScalingSettings:
    arch: str = field(default="sd15", metadata={"help": "Architecture of the scaling runs (sd15 or sdxl)."})
    gpus: list[int] = field(default_factory=lambda: [1, 2, 4], metadata={
        "help": "GPU counts to launch on (accelerate launch)."})
    micro_batch: int = field(default=16, metadata={
        "help": "Pairs per process (weak scaling: the global batch grows with the GPU count)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "The trainer's gradient_checkpointing."})
    regional_compile: bool = field(default=False, metadata={"help": "The trainer's compile_unet: regions."})
    full_compile: bool = field(default=False, metadata={"help": "The trainer's compile_unet: full."})
    accelerate_config: str = field(default="configs/accelerate/ddp.yaml", metadata={
        "help": "accelerate config file of the launches."})

    def validate(self) -> None:
        _check_one_compile_mode(self)
        if self.arch not in ARCHS:
            raise ValueError(f"scaling.arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        if not self.gpus or min(self.gpus) < 1:
            raise ValueError(f"scaling.gpus must be positive GPU counts, got {self.gpus}")


@dataclass
class BenchConfig:
    archs: list[str] = field(default_factory=lambda: ["sd15", "sdxl"], metadata={
        "help": "Architectures to measure: sd15, sdxl."})
    parts: list[str] = field(default_factory=lambda: ["generation", "train"], metadata={
        "help": "What to measure: generation, train, scaling (multi-GPU)."})
    scale: Literal["full", "tiny"] = field(default="full", metadata={
        "help": "full: the published architectures (random init); tiny: core.tiny_models (a CPU smoke run)."})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda when a GPU is visible, else cpu), cpu, cuda, ..."})
    work_dir: Optional[str] = field(default=None, metadata={
        "help": "Models, sets and trainer work (reused by later runs); default runs/bench."})
    results_dir: str = field(default="benchmarks/results", metadata={"help": "Folder of the results JSON files."})
    tag: str = field(default="", metadata={"help": "Added to the results file name."})
    log_every: int = field(default=5, metadata={"help": "Trainer steps per timed interval."})
    timed_intervals: int = field(default=3, metadata={"help": "Timed intervals after the warm-up interval."})
    count_flops: bool = field(default=True, metadata={
        "help": "Count the FLOPs of one step of each point (for MFU)."})
    matmul_size: int = field(default=8192, metadata={
        "help": "N of the bf16 peak probe, an N x N x N matrix product."})
    trainer_extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "More train: keys for every point, e.g. {reference_cache: on}."})
    sd15: ArchSettings = field(default_factory=_sd15_default, metadata={"help": "The SD1.5 architecture's runs."})
    sdxl: ArchSettings = field(default_factory=_sdxl_default, metadata={"help": "The SDXL architecture's runs."})
    generation: GenerationBenchSettings = field(default_factory=GenerationBenchSettings, metadata={
        "help": "The generation comparison (the generator against the plain pipeline)."})
    scaling: ScalingSettings = field(default_factory=ScalingSettings, metadata={
        "help": "The multi-GPU scaling runs (parts: [scaling])."})

    def validate(self) -> None:
        unknown = sorted(set(self.archs) - set(ARCHS))
        if unknown or not self.archs:
            raise ValueError(f"archs {self.archs}: valid architectures are {sorted(ARCHS)}")
        bad_parts = sorted(set(self.parts) - set(PARTS))
        if bad_parts or not self.parts:
            raise ValueError(f"parts {self.parts}: valid parts are {list(PARTS)}")
        if self.log_every < 1 or self.timed_intervals < 1:
            raise ValueError("log_every and timed_intervals must be >= 1")

    def arch(self, name: str) -> ArchSettings:
        return getattr(self, name)


# --smoke: the whole bench on CPU with tiny models in well under a minute (a fast test runs it).
SMOKE_OVERRIDES = [
    "scale=tiny",
    "device=cpu",
    "parts=[generation, train]",
    "log_every=1",
    "timed_intervals=1",
    "matmul_size=256",
    "sd15.train_points=[{micro_batch: 2}, {micro_batch: 2, path: simple}]",
    "sd15.generation_batch=2",
    "sd15.num_pairs=4",
    "sdxl.train_points=[{micro_batch: 2, gradient_checkpointing: true}]",
    "sdxl.generation_batch=2",
    "sdxl.num_pairs=4",
    "generation.steps=2",
    "generation.warmup_batches=0",
    "generation.timed_batches=1",
    # inductor compilation takes minutes on CPU; the compiled paths have their own tests.
    "generation.speedups.compile_unet=false",
    "generation.speedups.compile_vae=false",
]
