"""``BenchConfig``: the ``bench:`` section of configs/bench.yaml (``make bench``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from benchmarks.architectures import ARCHS
from benchmarks.generation_bench import GenerationBenchSettings

PARTS = ("train", "generation", "scaling")


def _check_one_compile_mode(settings) -> None:
    if settings.regional_compile and settings.full_compile:
        raise ValueError("regional_compile and full_compile are two compile modes; set one")


@dataclass
class PointSettings:
    micro_batch: int
    gradient_checkpointing: bool = False
    path: Literal["fast", "simple"] = "fast"
    regional_compile: bool = False  # trainer compile_unet=regions
    # fast path only (the simple path is always NCHW). Off by default: measured 11% slower in eager on
    # H200 (docs/experiments.md, "Fast path, regional compile, channels_last, checkpointing").
    channels_last: bool = False
    full_compile: bool = False  # trainer compile_unet=full (the whole UNet, one graph per adapter state)
    # trainer compile_options (inductor options, e.g. {conv_1x1_as_mm: true}); needs a compile mode
    compile_options: dict[str, Any] = field(default_factory=dict)
    # more train: keys for this point only (over bench.trainer_extra), e.g. {fused_lora: on}: A/B runs in one call
    trainer: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from benchmarks.train_bench import POINT_OWNED_TRAIN_KEYS

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
    # Training sweep: the trainer's fast config at several micro-batches, with/without checkpointing,
    # plus the simple path (VAE + text encoders every step) as the baseline.
    train_points: list[PointSettings] = field(default_factory=list)
    generation_batch: int = 4
    num_pairs: int = 64  # pairs in the synthetic set (cached latents make the set size irrelevant)
    parts: Optional[list[str]] = None  # this architecture's parts; None = bench.parts

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
    arch: str = "sd15"
    gpus: list[int] = field(default_factory=lambda: [1, 2, 4])
    micro_batch: int = 16  # per process (weak scaling: the global batch grows with the GPU count)
    gradient_checkpointing: bool = False
    regional_compile: bool = False
    full_compile: bool = False
    accelerate_config: str = "configs/accelerate/ddp.yaml"

    def validate(self) -> None:
        _check_one_compile_mode(self)
        if self.arch not in ARCHS:
            raise ValueError(f"scaling.arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        if not self.gpus or min(self.gpus) < 1:
            raise ValueError(f"scaling.gpus must be positive GPU counts, got {self.gpus}")


@dataclass
class BenchConfig:
    archs: list[str] = field(default_factory=lambda: ["sd15", "sdxl"])
    parts: list[str] = field(default_factory=lambda: ["generation", "train"])
    scale: Literal["full", "tiny"] = "full"  # tiny = core.tiny_models (CPU smoke run)
    device: str = "auto"  # auto = cuda if available, else cpu
    work_dir: Optional[str] = None  # models, sets, trainer work; default runs/bench
    results_dir: str = "benchmarks/results"
    tag: str = ""  # added to the results file name
    log_every: int = 5  # trainer steps per timed interval
    timed_intervals: int = 3  # intervals after the warm-up interval
    count_flops: bool = True
    matmul_size: int = 8192  # the bf16 peak probe: an N x N x N product
    trainer_extra: dict[str, Any] = field(default_factory=dict)  # extra train: keys for every point
    sd15: ArchSettings = field(default_factory=_sd15_default)
    sdxl: ArchSettings = field(default_factory=_sdxl_default)
    generation: GenerationBenchSettings = field(default_factory=GenerationBenchSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)

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
