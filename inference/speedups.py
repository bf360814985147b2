"""Exact-math inference fast paths for a diffusers SD/SDXL pipeline, shared by curation
(``curate.generation.fast_paths`` / ``speedups``), evaluation (``eval.generation.fast_paths`` / ``speedups``) and
``make bench``.

Every option keeps the sampler, step count, guidance and precision: the same function is computed,
only scheduled differently, so outputs match the plain pipeline within bf16 rounding
(tests/inference/test_speedups.py checks each against the plain path on fixed inputs).

* ``fuse_qkv``: one (3D, D) projection instead of three (D, D) ones in every self-attention
  (diffusers' ``fuse_qkv_projections``): fewer, larger matrix products.
* ``channels_last``: NHWC memory layout for the UNet and VAE convolutions (cuDNN's native layout
  on tensor cores; avoids layout transposes around each convolution).
* ``compile_unet`` / ``compile_vae``: ``torch.compile`` of the UNet forward and the VAE decoder
  (inductor fuses group-norm + SiLU, residual adds and GEGLU into the neighbouring kernels).
  ``fullgraph`` is safe here because no peft adapters may be attached (``prepare_pipeline`` refuses a
  pipeline with LoRA layers: merge them first, see ``merge_lora``).
* ``coordinate_descent_tuning`` and ``inductor_options``: how inductor tunes its own kernels (block
  sizes, warps); they change which kernel runs, never the maths.

The project's generator (``inference.generation.generate``) is called unchanged on the prepared
pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lora import LoraLayer


@dataclass
class InferenceSpeedups:
    fuse_qkv: bool = field(default=True, metadata={
        "help": "One (3D, D) projection instead of three (D, D) ones in every self-attention."})
    channels_last: bool = field(default=True, metadata={"help": "NHWC memory layout for the UNet and the VAE."})
    compile_unet: bool = field(default=True, metadata={"help": "torch.compile of the UNet forward."})
    compile_vae: bool = field(default=True, metadata={"help": "torch.compile of the VAE decoder."})
    conv_1x1_as_mm: bool = field(default=True, metadata={
        "help": "Inductor: run 1x1 convolutions as matrix products (they are, in NHWC); no extra compile time."})
    # Off by default: it pays off only after hours of generation, or where the cache is already warm.
    coordinate_descent_tuning: bool = field(default=False, metadata={
        "help": "Inductor's coordinate-descent kernel tuning: each Triton kernel's block sizes and warps are timed "
                "and the best kept (in inductor's cache): faster kernels for a few minutes more compile on first use "
                "(docs/performance.md)."})
    inductor_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Further inductor options by name (torch._inductor.list_options()), e.g. {epilogue_fusion: false}."})
    compile_mode: str = field(default="default", metadata={
        "help": "torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs."})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile backend; aot_eager captures the same graphs without code generation (CPU tests)."})

    def validate(self) -> None:
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise ValueError(f"compile_mode must be one of {list(modes)}, got {self.compile_mode!r}")
        check_inductor_options(self.inductor_options, "inductor_options")

    def enabled(self) -> list[str]:
        """The fast paths in use, for reports: the four switches, then kernel tuning when anything compiles."""
        names = ("fuse_qkv", "channels_last", "compile_unet", "compile_vae")
        on = [n for n in names if getattr(self, n)]
        if self.compile_unet or self.compile_vae:
            on += ["coordinate_descent_tuning"] if self.coordinate_descent_tuning else []
            on += [f"inductor:{key}={value}" for key, value in sorted(self.inductor_options.items())]
        return on


def check_inductor_options(options: dict, name: str) -> None:
    """Raise ValueError naming the keys of ``options`` (config key ``name``) that inductor does not know."""
    if not options:
        return
    import torch._inductor  # optional: the torch.compile path only (torch._dynamo adds ~1.4 s to an import)

    unknown = sorted(set(options) - set(torch._inductor.list_options()))
    if unknown:
        raise ValueError(f"{name} {unknown}: not inductor options (see torch._inductor.list_options())")


def raise_recompile_limits() -> None:
    """Dynamo keeps at most ``recompile_limit`` graphs per code object; beyond it a ``fullgraph`` compile fails
    and any other silently runs eager. Every UNet compiled in one process adds graphs to the same forward code:
    the trainer's regions (a few dozen shapes share ``Module._call_impl``), its whole-UNet compile (2 adapter
    states per UNet, one UNet per bench point), an eval's base and merged-LoRA pipelines, a bench's SD1.5 and
    SDXL."""
    import torch._dynamo  # optional: the torch.compile path only (torch._dynamo adds ~1.4 s to an import)

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096
        )


def use_fast_paths(setting, device_type: str) -> bool:
    """A stage's ``fast_paths`` setting (true, false or "auto") for the device its pipeline runs on:
    "auto" is on with CUDA only (on a CPU compiling costs more than it saves)."""
    return device_type == "cuda" if setting == "auto" else bool(setting)


def _compile_kwargs(speedups: InferenceSpeedups) -> dict:
    # Static shapes: a second pipeline of the same classes compiled in one process (another model or
    # resolution) hits dynamo's cache for the same forward code; without dynamic=False dynamo would then
    # recompile with dynamic shapes, which ran SDXL generation ≈ 20% slower on an H100 (0.83 against 1.03
    # images/s; docs/experiments.md, "Generation: kernel tuning and uint8 conversion on the GPU").
    if speedups.compile_backend == "inductor":
        return {"backend": "inductor", "mode": speedups.compile_mode, "dynamic": False}
    return {"backend": speedups.compile_backend, "dynamic": False}


def has_lora_layers(module) -> bool:
    """True when ``module`` holds peft LoRA layers (diffusers' ``load_lora_weights`` adds them)."""
    return any(isinstance(m, LoraLayer) for m in module.modules())


def merge_lora(pipe) -> None:
    """Fold loaded LoRA adapters into the base weights (W + scale * B A, in the pipeline's dtype) and drop
    the adapter layers, so the fast paths see plain linear layers: fused QKV would otherwise bypass a
    LoRA on to_q/to_k/to_v, and a compiled UNet must not have adapters switched under it."""
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights


def is_compiled(pipe) -> bool:
    """True when ``prepare_pipeline`` compiled the UNet or the VAE decoder of ``pipe``. Their graphs are
    compiled for static shapes, so every new batch size costs a full compile (146-186 s for SDXL on an H100;
    about 30 s for the demo's tiny UNet): callers then run every batch at one fixed
    size (``inference.generation`` pads short batches)."""
    return isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule) or bool(
        getattr(pipe.vae, "_speedups_decode_compiled", False)
    )


