"""Measuring: FLOP counting, device peak, steady-state timing, peak memory, environment facts.

Timing rules (see docs/performance.md): warm-up steps first (compilation, cuDNN autotuning and
allocator growth stay out), then one device synchronise, then a timed window of ``steps`` calls
with a synchronise only at its end, so the host never stalls the device inside the window.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import accelerate
import diffusers
import peft
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds_per_call: float  # median over repeats of (window seconds / calls in window)
    repeats: list  # each repeat's seconds per call
    calls: int


def time_steady_state(fn: Callable[[], object], device, warmup: int, steps: int, repeats: int = 3) -> Timing:
    """Median seconds per call of ``fn`` over ``repeats`` windows of ``steps`` calls each."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        synchronize(device)
        per_call.append((time.perf_counter() - start) / steps)
    return Timing(statistics.median(per_call), per_call, steps * repeats)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    It counts matrix products, convolutions and scaled-dot-product attention (forward and backward;
    2 FLOPs per multiply-add); element-wise work (norms, activations, the optimiser) is not counted.
    Run ``fn`` uncompiled: the count is a property of the maths, which compilation does not change.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_peak(device, size: int = 8192, repeats: int = 20) -> float:
    """Achieved dense bf16 FLOP/s of a ``size``^3 matrix product on random data (the MFU denominator)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    if torch.device(device).type == "cuda":
        # Event timing of a batch of products: host launch overhead excluded.
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeats):
            a @ b
        end.record()
        end.synchronize()
        return 2 * size**3 * repeats / (begin.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(times)


@contextlib.contextmanager
def peak_memory(device):
    """Yields a dict filled on exit with ``peak_gib`` (max allocated on the device inside the block)."""
    result = {"peak_gib": float("nan")}
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        if is_cuda:
            synchronize(device)
            result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(device) -> dict:
    """GPU name and software versions, for the results file."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "device": str(device),
        "host": platform.node(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            multiprocessors=props.multi_processor_count,
        )
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip().splitlines()[0]
    else:
        info["gpu_name"] = f"CPU ({platform.processor() or platform.machine()})"
    return info
