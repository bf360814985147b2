"""Generation throughput: the project's generator vs a plain diffusers pipeline call, same settings.

Both sides use the same pipeline object, batch, sampler, steps, guidance, dtype and per-image seeds
(one ``torch.Generator`` per image, as ``inference.generation`` does), so both draw the same
initial noise and must produce the same images up to bf16 rounding; we report the difference.

Order inside one run: (1) plain ``pipe(...)`` call, timed; (2) one UNet forward on fixed inputs as
the reference for the single-step check; (3) the fast paths of ``inference.speedups`` applied to
the pipeline; (4) ``generation.generate(pipe, specs)`` timed; (5) images and the single UNet step
compared with (1) and (2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.measure import peak_memory, time_steady_state
from benchmarks.synthetic_data import CAPTIONS
from inference.generation import GenerationSpec, generate, set_sampler
from inference.speedups import InferenceSpeedups, prepare_pipeline


@dataclass
class GenerationBenchSettings:
    steps: int = field(default=30, metadata={"help": "Sampler steps per image."})
    guidance: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    sampler: str = field(default="euler", metadata={"help": "Scheduler name (inference.generation)."})
    warmup_batches: int = field(default=1, metadata={
        "help": "Untimed calls first, per side (compilation happens here on the fast side)."})
    timed_batches: int = field(default=3, metadata={
        "help": "Timed calls per side; the median seconds per call is reported."})
    speedups: InferenceSpeedups = field(default_factory=InferenceSpeedups, metadata={
        "help": "The generator's fast paths (inference/speedups.py)."})

    def validate(self) -> None:
        for name in ("steps", "timed_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"generation.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_batches < 0:
            raise ValueError(f"generation.warmup_batches must be >= 0, got {self.warmup_batches}")


def make_specs(batch: int, resolution: int, settings: GenerationBenchSettings):
    return [
        GenerationSpec(
            prompt=CAPTIONS[i % len(CAPTIONS)],
            negative_prompt="",
            seed=i,
            steps=settings.steps,
            guidance=settings.guidance,
            height=resolution,
            width=resolution,
            sampler=settings.sampler,
        )
        for i in range(batch)
    ]


def plain_pipeline_call(pipe, specs) -> np.ndarray:
    """The stock diffusers call for ``specs`` (one signature) -> uint8 (N, H, W, 3)."""
    first = specs[0]
    set_sampler(pipe, first.sampler)  # the same scheduler class/config the generator uses
    device = pipe._execution_device
    generators = [torch.Generator(device=device).manual_seed(int(s.seed)) for s in specs]
    with torch.no_grad():
        images = pipe(
            prompt=[s.prompt for s in specs],
            negative_prompt=[s.negative_prompt for s in specs],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            height=first.height,
            width=first.width,
            generator=generators,
            output_type="np",
        ).images
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def unet_probe_inputs(pipe, batch: int, resolution: int, seed: int = 123):
    """Fixed random UNet inputs shaped and typed as the pipeline's own UNet call at ``batch`` rows
    (latents, float timestep, text states, SDXL added conditions), so a compiled UNet reuses the graph
    it compiled for generation instead of compiling another one."""
    unet = pipe.unet
    param = next(unet.parameters())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    size = resolution // pipe.vae_scale_factor
    channels = unet.config.in_channels
    as_param = dict(device=param.device, dtype=param.dtype)
    kwargs = {
        "sample": torch.randn(batch, channels, size, size, generator=gen).to(**as_param),
        "timestep": torch.tensor(500.0, device=param.device),
        "encoder_hidden_states": torch.randn(
            batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, generator=gen
        ).to(**as_param),
        "timestep_cond": None,
        "cross_attention_kwargs": None,
        "added_cond_kwargs": None,
    }
    if unet.config.addition_embed_type == "text_time":
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled_dim, generator=gen).to(**as_param),
            "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch).to(**as_param),
        }
    return kwargs


def unet_output(pipe, inputs):
    inputs = dict(inputs)
    sample, timestep = inputs.pop("sample"), inputs.pop("timestep")
    with torch.no_grad():
        return pipe.unet(sample, timestep, **inputs, return_dict=False)[0].float()


def compare_images(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Differences in 8-bit pixel levels (0..255)."""
    diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))
    return {
        "max_abs_diff_levels": int(diff.max()),
        "mean_abs_diff_levels": float(diff.mean()),
        "fraction_pixels_within_2_levels": float((diff <= 2).mean()),
    }


def run_generation_bench(pipe, batch: int, resolution: int, settings: GenerationBenchSettings, device) -> dict:
    """Time plain vs project generator (+ fast paths) on ``pipe``; returns the result record."""
    specs = make_specs(batch, resolution, settings)
    steps = dict(warmup=settings.warmup_batches, steps=1, repeats=settings.timed_batches)

    plain_images: dict[str, np.ndarray] = {}

    def plain():
        plain_images["out"] = plain_pipeline_call(pipe, specs)

    with peak_memory(device) as plain_mem:
        plain_timing = time_steady_state(plain, device, **steps)
    # 2 x batch rows: the classifier-free-guidance batch the pipeline runs the UNet on.
    probe = unet_probe_inputs(pipe, batch=2 * batch, resolution=resolution)
    probe_reference = unet_output(pipe, probe)

    prepare_pipeline(pipe, settings.speedups)
    fast_images: dict[str, np.ndarray] = {}

    def project_generator():
        fast_images["out"] = np.stack(generate(pipe, specs, batch_size=batch))

    with peak_memory(device) as fast_mem:
        fast_timing = time_steady_state(project_generator, device, **steps)
    probe_fast = unet_output(pipe, probe)
    unet_rel_error = float((probe_fast - probe_reference).norm() / probe_reference.norm())

    plain_ips = batch / plain_timing.seconds_per_call
    fast_ips = batch / fast_timing.seconds_per_call
    return {
        "batch": batch,
        "resolution": resolution,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "sampler": settings.sampler,
        "plain_images_per_s": plain_ips,
        "plain_seconds_per_batch": plain_timing.repeats,
        "plain_peak_gib": plain_mem["peak_gib"],
        "generator_images_per_s": fast_ips,
        "generator_seconds_per_batch": fast_timing.repeats,
        "generator_peak_gib": fast_mem["peak_gib"],
        "generator_speedups": settings.speedups.enabled(),
        "speedup_vs_plain": fast_ips / plain_ips,
        "unet_step_rel_error": unet_rel_error,
        "images_vs_plain": compare_images(plain_images["out"], fast_images["out"]),
    }
