"""Regional ``torch.compile`` of the LoRA-free parts of a UNet (a speed hook, off unless called).

Why regional: compiling the whole peft-LoRA UNet and then switching the adapters off for the DPO
reference pass is known to go wrong (dynamo may not re-guard on peft's ``disable_adapters`` flag, and
peft breaks ``fullgraph``). So we compile only submodules that contain **no** LoRA layer: the
ResNet blocks (conv + group-norm + SiLU, most of the UNet's memory-bound element-wise work) and the
transformer feed-forwards (GEGLU). The adapter switch lives entirely outside the compiled regions,
so the reference pass is the same function as the eager one by construction; only inductor's
kernel fusion changes rounding (tests/benchmarks/test_regional_compile.py checks policy and
reference outputs and LoRA gradients against eager within tolerance).

Each region is compiled in place (``nn.Module.compile``): module objects, parameter names, state
dicts, peft and gradient checkpointing are untouched.
"""

from __future__ import annotations

import torch


def _has_lora(module: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def lora_free_regions(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """ResNet blocks and transformer feed-forwards of ``unet`` that hold no LoRA layer."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, FeedForward)) and not _has_lora(m)]


def compile_lora_free_regions(unet: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile every LoRA-free region of ``unet`` in place; return how many were compiled.

    Shapes are static per region (``dynamic=False``); the UNet has a few dozen distinct region
    shapes, so dynamo's per-function recompile limit is raised to cover them all instead of silently
    falling back to eager after the default 8.
    """
    import torch._dynamo

    regions = lora_free_regions(unet)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096
        )
    for region in regions:
        region.compile(backend=backend, mode=mode, dynamic=False)
    return len(regions)
