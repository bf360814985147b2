"""The ``generation:`` section that curation (``curate.generation``) and evaluation (``eval.generation``) share.

One dataclass, so that the two stages read the same keys with the same checks and help: a curated pair and an
evaluated image made with the same settings are made the same way (``inference.generation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from inference.generation import check_sampler
from inference.speedups import InferenceSpeedups


@dataclass
class GenerationConfig:
    sampler: str = field(default="ddim", metadata={
        "help": "Scheduler name (inference.generation.SAMPLERS), e.g. ddim, dpmsolver++, euler; built from the "
                "model's own scheduler config, so its noise schedule is kept."})
    steps: int = field(default=20, metadata={"help": "Sampler steps per image."})
    guidance: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale."})
    resolution: Optional[int] = field(default=None, metadata={
        "help": "Image size in pixels (square, a multiple of 8); null: the model's native size."})
    # Images do not depend on the batch they land in (one seeded generator per image), so only speed depends on it.
    batch_size: Union[int, Literal["auto"]] = field(default="auto", metadata={
        "help": "Images per generation batch; auto: chosen from the resolution and device "
                "(inference.generation.resolve_batch_size)."})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={
        "help": "Weights and activations dtype of generation."})
    # Off on a CPU under auto: compiling costs more there than it saves.
    fast_paths: Union[bool, Literal["auto"]] = field(default="auto", metadata={
        "help": "Exact-math inference fast paths (inference/speedups.py: fused QKV, channels_last, torch.compile of "
                "the UNet and the VAE decoder): auto: on when generating on CUDA, off on a CPU; true/false force "
                "them. Compiling takes a few minutes up front (docs/performance.md). In eval, a LoRA model then "
                "runs as a second pipeline with the LoRA merged."})
    speedups: InferenceSpeedups = field(default_factory=InferenceSpeedups, metadata={
        "help": "Which fast paths, when fast_paths is on."})

    def validate(self) -> None:
        check_sampler(self.sampler)
        if self.steps < 1:
            raise ValueError(f"generation.steps must be >= 1, got {self.steps}")
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError(f"generation.batch_size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"generation.resolution must be a multiple of 8, got {self.resolution}")
