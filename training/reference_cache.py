"""Reference losses computed once per pair and noise draw, before the training loop (``train.reference_cache``).

Why it is exact. Diffusion-DPO's reference terms err(ref, w) and err(ref, l) (training/loss.py) are the frozen
base UNet's (LoRA off) denoising errors on the pair's two latents, noised with the step's noise ε and timestep t.
Optimiser step s's pairs, ε, t and prompt-dropout flags are a pure function of (seed, s) (training/step.py:
draw_step, one generator per step, nothing carried between steps). So every reference error the run will use is
fixed before training starts. This pass draws step s exactly as the loop will, runs the reference half of the
step (training/step.py: reference_pair_errors, the same inputs and the same call as the inline reference, so the
same compiled graph) and stores the (E, 2) errors; the loop reads them instead of running the reference forward.
Not "equivalent in distribution": the same numbers, kernel rounding apart.

What it buys. The training step runs the policy only: 6 UNet forward-equivalents per pair instead of 8. The pass
costs the reference's 2 per pair once, as an inference pass (no saved activations). Within one run that is the
same work moved, not removed; the saving is reuse. The errors do not depend on β, the learning rate, the LoRA
(rank, targets, init), the loss type (sigmoid, hinge, ipo), label smoothing, RPO, clipping or the optimiser, nor on
how E is split into micro-batches, processes and accumulation steps: every run of a sweep over those with the
same base model, data, seed, pairs per step E and noise settings reads one file. A resumed run reads it too, and a
longer run extends it (step s's row never depends on the number of steps).

File: ``<reference_cache_dir>/reference-<key>.safetensors``, one float32 tensor ``errors`` (S, E, 2) = [step,
position among the step's E pairs, (winner, loser)] for steps 0..S-1. The key hashes what the numbers depend
on: the base UNet's and scheduler's files, the latent cache's key (encoders, preference set, resolution, which
pairs), the seed, E, prompt dropout, risk repeats, timestep ranges, prediction type and mixed precision. The file
is rewritten atomically every ``SAVE_EVERY_S`` seconds of the pass, so a crash loses at most that much of it; an
unreadable or mis-shaped file is reported and computed again (it is derived data).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from core.io import atomic_write_bytes, stable_key

FORMAT = "dpo-reference-errors-v1"  # bump when training/step.py changes how a step draws its pairs or noise
SAVE_EVERY_S = 60.0  # seconds of the pass between atomic rewrites of the file


@dataclass
class ReferencePass:
    """What the trainer reports about the pass (training_summary.json ``reference_cache``)."""

    file: str
    steps_reused: int  # rows read from an existing file
    steps_computed: int  # rows this run computed
    seconds: float  # wall time of the computing loop (0 when nothing was computed)
    pairs_per_s: float | None  # steady pairs/s of the pass: without its first step (compile, warm-up)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def reference_cache_key(unet_fingerprint: str, latent_cache_key: str, seed: int, pairs_per_step: int,
                        prompt_dropout: float, prediction_type: str, mixed_precision: str) -> str:
    """The file key: everything the reference errors of step s depend on, nothing they do not. (The two empty
    lists stood for two per-risk options since removed, docs/experiments.md demo recipes 3 and 12: kept, so that
    files written before still match.)"""
    return stable_key(FORMAT, unet_fingerprint, latent_cache_key, seed, pairs_per_step, prompt_dropout,
                      [], [], prediction_type, mixed_precision)


def reference_cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"reference-{key}.safetensors"


def read_reference_errors(path: str | Path, pairs_per_step: int) -> torch.Tensor:
    """(S, E, 2) float32 rows of an existing file; (0, E, 2) when there is none or it cannot be used (a warning
    says why: a broken file is derived data, computed again rather than trusted)."""
    empty = torch.zeros((0, pairs_per_step, 2), dtype=torch.float32)
    path = Path(path)
    if not path.is_file():
        return empty
    try:
        errors = load_file(str(path))["errors"]
    except (SafetensorError, KeyError, OSError, ValueError) as exc:
        warnings.warn(f"reference-loss cache {path} is unreadable ({exc}); computing it again", stacklevel=2)
        return empty
    if errors.dtype != torch.float32 or errors.ndim != 3 or tuple(errors.shape[1:]) != (pairs_per_step, 2):
        warnings.warn(f"reference-loss cache {path} holds {errors.dtype} {tuple(errors.shape)}, not (S, "
                      f"{pairs_per_step}, 2) float32; computing it again", stacklevel=2)
        return empty
    if not torch.isfinite(errors).all():
        warnings.warn(f"reference-loss cache {path} holds non-finite values; computing it again", stacklevel=2)
        return empty
    return errors


def write_reference_errors(path: str | Path, errors: torch.Tensor) -> None:
    """Atomically write (S, E, 2) rows."""
    atomic_write_bytes(path, save({"errors": errors.float().contiguous().cpu()},
                                  metadata={"format": FORMAT, "steps": str(errors.shape[0])}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extend_reference_errors(existing: torch.Tensor, steps: int, compute_step: Callable[[int], torch.Tensor],
                            device, save_rows: Callable[[torch.Tensor], None] | None,
                            show_progress: bool = True) -> tuple[torch.Tensor, int, float, float | None]:
    """Rows 0..steps-1: ``existing`` ones kept, the others from ``compute_step(s)`` ((E, 2) on ``device``).

    ``save_rows`` (main process; None elsewhere) receives all rows so far every ``SAVE_EVERY_S`` seconds and at the
    end. Returns (rows (steps, E, 2) on the CPU, how many of them were ``existing`` ones, seconds spent computing,
    steady pairs/s of the computing loop without its first step, None when it computed fewer than two steps)."""
    device = torch.device(device)
    have = min(int(existing.shape[0]), steps)
    if have == steps:
        return existing[:steps], have, 0.0, None
    rows = [existing[:have]]
    pending: list[torch.Tensor] = []  # (E, 2) rows on the device since the last save: no per-step host sync
    start = last_save = time.perf_counter()
    after_first = None
    for step in tqdm(range(have, steps), desc="reference losses", disable=not show_progress):
        pending.append(compute_step(step))
        if after_first is None:
            _sync(device)
            after_first = time.perf_counter()
        if save_rows is not None and time.perf_counter() - last_save > SAVE_EVERY_S:
            rows.append(torch.stack(pending).cpu())
            pending = []
            save_rows(torch.cat(rows))
            last_save = time.perf_counter()
    if pending:
        rows.append(torch.stack(pending).cpu())  # waits for the device
    end = time.perf_counter()
    errors = torch.cat(rows)
    if save_rows is not None:
        save_rows(errors)
    computed = steps - have
    pairs_per_step = int(errors.shape[1])
    rate = (computed - 1) * pairs_per_step / max(end - after_first, 1e-9) if computed > 1 else None
    return errors, have, end - start, rate


def gather_step_errors(local: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor], num_processes: int
                       ) -> torch.Tensor:
    """(E, 2) errors of one step in the order of its E pairs, from each process's (A, B, 2) errors of its own
    micro-slices: process r's micro-step a holds positions (a · P + r) · B ... + B (StepDraws.micro_slice).
    ``gather`` concatenates the processes' tensors along dim 0 (accelerate's ``gather``)."""
    accumulation, micro_batch = int(local.shape[0]), int(local.shape[1])
    everything = gather(local.contiguous())  # (P · A, B, 2), process-major
    by_process = everything.view(num_processes, accumulation, micro_batch, 2)
    return by_process.transpose(0, 1).reshape(accumulation * num_processes * micro_batch, 2)
