"""CUDA-graph capture of the whole training step (``train.cuda_graph``).

Why: on the synthetic demo (16 pairs + 4 retain images of 16×16 latents, a 4.3M-parameter UNet) an optimiser
step took ~160 ms on an H100, nearly all of it Python and kernel launches (two UNet forwards of ~600 module calls
each and one backward; docs/performance.md) around a few ms of GPU arithmetic. Every tensor of the step has a
fixed shape, so the step is captured once and then replayed: one graph launch per step.

What one replay does (the eager step's code, run once under capture): for each micro-step the gathers from the
on-device latent cache, the reference forward (LoRA switched off through training/lora.py's cached layer list: a
Python flag read while capturing, so the graph holds the reference kernels without the LoRA ones and the policy
kernels with them), the policy forward (with the trained text encoder's, when there is one), the DPO loss and
retain anchor, the backward; then gradient clipping and the AdamW update. The step's draws (pair indices, noise,
timesteps, prompt-dropout flags; the retain draws) are drawn on the host exactly as in the eager step and copied
into static input tensors before each replay (training/step.py: copy_draws_); the metrics and the pre-clipping
gradient norm come out as one static (M,) tensor that ``MetricAccumulator.add_vector`` adds into a sum of its own
on the device.

It follows PyTorch's whole-network capture recipe (torch.cuda graph notes, "Whole-network capture"):

* warm-up: the first ``warmup_steps`` steps run eagerly on a side stream. They are real steps with the real
  draws (the step sequence is the eager run's); they create the optimiser state and the lazily made
  cuBLAS/cuDNN state before anything is captured.
* grads: ``optimizer.zero_grad(set_to_none=True)`` just before capturing, so the captured backward allocates the
  gradients from the graph's memory pool and every replay writes them afresh. With gradient accumulation the later
  micro-steps' backward adds into them in place, inside the same graph. Nothing outside the graph touches
  ``.grad`` after the capture.
* optimiser: AdamW is built with ``capturable=True`` (torch refuses to capture ``step()`` otherwise; it stays fused
  where the eager step is fused). The learning rate the graph reads is a 1-element float32 device tensor per
  param group, refilled from the scheduler's float before every step (a fill kernel, no sync). The LR scheduler
  and the checkpoints keep a plain float lr: torch's LRScheduler would fill a tensor lr in place
  (``_update_param_group_val``), but its ``state_dict`` and the optimiser's ``param_groups`` would then hold
  tensors, which ``state.json`` cannot store.
* autocast without its cast cache: the trainer builds the Accelerator with ``AutocastKwargs(cache_enabled=False)``,
  which reaches both ``accelerator.autocast()`` and the autocast that ``accelerator.prepare`` wraps around the
  UNet's forward. A cast cached while capturing would be a graph-pool tensor handed out again outside the graph.
* no host sync inside: the cache gathers index device tensors with device indices, and ``accelerator.clip_grad_norm_``
  is ``torch.nn.utils.clip_grad_norm_`` for one process without fp16 (``error_if_nonfinite`` False: no ``.item()``).
  A non-finite loss is still caught where the eager loop catches it, at the log interval.

What cannot be captured is refused (``graph_blockers``): "auto" then trains eagerly, "on" stops with the reasons.

With a trained text encoder (``train.lora.text_encoder_modules``) the captured step equals the eager one in fp32
without TF32 (loss within 5.4e-6 over 10 steps of the demo recipe on an H100, benchmarks/cuda_graph_check.py); in
bf16 it is not bitwise equal to the eager step as the UNet-only step is (loss within 0.08, the LoRA within 6e-4 of
its norm after 10 steps), so a resumed captured run, whose first steps after the resume run eagerly, differs from an
uninterrupted one by bf16 rounding.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch

from core.errors import ConfigError, PipelineError
from training.step import StepDraws, copy_draws_, static_draws_like

WARMUP_STEPS = 3  # the number in PyTorch's whole-network example (DDP would need 11; we never capture DDP)

# (static pair draws, static retain draws or None) -> (metric names, (M,) float32 metric values)
StepBody = Callable[[StepDraws, "StepDraws | None"], "tuple[tuple[str, ...], torch.Tensor]"]


def graph_blockers(cfg, device_type: str, num_processes: int, mixed_precision: str, family: str) -> list[str]:
    """Why this run's step cannot be captured (empty: it can), from what is known before any weights load."""
    reasons = []
    if device_type != "cuda":
        reasons.append(f"the training device is {device_type}, not a CUDA GPU")
    if num_processes > 1:
        reasons.append(f"{num_processes} processes: DDP's gradient all-reduce is not captured (one process only)")
    if mixed_precision == "fp16":
        reasons.append("fp16 loss scaling reads its inf check on the host every step (use bf16 or fp32)")
    compile_mode = cfg.unet_compile_mode(device_type)
    if compile_mode != "none":
        reasons.append(f"the UNet is compiled (compile_unet resolves to {compile_mode!r}), which takes the place "
                       "of whole-step capture: the two are not combined")
    if not cfg.cache_latents:
        reasons.append("cache_latents is false: the VAE and text encoders run on host-built batches every step")
    if family == "sdxl":
        reasons.append("SDXL: each batch's micro-conditioning time ids are copied from the host (training/cache.py)")
    if cfg.gradient_checkpointing:
        reasons.append("gradient_checkpointing: its recomputation under capture is not verified")
    if cfg.lora.dropout > 0:
        reasons.append("lora.dropout > 0: random draws inside the graph are not verified")
    if cfg.lora.use_dora:
        reasons.append("lora.use_dora: DoRA's per-forward weight norm under capture is not verified")
    return reasons


