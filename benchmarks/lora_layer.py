"""Cost of one LoRA linear layer, forward + backward, compiled, at the shapes of a UNet's image-token projections.

Times ``y = layer(x) + residual`` (the residual add is where inductor can fuse element-wise epilogues, as after
an attention block's ``to_out``) under bf16 autocast with the trainer's dtypes (frozen bf16 weights, fp32 LoRA
weights), for each variant:

* ``frozen``: the plain frozen layer, x requiring grad (what the layer costs without LoRA: the floor);
* ``peft``: peft's LoRA ``Linear`` (what the trainer runs with ``fused_lora: off``);
* ``fused``: training/fused_lora.py (``train.fused_lora``).

Prints the GPU kernel time of one forward + backward (torch.profiler: the wall time of such small steps is the
host's launch time as much as the GPU's), the wall time, and the top kernels of each variant; writes JSON:

    python -m benchmarks.lora_layer --arch sd15 --out $OUT/lora_layer.json
"""

from __future__ import annotations

import argparse
import json

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch.profiler import ProfilerActivity, profile

from benchmarks.measure import synchronize, time_steady_state
from benchmarks.profile_train_step import kernel_ms
from training.fused_lora import install_fused_lora

# (rows, in, out) of the image-token projections per policy forward. SD1.5 at 512 px, 96 images (micro-batch 48,
# winner and loser): its 64x64, 32x32 and 16x16 token levels. SDXL at 1024 px, 8 images (micro-batch 4): its
# 64x64 and 32x32 levels (the 128x128 level has no attention).
SHAPES = {
    "sd15": [(96 * 4096, 320, 320), (96 * 1024, 640, 640), (96 * 256, 1280, 1280)],
    "sdxl": [(8 * 4096, 640, 640), (8 * 1024, 1280, 1280)],
    "tiny": [(64, 16, 16)],  # a CPU smoke run of this script (tests/benchmarks/test_lora_layer.py)
}
VARIANTS = ["frozen", "peft", "fused"]


def build_layer(variant: str, in_features: int, out_features: int, rank: int, device, dtype):
    """A frozen ``dtype`` linear layer, with a peft LoRA (fp32, B non-zero) unless ``variant`` is frozen."""
    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(in_features, out_features)
    holder.requires_grad_(False)
    if variant != "frozen":
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"], init_lora_weights="gaussian")
        holder = inject_adapter_in_model(config, holder, adapter_name="default")
        for name, p in holder.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.01)
    holder.to(device)
    for name, p in holder.named_parameters():
        p.data = p.data.float() if "lora_" in name else p.data.to(dtype)
    if variant == "fused":
        install_fused_lora(holder)
    return holder


def make_step(holder, rows: int, in_features: int, out_features: int, device, dtype):
    x = torch.randn(rows, in_features, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn(rows, out_features, device=device, dtype=dtype)
    grad = torch.randn(rows, out_features, device=device, dtype=dtype)

    def forward(inp, res):
        return holder.proj(inp) + res

    compiled = torch.compile(forward, fullgraph=True, dynamic=False)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            out = compiled(x, residual)
        out.backward(grad)
        x.grad = None
        for p in holder.parameters():
            p.grad = None

    return step


def kernels_per_call(step, device) -> dict[str, float]:
    """Milliseconds per kernel name (GPU kernels; top-level ops on a CPU) for one call of ``step``
    (torch.profiler over 3 calls)."""
    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        for _ in range(3):
            step()
        synchronize(device)
    return {name: ms / 3 for name, ms in kernel_ms(prof.events(), on_gpu=on_gpu).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd15", choices=sorted(SHAPES))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", default="lora_layer.json")
    args = parser.parse_args(argv)

    device, dtype = torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.bfloat16
    results = []
    for rows, in_features, out_features in SHAPES[args.arch]:
        for variant in args.variants:
            torch._dynamo.reset()
            holder = build_layer(variant, in_features, out_features, args.rank, device, dtype)
            step = make_step(holder, rows, in_features, out_features, device, dtype)
            timing = time_steady_state(step, device, warmup=3, steps=20)
            kernels = kernels_per_call(step, device)
            top = sorted(kernels.items(), key=lambda kv: -kv[1])[:10]
            record = {"rows": rows, "in": in_features, "out": out_features, "variant": variant,
                      "ms_fwd_bwd": 1e3 * timing.seconds_per_call, "gpu_kernel_ms": sum(kernels.values()),
                      "top_kernels_ms": top}
            results.append(record)
            print(f"{rows:7d} x {in_features:4d} -> {out_features:4d}  {variant:7s} GPU kernels "
                  f"{record['gpu_kernel_ms']:7.3f} ms, wall {record['ms_fwd_bwd']:7.3f} ms", flush=True)
            for name, ms in top:
                print(f"      {ms:6.3f} ms  {name[:100]}")
            del holder, step
    with open(args.out, "w") as f:
        device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        json.dump({"device": device_name, "torch": torch.__version__, "arch": args.arch, "rank": args.rank,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
