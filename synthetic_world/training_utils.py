"""Small helpers shared by the synthetic world's trainers (base model and CLIP).

Checkpoints for resuming a stage are safetensors only: model weights, EMA weights and the AdamW
state tensors are flattened into one file, the step counter and hyper-parameters into JSON.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from core.io import atomic_write_bytes, atomic_write_json


def hardware_name(device: torch.device) -> str:
    """GPU name, or the CPU model name from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass

    return f"CPU: {platform.processor() or platform.machine()}"


def autocast(device: torch.device):
    """bf16 autocast on GPU; a no-op context on CPU (tiny CPU runs stay in fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LambdaLR factor: linear warm-up, then cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Ema:
    """Exponential moving average of a set of parameters (shadow copies in fp32)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Warm-up of the decay (as in diffusers' EMAModel) so early weights do not dominate.
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for target, value in zip(params, self.shadow):
            target.copy_(value.to(target.dtype))


class Deadline:
    """Wall-clock budget of one command; a stage checkpoints and stops when it is spent."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def passed(self) -> bool:
        return self.elapsed() > self.seconds


def save_checkpoint(folder: Path, step: int, modules: dict, optimizer, emas: dict, extra: dict) -> None:
    """Write ``state.safetensors`` (weights, EMA, AdamW moments) and ``state.json`` (step, extra)."""
    tensors = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().contiguous().cpu()
    for name, ema in emas.items():
        for i, value in enumerate(ema.shadow):
            tensors[f"ema.{name}.{i}"] = value.contiguous().cpu()
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "state.safetensors", save(tensors))
    atomic_write_json(folder / "state.json", {"step": step, **extra})


def load_checkpoint(folder: Path, modules: dict, optimizer, emas: dict) -> dict | None:
    """Restore what :func:`save_checkpoint` wrote; None when there is no checkpoint."""
    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return None
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, ema in emas.items():
        ema.shadow = [tensors[f"ema.{name}.{i}"].to(ema.shadow[i].device) for i in range(len(ema.shadow))]
    opt_state = optimizer.state_dict()
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return meta
