"""``torch.compile`` of the trainer's peft-LoRA UNet: ``train.compile_unet`` = "regions" or "full".

The DPO step runs the same UNet twice per micro-batch: the policy pass (LoRA on, with grad) and the
reference pass (LoRA switched off by peft's ``disable_adapters``, no grad; training/lora.py). Compiling
it is only worth anything if the reference pass still computes the base model.

* **regions** (:func:`compile_lora_free_regions`): compile only submodules that hold **no** LoRA
  layer: the ResNet blocks (conv + group-norm + SiLU, most of the UNet's memory-bound element-wise
  work) and the transformer feed-forwards (GEGLU). The adapter switch lives entirely outside the
  compiled regions, so the reference pass is the same function as the eager one by construction.
  Attention blocks, LoRA layers, layer-norms and the glue between blocks stay eager.

* **full** (:func:`compile_whole_unet`): the whole UNet forward is one graph per adapter state
  (``fullgraph=True``: a graph break is an error, not a silent split into pieces with their own
  guards). The adapter state is passed to the compiled function as an explicit Python bool that it
  branches on; dynamo guards on the value of such an argument (``L['adapters_enabled'] == True``),
  so a graph traced with the adapters on can never serve a call with them off, or the reverse,
  whether or not a given torch version guards on peft's per-layer ``_disable_adapters`` flags (peft
  warns that disabling adapters on a compiled model can silently give wrong outputs). torch 2.15
  does guard on each layer's flag as well: a second, independent guard. The bool is read from the
  layers themselves on every call (≈ 130 attribute reads for SD1.5, 560 for SDXL: microseconds next
  to a UNet forward), so it is the truth, not a promise of the caller.
  tests/training/test_compile.py checks outputs and LoRA gradients against eager, alternation
  on/off/on on cached graphs only, and each of the two guards.

Both modes compile in place: module objects, parameter names, state dicts, peft, gradient
checkpointing, ``accelerator.prepare`` (DDP wraps the module after compilation) and
``accelerator.unwrap_model`` (the reference pass uses the unwrapped module) are untouched. Compiled
and eager differ only in rounding (inductor's kernel fusion).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.resnet import ResnetBlock2D

from inference.speedups import raise_recompile_limits
from training.lora import lora_layers


def _has_lora(module: torch.nn.Module) -> bool:
    return bool(lora_layers(module))


def lora_free_regions(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """ResNet blocks and transformer feed-forwards of ``unet`` that hold no LoRA layer."""
    return [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, FeedForward)) and not _has_lora(m)]


def compile_lora_free_regions(unet: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                              options: dict | None = None) -> int:
    """Compile every LoRA-free region of ``unet`` in place; return how many were compiled.
    Shapes are static per region (``dynamic=False``). ``options``: inductor options (``train.compile_options``)."""
    regions = lora_free_regions(unet)
    raise_recompile_limits()
    for region in regions:
        region.compile(backend=backend, mode=mode, options=options or None, dynamic=False)
    return len(regions)


def adapters_enabled(layers: list[torch.nn.Module]) -> bool:
    """True when every LoRA layer is on (the policy), False when every one is off (the reference, and
    a UNet without LoRA). A mix is no state the trainer makes, and no single bool could key it."""
    disabled = [bool(layer.disable_adapters) for layer in layers]
    if any(disabled) and not all(disabled):
        raise RuntimeError(
            f"compile_unet=full: {sum(disabled)} of {len(disabled)} LoRA layers are disabled; the compiled "
            "UNet supports all adapters on or all off (unet.enable_adapters() / unet.disable_adapters())"
        )
    return bool(layers) and not disabled[0]


def _forward_in_adapter_state(adapters_enabled: bool, forward: Callable, *args, **kwargs):
    """The function that ``compile_unet=full`` compiles: ``forward(*args, **kwargs)``.

    Both arms are the same call. The branch is what makes dynamo guard on the argument's value
    (an argument that is never read gets no guard), hence one graph per adapter state."""
    if adapters_enabled:
        return forward(*args, **kwargs)
    return forward(*args, **kwargs)


def compile_whole_unet(unet: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                       options: dict | None = None) -> Callable:
    """Compile the whole forward of ``unet`` in place (``unet.forward`` is replaced); return the
    compiled function (tests inspect its guards).

    Call this after ``add_lora`` and ``enable_gradient_checkpointing`` and before
    ``accelerator.prepare``, so that DDP's forward and the unwrapped module's forward both reach the
    compiled function. Shapes are static (``dynamic=False``): the trainer's micro-batches all have
    the same shape, and a new shape compiles once more rather than a slower dynamic graph."""
    if "forward" in vars(unet):  # compiled already, or wrapped by accelerate: compiling that would nest
        raise RuntimeError("compile_whole_unet: unet.forward is already replaced; compile a fresh UNet "
                           "before accelerator.prepare")
    layers = lora_layers(unet)
    raise_recompile_limits()
    compiled = torch.compile(_forward_in_adapter_state, backend=backend, mode=mode, options=options or None,
                             dynamic=False, fullgraph=True)
    eager_forward = unet.forward  # the class forward bound to unet (diffusers' LoRA-scale wrapper included)

    @functools.wraps(eager_forward)
    def forward(*args, **kwargs):
        return compiled(adapters_enabled(layers), eager_forward, *args, **kwargs)

    unet.forward = forward
    return compiled


def compile_unet(unet: torch.nn.Module, mode: str, backend: str = "inductor", options: dict | None = None) -> None:
    """Apply ``train.compile_unet`` (``TrainConfig.unet_compile_mode()``): "none", "regions" or "full",
    with ``train.compile_options`` passed to inductor."""
    if mode == "regions":
        compile_lora_free_regions(unet, backend=backend, options=options)
    elif mode == "full":
        compile_whole_unet(unet, backend=backend, options=options)
    elif mode != "none":
        raise ValueError(f"compile_unet must be 'none', 'regions' or 'full', got {mode!r}")
