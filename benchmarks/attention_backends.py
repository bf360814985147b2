"""Time torch's SDPA backends at the UNet's own attention shapes (what limits SD1.5's attention).

SD1.5's heads are 40/80/160 wide (8 heads at 320/640/1280 channels); the flash kernel pads 40 to 64. This
times forward and forward+backward of every backend that accepts a shape, in bf16, and checks each output
and its gradients against an fp32 reference. ``--unet`` also lists the attention kernels a real SD1.5 UNet
forward+backward launches (eager and torch.compile), under torch's own order and with cuDNN first. Run on the
GPU machine:

    python -m benchmarks.attention_backends --unet --out $OUT/attention.json

Finding (docs/experiments.md, "Attention backends"): torch 2.11 on an H100/H200 already runs cuDNN's fused
attention in the UNet, eager and compiled, so the 1.7x of cuDNN over flash is already in every figure.

Shapes per image (B = images per UNet call): self-attention (B, heads, tokens, head_dim) and
cross-attention to 77 text tokens, at each latent resolution that has transformer blocks, with the
number of such layers per UNet forward (SD1.5: 2 down + 3 up at 64², 32², 16²; 1 mid at 8²).
"""

from __future__ import annotations

import argparse
import json
import warnings
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.backends.cuda import SDPAParams, can_use_cudnn_attention
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from benchmarks.architectures import SD15_UNET

# (name, heads, query tokens, key tokens, head_dim, layers per UNet forward)
SD15_SHAPES = [
    ("sd15-self-64", 8, 4096, 4096, 40, 5), ("sd15-cross-64", 8, 4096, 77, 40, 5),
    ("sd15-self-32", 8, 1024, 1024, 80, 5), ("sd15-cross-32", 8, 1024, 77, 80, 5),
    ("sd15-self-16", 8, 256, 256, 160, 5), ("sd15-cross-16", 8, 256, 77, 160, 5),
    ("sd15-self-8", 8, 64, 64, 160, 1), ("sd15-cross-8", 8, 64, 77, 160, 1),
]
# SDXL at 1024 px: 64² (2 + 3 blocks × 2 transformer layers) and 32² (2 + 3 blocks × 10 layers + mid 10)
SDXL_SHAPES = [
    ("sdxl-self-64", 10, 4096, 4096, 64, 10), ("sdxl-cross-64", 10, 4096, 77, 64, 10),
    ("sdxl-self-32", 20, 1024, 1024, 64, 60), ("sdxl-cross-32", 20, 1024, 77, 64, 60),
]
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def measure(shape, batch: int) -> dict:
    name, heads, q_len, k_len, dim, layers = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
               for n in (q_len, k_len, k_len))
    grad_out = torch.randn(batch, heads, q_len, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    q32, k32, v32 = (t.float().requires_grad_(True) for t in (q, k, v))
    reference = F.scaled_dot_product_attention(q32, k32, v32)
    reference.backward(grad_out.float())
    reference = reference.detach()
    row = {"shape": name, "batch": batch, "heads": heads, "q_len": q_len, "k_len": k_len, "head_dim": dim,
           "layers_per_forward": layers}
    for label, backend in BACKENDS.items():
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qg, kg, vg)
                fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v))

                def fwd_bwd():
                    o = F.scaled_dot_product_attention(qg, kg, vg)
                    o.backward(grad_out)

                fwd_bwd_ms = time_ms(fwd_bwd)
        except RuntimeError as error:
            row[label] = {"error": str(error).splitlines()[0][:160]}
            continue
        # gradients of one backward (the timed ones accumulated into .grad: take a fresh one)
        qg.grad = kg.grad = vg.grad = None
        with sdpa_kernel([backend]):
            F.scaled_dot_product_attention(qg, kg, vg).backward(grad_out)
        rel_err = ((out.float() - reference).norm() / reference.norm()).item()
        grad_err = max(((g.grad.float() - r.grad).norm() / r.grad.norm()).item()
                       for g, r in ((qg, q32), (kg, k32), (vg, v32)))
        row[label] = {"fwd_ms": round(fwd, 4), "fwd_bwd_ms": round(fwd_bwd_ms, 4), "rel_err_vs_fp32": rel_err,
                      "grad_rel_err_vs_fp32": grad_err}
    return row


