"""Fused LoRA linear layers for the compiled trainer (``train.fused_lora``).

peft's LoRA ``Linear`` computes ``y = base(x) + lora_B(lora_A(x)) * s`` as separate operations. At the image-token
layers of a diffusion UNet these are memory-bound: SD1.5's 64×64 level has M = 96 × 4096 rows of 320 features per
policy forward (micro-batch 48, winner and loser), so every extra pass over an (M, 320) bf16 tensor moves 252 MB,
about 85 µs of HBM time on an H100. Per LoRA layer peft's graph makes about five extra passes forward (a second
read of x for lora_A, the (M, N) output of lora_B written and read back, the sum written) and about seven
backward (the scaled output gradient, its reads by lora_B's two gradient products, lora_A's input gradient
written and summed) on top of what the frozen layer needs.

:class:`FusedLoraLinear` computes the same function with fewer passes (A: (r, K), B: (N, r), s = alpha / r):

* forward: one GEMM against the stacked weight [W; A] (N + r, K) gives x Wᵀ and z = x Aᵀ in one read of x; the
  rank-r term s·z Bᵀ is a sum of r products per output element that inductor fuses with the bias and with
  whatever consumes y (the residual add after ``to_out``), so the (M, N) LoRA output is never materialised;
* backward: one GEMM against [W, s·B] (N, K + r) gives dy W and dz = s·dy B in one read of dy;
  dx = dy W + dz A (again a fused rank-r term), dA = dzᵀ x, dB = s·dyᵀ z.

The maths is peft's exactly: dL/dx = dy W + s·dy B A, dL/dA = s·(dy B)ᵀ x, dL/dB = s·dyᵀ (x Aᵀ); the frozen W and
bias get no gradient. Only the rounding differs (the rank-r term is summed in fp32 inside one kernel instead of
being rounded to bf16 between the products), which tests/training/test_fused_lora.py bounds against peft's layer.

The layers stay peft's (same modules, parameters, state-dict keys, adapter switch): :func:`install_fused_lora`
only replaces each layer's ``forward`` by one that takes the fused route while the adapter is on, and peft's own
forward otherwise (the reference pass with adapters off runs the frozen layer exactly as before).
"""

from __future__ import annotations

import types

import torch

from training.lora import ADAPTER_NAME, lora_layers

# The largest rank whose r-term sum is unrolled into the fused element-wise kernel (the trainer's default is 8).
MAX_FUSED_RANK = 32


def fused_lora_blockers(rank: int, dropout: float, use_dora: bool) -> list[str]:
    """Why the fused layers cannot stand in for peft's with these LoRA settings (empty: they can)."""
    blockers = []
    if dropout > 0:
        blockers.append(f"lora.dropout={dropout:g} (the fused layer has no dropout on the LoRA input)")
    if use_dora:
        blockers.append("lora.use_dora (DoRA rescales the weight norm; the fused layer is plain LoRA)")
    if rank > MAX_FUSED_RANK:
        blockers.append(f"lora.rank={rank} > {MAX_FUSED_RANK} (the fused layer sums the rank-r term element by "
                        "element, one term per rank: meant for small ranks)")
    return blockers


def low_rank_term(z: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """z @ factorᵀ for a small inner size r: z (M, r), factor (N, r) -> (M, N).

    Under torch.compile it is written as r element-wise products summed in fp32 (r ≤ MAX_FUSED_RANK), which
    inductor fuses into the surrounding element-wise kernel: no (M, N) GEMM output and no reduction buffer in
    memory. Eagerly that form would make r passes over (M, N), so the eager path is a plain matrix product."""
    if torch.compiler.is_compiling():
        total = z[:, 0:1].float() * factor[:, 0].float()
        for j in range(1, z.shape[1]):
            total = total + z[:, j:j + 1].float() * factor[:, j].float()
        return total
    return z @ factor.t()


class FusedLoraLinear(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ with the frozen W, b and the trainable A, B (module docstring).

    x: (..., K); weight: (N, K); bias: (N,) or None; lora_a: (r, K); lora_b: (N, r); scaling: float.
    The products run in ``compute_dtype`` (autocast's dtype under autocast, else x's), as peft's layer does
    under the trainer's autocast; the gradients of A and B come back in their own dtype (fp32 in the trainer).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, compute_dtype: torch.dtype):
        rows = x.reshape(-1, x.shape[-1]).to(compute_dtype)  # (M, K)
        weight = weight.to(compute_dtype)
        a, b = lora_a.to(compute_dtype), lora_b.to(compute_dtype)
        out_features, rank = weight.shape[0], a.shape[0]
        stacked = torch.cat([weight, a])  # (N + r, K): one read of x for both products
        base, z = (rows @ stacked.t()).split([out_features, rank], dim=1)  # (M, N), (M, r)
        y = base + scaling * low_rank_term(z, b)
        if bias is not None:
            y = y + bias.to(compute_dtype)
        ctx.save_for_backward(rows, z, weight, a, b)
        ctx.scaling = scaling
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y.to(compute_dtype).reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad_y):
        rows, z, weight, a, b = ctx.saved_tensors
        dy = grad_y.reshape(-1, weight.shape[0]).to(rows.dtype)  # (M, N)
        in_features, rank = weight.shape[1], a.shape[0]
        # [dy W | s·dy B] in one read of dy: (M, K + r)
        dx_base, dz = (dy @ torch.cat([weight, ctx.scaling * b], dim=1)).split([in_features, rank], dim=1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dx_base + low_rank_term(dz, a.t())).to(ctx.x_dtype).reshape(ctx.x_shape)
        grad_a = (dz.t() @ rows).to(ctx.a_dtype)  # (r, K)
        grad_b = (ctx.scaling * (dy.t() @ z)).to(ctx.b_dtype)  # (N, r)
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
