"""Fused LoRA linear layers for the compiled trainer (``train.fused_lora``).

peft's LoRA ``Linear`` computes ``y = base(x) + lora_B(lora_A(dropout(x))) * s`` as separate modules. Traced under
the trainer's bf16 autocast, its graph holds element-wise passes that do none of the LoRA's arithmetic: x cast to
the fp32 LoRA weights' dtype and back, the output gradient multiplied by s before lora_B's products, a device
copy. At a UNet's image-token layers each such pass over an (M, N) bf16 activation is pure memory traffic:
SD1.5's 64x64 level has M = 96 x 4096 rows of 320 features per policy forward (micro-batch 48, winner and loser),
252 MB per pass, about 85 µs of HBM time on an H100 (benchmarks/lora_layer.py lists the kernels).

:class:`FusedLoraLinear` computes the same function as one autograd node whose forward and backward run only the
products the maths needs, in the autocast dtype (A: (r, K), B: (N, r), s = alpha / r, z = x Aᵀ: (M, r)):

* forward: y = x Wᵀ + b + z (s·B)ᵀ;
* backward: dz = dy (s·B), dx = dy W + dz A, dA = dzᵀ x, dB = s·dyᵀ z. The frozen W and bias get no gradient.

The maths is peft's exactly (dL/dx = dy W + s·dy B A, dL/dA = s·(dy B)ᵀ x, dL/dB = s·dyᵀ (x Aᵀ)); only the rounding
differs (s is applied to B before its product instead of to the product), which tests/training/test_fused_lora.py
bounds against peft's layer. One GEMM against the stacked weights [W; A] (one read of x for both products) was
tried and measured slower: cuBLAS tiles an output of N + r columns worse than one of N (docs/performance.md,
session 12). The layers stay peft's (modules, parameters, state-dict keys, adapter switch): :func:`install_fused_lora`
only replaces each layer's ``forward`` by one that takes the fused route while the adapter is on and peft's own
forward otherwise (the reference pass, adapters off, runs the frozen layer as before).
"""

from __future__ import annotations

import types

import torch

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
        y = rows @ weight.t() + z @ scaled_b.t()
        if bias is not None:
            y = y + bias.to(compute_dtype)
        ctx.save_for_backward(rows, z, weight, a, scaled_b)
        ctx.scaling = scaling
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        rows, z, weight, a, scaled_b = ctx.saved_tensors
        dy = grad_y.reshape(-1, weight.shape[0]).to(rows.dtype)  # (M, N)
        dz = dy @ scaled_b  # s·dy B: (M, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dy @ weight + dz @ a).to(ctx.x_dtype).reshape(ctx.x_shape)
        grad_a = (dz.t() @ rows).to(ctx.a_dtype)  # (r, K)
        grad_b = ((dy.t() @ z) * ctx.scaling).to(ctx.b_dtype)  # (N, r)
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


def install_fused_lora(unet: torch.nn.Module) -> int:
    """Route every peft LoRA ``Linear`` of ``unet`` through :class:`FusedLoraLinear`; return how many.

    Call after ``add_lora`` (and ``init_lora_from``) and before ``compile_unet``. Other LoRA layer kinds (e.g.
    convolutions, if targeted) keep peft's forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for layer in lora_layers(unet):
        if type(layer) is LoraLinear and isinstance(layer.base_layer, torch.nn.Linear):
            layer.forward = types.MethodType(_fused_forward, layer)
            count += 1
    return count
