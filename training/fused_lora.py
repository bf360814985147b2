"""Fused LoRA linear layers for the compiled trainer (``train.fused_lora``).

peft's LoRA ``Linear`` computes ``y = base(x) + lora_B(lora_A(dropout(x))) * s`` as separate modules. Traced under
the trainer's bf16 autocast, its graph holds element-wise passes that do none of the LoRA's arithmetic: x cast to
the fp32 LoRA weights' dtype and back (and the same casts of the gradients), the output gradient multiplied by s
in a pass of its own before lora_B's products, and a device-to-device copy (``Memcpy DtoD`` in the GPU profile).
At a UNet's image-token layers each such pass reads and writes an (M, N) bf16 activation: SD1.5's 64x64 level
has M = 96 x 4096 rows of 320 features per policy forward (micro-batch 48, winner and loser), 252 MB each way,
about 170 µs of HBM time per pass on an H100 (benchmarks/lora_layer.py lists the kernels).

:class:`FusedLoraLinear` computes the same function as one autograd node whose forward and backward run only the
products the maths needs, in the autocast dtype (A: (r, K), B: (N, r), s = alpha / r, z = x Aᵀ: (M, r)):

* forward: y = (x Wᵀ + b) + z (s·B)ᵀ, the first term exactly as peft's frozen layer computes it (``F.linear``);
* backward: dz = dy (s·B), dx = dy W + dz A, dA = dzᵀ x, dB = dyᵀ (s·z). The frozen W and bias get no gradient.

The maths is peft's exactly (dL/dx = dy W + s·dy B A, dL/dA = s·(dy B)ᵀ x, dL/dB = s·dyᵀ (x Aᵀ)). The rounding
differs: s is applied to B and to z (small tensors) instead of to the (M, N) product and gradient; the LoRA
product is computed in the autocast dtype even without autocast (peft computes it in the LoRA weights' fp32);
and dx's two terms are summed in the compute dtype before the cast back to x's dtype.
tests/training/test_fused_lora.py bounds the differences against peft's layer, with the trainer's dtypes (bf16
frozen weights, fp32 LoRA weights, bf16 autocast). One GEMM against the stacked weights [W; A] (one read of x for
both products) was tried and measured slower: cuBLAS tiles an output of N + r columns worse than one of N
(docs/experiments.md, "Fused LoRA layers, first version").

The layers stay peft's (modules, parameters, state-dict keys, adapter switch): :func:`install_fused_lora` only
replaces the ``forward`` of each layer it can stand in for (plain LoRA on a frozen ``nn.Linear``: no dropout, no
DoRA or other variant, no LoRA bias) by one that takes the fused route while the adapter is on, and peft's own
forward otherwise (the reference pass, adapters off, runs the frozen layer as before).
"""

from __future__ import annotations

import types

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from training.lora import ADAPTER_NAME, lora_layers


def fused_lora_blockers(dropout: float, use_dora: bool) -> list[str]:
    """Why the fused layers cannot stand in for peft's with these LoRA settings (empty: they can)."""
    blockers = []
    if dropout > 0:
        blockers.append(f"lora.dropout={dropout:g} (the fused layer has no dropout on the LoRA input)")
    if use_dora:
        blockers.append("lora.use_dora (DoRA rescales the weight norm; the fused layer is plain LoRA)")
    return blockers


class FusedLoraLinear(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ with the frozen W, b and the trainable A, B (module docstring).

    x: (..., K); weight: (N, K); bias: (N,) or None; lora_a: (r, K); lora_b: (N, r); scaling: float;
    compute_dtype: the products' dtype (autocast's under autocast, as peft's layer computes under the trainer's
    autocast). The gradients of A and B come back in their own dtype (fp32 in the trainer).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, compute_dtype: torch.dtype):
        rows = x.reshape(-1, x.shape[-1]).to(compute_dtype)  # (M, K)
        weight = weight.to(compute_dtype)
        a = lora_a.to(compute_dtype)
        scaled_b = (scaling * lora_b).to(compute_dtype)  # (N, r)
        z = rows @ a.t()  # (M, r)
        base = torch.nn.functional.linear(rows, weight, None if bias is None else bias.to(compute_dtype))
        y = base + z @ scaled_b.t()
        ctx.save_for_backward(rows, z * scaling, weight, a, scaled_b)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        # Autograd casts the returned gradients of A and B to their parameters' dtype (fp32 in the trainer).
        rows, scaled_z, weight, a, scaled_b = ctx.saved_tensors
        dy = grad_y.reshape(-1, weight.shape[0]).to(rows.dtype)  # (M, N)
        dz = dy @ scaled_b  # s·dy B: (M, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dy @ weight + dz @ a).to(ctx.x_dtype).reshape(ctx.x_shape)
        grad_a = dz.t() @ rows  # (r, K)
        grad_b = dy.t() @ scaled_z  # s·dyᵀ z: (N, r)
        return grad_x, None, None, grad_a, grad_b, None, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``layer.forward`` after :func:`install_fused_lora`: the fused route while the adapter is on."""
    if layer.disable_adapters or layer.merged or args or kwargs or layer.active_adapters != [ADAPTER_NAME]:
        return type(layer).forward(layer, x, *args, **kwargs)
    base = layer.base_layer
    return FusedLoraLinear.apply(
        x, base.weight, base.bias, layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight,
        float(layer.scaling[ADAPTER_NAME]), _compute_dtype(x),
    )


def can_fuse(layer) -> bool:
    """Whether :class:`FusedLoraLinear` computes what peft's ``layer`` computes: plain LoRA (no dropout, no
    variant such as DoRA, no LoRA bias) of the trainer's one adapter on a frozen ``nn.Linear``."""
    base = getattr(layer, "base_layer", None)
    return (
        type(layer) is LoraLinear
        and isinstance(base, torch.nn.Linear)
        and not any(p.requires_grad for p in base.parameters())
        and list(layer.lora_A) == [ADAPTER_NAME]
        and not layer.lora_variant
        and isinstance(layer.lora_dropout[ADAPTER_NAME], torch.nn.Identity)
        and layer.lora_B[ADAPTER_NAME].bias is None
    )


def install_fused_lora(unet: torch.nn.Module) -> int:
    """Route every LoRA layer of ``unet`` that :func:`can_fuse` through :class:`FusedLoraLinear`; return how many.
    The others (LoRA on convolutions, dropout, DoRA, ...) keep peft's forward.

    Call after ``add_lora`` (and ``init_lora_from``) and before ``compile_unet``."""
    count = 0
    for layer in lora_layers(unet):
        if can_fuse(layer):
            layer.forward = types.MethodType(_fused_forward, layer)
            count += 1
    return count