def uncompile(pipe) -> None:
    """Undo the compiles of ``prepare_pipeline`` (the weight changes, fused QKV and channels_last, stay), so a
    later ``prepare_pipeline`` compiles again, e.g. with other inductor options. Forgets every dynamo graph of
    the process (``torch._dynamo.reset``)."""
    import torch._dynamo  # optional: the torch.compile path only (torch._dynamo adds ~1.4 s to an import)

    torch._dynamo.reset()
    pipe.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    pipe.vae.__dict__.pop("decode", None)  # the instance attribute holding the compiled decode, if any
    pipe.vae._speedups_decode_compiled = False


def prepare_pipeline(pipe, speedups: InferenceSpeedups):
    """Apply ``speedups`` to ``pipe`` in place (and return it). Idempotent per option."""
    if any(has_lora_layers(m) for m in (pipe.unet, pipe.vae)):
        raise ValueError("prepare_pipeline: the pipeline holds LoRA layers; merge them first "
                         "(inference.speedups.merge_lora) or leave the fast paths off")

    if speedups.fuse_qkv and not getattr(pipe, "_speedups_qkv_fused", False):
        pipe.fuse_qkv_projections(unet=True, vae=True)
        pipe._speedups_qkv_fused = True
    if speedups.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if speedups.compile_unet or speedups.compile_vae:
        # optional: the torch.compile path only (torch._dynamo adds ~1.4 s to an import)
        import torch._inductor.config as inductor_config

        # Process-wide inductor settings: they apply to every graph inductor compiles from here on.
        inductor_config.conv_1x1_as_mm = speedups.conv_1x1_as_mm
        inductor_config.coordinate_descent_tuning = speedups.coordinate_descent_tuning
        for name, value in speedups.inductor_options.items():
            setattr(inductor_config, name, value)
        raise_recompile_limits()
    if speedups.compile_unet and not isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule):
        pipe.unet = torch.compile(pipe.unet, fullgraph=True, **_compile_kwargs(speedups))
    if speedups.compile_vae and not getattr(pipe.vae, "_speedups_decode_compiled", False):
        # Only the decoder runs at inference; compiling ``decode`` keeps ``pipe.vae`` a plain module.
        pipe.vae.decode = torch.compile(pipe.vae.decode, fullgraph=True, **_compile_kwargs(speedups))
        pipe.vae._speedups_decode_compiled = True
    return pipe
