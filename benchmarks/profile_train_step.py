"""Where the GPU time of one real trainer step goes (measure before changing).

Runs the project's trainer (``training.train.train``, the same call as ``make train`` and the bench) on the
bench's random-init architecture and synthetic set, and records a few steady-state optimiser steps with
torch.profiler. The profiler is stepped at the start of every optimiser step by the trainer's ProfilerSteps
callback (training/callbacks.py), so its schedule counts optimiser steps. Prints GPU time per step by kernel
category and the top kernels, and writes both as JSON:

    python -m benchmarks.profile_train_step --arch sd15 --micro-batch 32 --compile full --out $OUT/profile.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from benchmarks.bench import prepare_arch
from benchmarks.config import BenchConfig
from benchmarks.train_bench import TrainPoint, run_trainer, trainer_kernels, trainer_overrides
from core.config import apply_overrides
from training.callbacks import ProfilerSteps

# First match wins; the names are those of the kernels nsys/torch.profiler report on Hopper. Inductor's kernels
# come first: they are named after the ops they fuse (triton_poi_fused_..._convolution_native_group_norm_silu
# is a group norm + SiLU, not a convolution).
CATEGORIES = [
    ("matmul (inductor Triton templates)", r"^triton_tem"),
    ("triton (fused element-wise, norms)", r"^triton_"),
    ("attention", r"sdpa|fmha|flash|attention|dot_do_o|convert_dq"),  # the last two: cuDNN attention backward
    ("layout transpose", r"nchwToNhwc|nhwcToNchw|tensorTransform"),
    ("convolution", r"fprop|dgrad|wgrad|conv|implicit_gemm"),
    ("matmul (cuBLAS/CUTLASS)", r"gemm|xmma|cutlass|sm90_|nvjet|ampere_|sm80_"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("copies and fills", r"memcpy|memset|copy|fill|elementwise|vectorized|reduce|cat"),
]


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label
    return "other"


def kernel_ms(events, on_gpu: bool) -> dict[str, float]:
    """Milliseconds per kernel name in torch.profiler ``events``: GPU kernels and copies on a GPU, top-level CPU
    ops on a CPU smoke run."""
    device_type = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    kernels: dict[str, float] = {}
    for event in events:
        # "ProfilerStep#N" spans the whole step on the GPU timeline too: a range, not a kernel.
        if event.name.startswith("ProfilerStep"):
            continue
        if event.device_type == device_type and (on_gpu or event.cpu_parent is None):
            time_us = event.device_time_total if on_gpu else event.cpu_time_total
            kernels[event.name] = kernels.get(event.name, 0.0) + time_us / 1e3
    return kernels


def ms_by_category(kernels: dict[str, float]) -> dict[str, float]:
    by_category: dict[str, float] = {}
    for name, ms in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    return by_category


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--compile", default="full", choices=["none", "regions", "full"])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up steps)")
    parser.add_argument("--warmup-steps", type=int, default=6)
    parser.add_argument("--work", default="/tmp/profile-work")
    parser.add_argument("--out", default="profile_train_step.json")
    parser.add_argument("--extra", nargs="*", default=[], help="more train overrides, key=value")
    args = parser.parse_args()

    work = Path(args.work)
    on_gpu = torch.cuda.is_available()  # without one: a smoke run of this script on the tiny models
    model_dir, data_dir = prepare_arch(BenchConfig(scale="full" if on_gpu else "tiny"), args.arch, work,
                                       "cuda" if on_gpu else "cpu")
    point = TrainPoint(args.micro_batch, False, "fast", regional_compile=args.compile == "regions",
                       full_compile=args.compile == "full")
    total = args.warmup_steps + 1 + args.steps
    # The project's key=value overrides (YAML values, dotted keys, a clear error for a malformed one).
    section = apply_overrides(trainer_overrides(point, model_dir, data_dir, work / "train", total, total, {}),
                              args.extra)

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else []),
                   schedule=schedule(wait=args.warmup_steps, warmup=1, active=args.steps))
    with prof:
        summary = run_trainer(section, trainer_kernels(point), callbacks=[ProfilerSteps(prof)])
        if on_gpu:
            torch.cuda.synchronize()

    per_step = {name: ms / args.steps for name, ms in kernel_ms(prof.events(), on_gpu).items()}
    by_category = ms_by_category(per_step)
    gpu_ms = max(sum(per_step.values()), 1e-9)
    pairs = args.micro_batch
    device_name = torch.cuda.get_device_name() if on_gpu else "CPU (tiny models: a smoke run)"
    print(f"{device_name} | {args.arch} mb{args.micro_batch} compile={args.compile} | "
          f"GPU kernel time {gpu_ms:.1f} ms/step = {1e3 * pairs / gpu_ms:.1f} pairs/s if back to back; "
          f"trainer measured {summary.get('pairs_per_s', float('nan')):.1f} pairs/s (incl. warm-up)")
    for label, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
        print(f"  {label:38s} {ms:8.1f} ms/step  {100 * ms / gpu_ms:5.1f}%")
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:40]
    for name, ms in top:
        print(f"  {ms:7.2f} ms  {category(name)[:12]:12s} {name[:110]}")
    with open(args.out, "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "args": vars(args),
                   "gpu_ms_per_step": gpu_ms, "by_category_ms": by_category,
                   "top_kernels_ms": top, "trainer_summary": summary}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