def source_blockers(source) -> list[str]:
    """Why the pair source cannot feed a captured step (empty: it can)."""
    if not getattr(source, "on_device", False):
        return ["the latent cache is not held on the GPU (over a quarter of free memory): it is gathered on the "
                "host every step"]
    return []


def resolve_cuda_graph(setting: str, reasons: list[str]) -> bool:
    """``train.cuda_graph`` ("auto" | "on" | "off") and the blockers -> capture or not; "on" with a blocker
    is a ConfigError naming every reason."""
    if setting == "off":
        return False
    if reasons:
        if setting == "on":
            raise ConfigError("train.cuda_graph=on, but the training step cannot be captured here: "
                              + "; ".join(reasons) + " (use cuda_graph: auto or off)")
        return False
    return True


def _param_groups(optimizer) -> list[dict]:
    return optimizer.param_groups  # accelerate's AcceleratedOptimizer forwards to the wrapped optimiser's list


def restore_optimizer_flags(optimizer, flags: list[dict]) -> None:
    """After ``optimizer.load_state_dict``: put back this run's ``capturable``/``fused``/``foreach`` flags.

    load_state_dict takes every param-group entry from the checkpoint, so an eager run's checkpoint
    (capturable False) resumed by a graphed run would otherwise refuse capture, and the other way round every
    eager step would warn. ``step`` must then live where the flags want it: on the parameter's device as
    float32 for capturable or fused AdamW (torch's "special device hosting for step")."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    for group, saved in zip(optimizer.param_groups, flags):
        group.update(saved)
        if not (group.get("capturable") or group.get("fused")):
            continue
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def optimizer_flags(optimizer) -> list[dict]:
    return [{k: g[k] for k in ("capturable", "fused", "foreach") if k in g} for g in _param_groups(optimizer)]


@contextlib.contextmanager
def _quiet_uncaptured_step() -> Iterator[None]:
    # torch warns once when a capturable optimiser steps outside a capture; the warm-up steps do so on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*running without.*graph capture")
        yield


class CapturedStep:
    """Runs ``body`` (one whole optimiser step on static inputs) as: ``warmup_steps`` eager steps on a side
    stream, then one capture, then a replay per step. ``capture=False`` runs every step eagerly on the same
    static inputs and tensor learning rate (the CPU tests prove this form equal to the eager trainer step).

    Per call: copy the step's draws into the static inputs, refill the learning-rate tensors from the optimiser's
    float lr (set by the scheduler after the previous step), run. Returns (names, values): ``values`` is (M,)
    float32 and, once captured, the graph's static output, overwritten by the next replay."""

    def __init__(self, body: StepBody, optimizer, device, capture: bool, warmup_steps: int = WARMUP_STEPS) -> None:
        if capture and warmup_steps < 1:
            # The optimiser state must exist before capture (allocated outside the graph's pool).
            raise ValueError("a captured step needs at least one eager warm-up step")
        self.body, self.optimizer, self.device = body, optimizer, torch.device(device)
        self.capture, self.warmup_steps = capture, warmup_steps
        # One 0-dim float32 lr per param group: the fused AdamW kernel reads a float32 lr tensor on the device.
        self.lrs = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in _param_groups(optimizer)]
        self.side_stream = torch.cuda.Stream(self.device) if capture else None
        self.static: StepDraws | None = None
        self.static_retain: StepDraws | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.names: tuple[str, ...] = ()
        self.output: torch.Tensor | None = None
        self.eager_steps = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, draws: StepDraws, retain_draws: StepDraws | None) -> tuple[tuple[str, ...], torch.Tensor]:
        if self.static is None:
            self.static = static_draws_like(draws, self.device)
            self.static_retain = static_draws_like(retain_draws, self.device) if retain_draws is not None else None
        copy_draws_(self.static, draws)
        if retain_draws is not None:
            copy_draws_(self.static_retain, retain_draws)
        for lr, group in zip(self.lrs, _param_groups(self.optimizer)):
            lr.fill_(float(group["lr"]))
        if self.graph is None and self.capture and self.eager_steps >= self.warmup_steps:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.names, self.output
        self.eager_steps += 1
        out = self._eager()  # sets self.names
        return self.names, out

    @contextlib.contextmanager
    def _tensor_lr(self):
        """The optimiser reads the lr tensors (what the graph captures) inside; the floats come back after."""
        groups = _param_groups(self.optimizer)
        floats = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.lrs):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value

    def _eager(self) -> torch.Tensor:
        if self.side_stream is None:
            with self._tensor_lr():
                self.names, out = self.body(self.static, self.static_retain)
            self.optimizer.zero_grad(set_to_none=True)
            return out
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)  # the static-input copies and lr fills were queued on `current`
        with torch.cuda.stream(self.side_stream), self._tensor_lr(), _quiet_uncaptured_step():
            self.names, out = self.body(self.static, self.static_retain)
            self.optimizer.zero_grad(set_to_none=True)
        current.wait_stream(self.side_stream)
        out.record_stream(current)  # made on the side stream, read on `current` (the accumulator's add)
        return out

    def _capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward then writes, not accumulates
        graph = torch.cuda.CUDAGraph()
        try:
            with self._tensor_lr(), torch.cuda.graph(graph):
                names, out = self.body(self.static, self.static_retain)
        except RuntimeError as exc:
            raise PipelineError(f"CUDA-graph capture of the training step failed ({exc}); "
                                "set train.cuda_graph=off to train eagerly") from exc
        self.graph, self.names, self.output = graph, names, out