def attention_kernels(fn) -> dict[str, int]:
    """Names (with counts) of the GPU kernels ``fn`` launches that look like attention kernels."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names: dict[str, int] = {}
    for event in prof.events():
        name = event.name
        if any(word in name.lower() for word in ("flash", "fmha", "attention", "sdpa")):
            names[name[:90]] = names.get(name[:90], 0) + 1
    return names


def cudnn_refusals() -> list[str]:
    """Why torch would not pick cuDNN for diffusers-laid-out inputs ((B, S, H, D) viewed as (B, H, S, D)),
    with and without grad: the warnings of ``can_use_cudnn_attention(debug=True)``."""
    notes = []
    for requires_grad in (False, True):
        q, k, v = (torch.randn(4, n, 8, 40, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                   .requires_grad_(requires_grad) for n in (4096, 77, 77))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ok = can_use_cudnn_attention(SDPAParams(q, k, v, None, 0.0, False, False), True)
            except Exception as error:  # noqa: BLE001 - the signature differs between torch versions
                ok = f"error: {error}"
        notes.append(f"grad={requires_grad}: can_use={ok}; " + " | ".join(str(w.message)[:200] for w in caught))
    return notes


def probe_unet(batch: int) -> list[dict]:
    """The SD1.5 UNet (random init, bf16, 512 px latents): forward+backward time and the attention kernels it
    launches under torch's own order and with cuDNN first, eager and with torch.compile (a fresh compile per
    order: the kernel is chosen while tracing)."""
    orders = {"default": nullcontext, "cudnn_first": lambda: sdpa_kernel(
        [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        set_priority=True)}

    torch._dynamo.config.cache_size_limit = 64
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    sample = torch.randn(batch, 4, 64, 64, device="cuda", generator=gen, dtype=torch.bfloat16)
    text = torch.randn(batch, 77, 768, device="cuda", generator=gen, dtype=torch.bfloat16)
    t = torch.full((batch,), 500, device="cuda")
    for compiled in (False, True):
        for order_name in orders:
            unet = UNet2DConditionModel(**SD15_UNET).to("cuda", torch.bfloat16)
            x = sample.clone().requires_grad_(True)  # grads flow to the input as a frozen base model's would
            forward = torch.compile(unet, fullgraph=True) if compiled else unet

            def step():
                out = forward(x, t, encoder_hidden_states=text, return_dict=False)[0]
                out.float().square().mean().backward()

            with orders[order_name]():
                seconds = time_ms(step, repeats=5) / 1e3
                kernels = attention_kernels(step)
            rows.append({"compiled": compiled, "attention": order_name,
                         "fwd_bwd_ms_per_image": 1e3 * seconds / batch, "attention_kernels": kernels})
            print(f"unet compiled={compiled} attention={order_name}: {1e3 * seconds:.1f} ms fwd+bwd "
                  f"({batch} images); kernels {kernels}", flush=True)
            del unet, forward
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="attention_backends.json")
    parser.add_argument("--sd15-batch", type=int, default=64, help="images per UNet call (mb32 pairs = 64)")
    parser.add_argument("--sdxl-batch", type=int, default=8)
    parser.add_argument("--unet", action="store_true", help="also probe the SD1.5 UNet, eager and compiled")
    parser.add_argument("--unet-only", action="store_true")
    args = parser.parse_args()
    if args.unet or args.unet_only:
        for note in cudnn_refusals():
            print("cudnn check:", note, flush=True)
        unet_rows = probe_unet(batch=16)
        if args.unet_only:
            with open(args.out, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "unet": unet_rows}, f,
                          indent=1)
            return
    rows = [measure(s, args.sd15_batch) for s in SD15_SHAPES] + [measure(s, args.sdxl_batch) for s in SDXL_SHAPES]
    totals = {}
    for row in rows:
        arch = row["shape"].split("-")[0]
        for label in BACKENDS:
            if "fwd_ms" in row.get(label, {}):
                t = totals.setdefault(arch, {}).setdefault(label, {"fwd_ms": 0.0, "fwd_bwd_ms": 0.0})
                t["fwd_ms"] += row[label]["fwd_ms"] * row["layers_per_forward"]
                t["fwd_bwd_ms"] += row[label]["fwd_bwd_ms"] * row["layers_per_forward"]
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  cudnn {torch.backends.cudnn.version()}")
    for row in rows:
        cells = []
        for label in BACKENDS:
            r = row.get(label, {})
            cells.append(f"{label} " + (f"{r['fwd_ms']:.3f}/{r['fwd_bwd_ms']:.3f} ms err {r['rel_err_vs_fp32']:.1e}"
                                        f" grad {r['grad_rel_err_vs_fp32']:.1e}"
                                        if "fwd_ms" in r else "n/a"))
        print(f"{row['shape']:14s} B={row['batch']:3d} d={row['head_dim']:3d}  " + " | ".join(cells))
    print("per UNet forward (sum over layers; fwd / fwd+bwd ms):", json.dumps(totals, indent=1))
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "rows": rows, "totals_ms": totals}, f, indent=1)


if __name__ == "__main__":
    main()
