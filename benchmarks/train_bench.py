"""Training throughput of the project's trainer (``training.train.train``), run exactly as ``make train``.

Each sweep point is one call of the trainer on the synthetic set, with ``max_train_steps`` =
``log_every`` x (1 + timed intervals). The trainer itself reports pairs/s per log interval (its
only host syncs are at those boundaries); the first interval holds start-up (cuDNN autotuning,
compilation, allocator growth) and is dropped: steady-state pairs/s = the median of the other
intervals, read back from the trainer's ``metrics.jsonl``.

FLOPs: one real training step (the same trainer call with ``max_train_steps=1`` and 1 pair per
step) inside ``FlopCounterMode`` gives counted FLOPs per pair for the fast path (with and without
gradient checkpointing, whose recomputation is counted) and for the simple path (VAE + text
encoders counted too). Every op is per-sample, so FLOPs per step = micro-batch x FLOPs per pair.
MFU uses the nominal model count: 6 UNet forward-equivalents per pair x UNet forward FLOPs (also
counted by FlopCounterMode), over the bf16 matmul peak measured on the same GPU.
"""

from __future__ import annotations

import shutil
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.measure import count_flops, free_device_memory, peak_memory
from core.config import config_from_dict
from training.config import TrainConfig
from training.kernels import KernelOptions
from training.metrics import read_metrics
from training.train import train

UNET_FORWARDS_PER_PAIR = 6  # policy fwd (w, l) + policy bwd (≈ 1 fwd each: no frozen weight grads) + ref fwd (w, l)


@dataclass(frozen=True)
class TrainPoint:
    """One trainer configuration to time."""

    micro_batch: int
    gradient_checkpointing: bool
    path: str  # "fast" (cached latents, the trainer's fast config) or "simple" (VAE + text each step)
    regional_compile: bool = False  # trainer compile_unet=regions
    channels_last: bool = False  # fast path only
    full_compile: bool = False  # trainer compile_unet=full
    compile_options: tuple = ()  # inductor options (the trainer's KernelOptions) as sorted (key, value) pairs
    trainer: tuple = ()  # more train: keys for this point, as sorted (key, value) pairs

    @property
    def compile_unet(self) -> str:
        """The trainer's ``compile_unet`` for this point."""
        if self.regional_compile and self.full_compile:
            raise ValueError("a train point is either regional_compile or full_compile, not both")
        return "full" if self.full_compile else "regions" if self.regional_compile else "none"

    @property
    def reference_cache(self) -> bool:
        """Whether the point's trainer reads its reference losses from a pass before the loop (train.reference_cache):
        its step then runs no reference forward."""
        return dict(self.trainer).get("reference_cache") in ("on", True)

    @property
    def flops_key(self) -> str:
        """Points with the same key do the same FLOPs per pair."""
        return f"{self.path}{'-ckpt' if self.gradient_checkpointing else ''}{'-refcache' if self.reference_cache else ''}"

    def flop_count_point(self) -> "TrainPoint":
        """The 1-pair point whose step :func:`count_step_flops_per_pair` counts for this point's ``flops_key``."""
        return TrainPoint(1, self.gradient_checkpointing, self.path,
                          trainer=(("reference_cache", "on"),) if self.reference_cache else ())

    @property
    def label(self) -> str:
        parts = [self.path, f"mb{self.micro_batch}"]
        if self.gradient_checkpointing:
            parts.append("ckpt")
        parts += {"regions": ["compile"], "full": ["fullcompile"]}.get(self.compile_unet, [])
        if self.path == "fast" and self.channels_last:
            parts.append("cl")
        parts += [key if value is True else f"{key}={value}" for key, value in self.compile_options]
        parts += [f"{key}={value}".replace(" ", "") for key, value in self.trainer]
        return "-".join(parts)


# train: keys trainer_overrides sets from a point's own fields; its label and FLOP count describe them, so a point's
# ``trainer`` overrides may not set them behind its back (benchmarks/config.py PointSettings.validate). The point's
# compile_options is listed too: it reaches the trainer as KernelOptions (trainer_kernels), not as a train: key.
POINT_OWNED_TRAIN_KEYS = frozenset({
    "model", "data", "work_dir", "output_dir", "max_train_steps", "log_every", "micro_batch_size",
    "gradient_checkpointing", "cache_latents", "channels_last", "compile_unet", "compile_regions", "compile_options",
})


def trainer_overrides(point: TrainPoint, model_dir: Path, data_dir: Path, work_dir: Path, steps: int,
                      log_every: int, extra: dict) -> dict:
    """The ``train:`` section for one sweep point (everything else: the trainer's defaults + ``extra``)."""
    fast = point.path == "fast"
    section = {
        "model": str(model_dir),
        "data": str(data_dir),
        "work_dir": str(work_dir),  # shared per architecture: the latent cache is built once
        "output_dir": str(work_dir / "lora" / point.label),
        "max_train_steps": steps,
        "log_every": log_every,
        "micro_batch_size": point.micro_batch,
        "gradient_checkpointing": point.gradient_checkpointing,
        "cache_latents": fast,
        "channels_last": fast and point.channels_last,
        "lr_warmup_steps": 0,
        "checkpoint_every": 0,
        "report_to": "none",
        "progress_bar": False,
    }
    if point.compile_unet != "none":
        section["compile_unet"] = point.compile_unet
    section.update(extra)
    section.update(dict(point.trainer))
    return section


def trainer_kernels(point: TrainPoint, compile_backend: str = "inductor"):
    """The trainer's KernelOptions (training/kernels.py) for one sweep point: its inductor options."""
    return KernelOptions(compile_backend=compile_backend, compile_options=dict(point.compile_options))


def run_trainer(section: dict, kernels=None, callbacks=()) -> dict:
    """The trainer, as ``make train`` runs it, on a ``train:`` section; ``kernels`` (KernelOptions) and
    ``callbacks`` (training/callbacks.py) as ``training.train.train`` takes them."""
    return train(config_from_dict(TrainConfig, dict(section), where="train"), callbacks, kernels)


def interval_values(work_dir: Path, key: str) -> list[float]:
    """``key`` (e.g. pairs_per_s, loss) of every logged interval of the last trainer run in ``work_dir``."""
    return [float(r[key]) for r in read_metrics(work_dir / "logs" / "metrics.jsonl") if key in r]


def interval_rates(work_dir: Path) -> list[float]:
    """pairs/s of every logged interval of the last trainer run in ``work_dir``."""
    return interval_values(work_dir, "pairs_per_s")


def time_point(point: TrainPoint, model_dir: Path, data_dir: Path, work_dir: Path, log_every: int,
               timed_intervals: int, extra: dict, device) -> dict:
    """Run the trainer for one point; steady pairs/s, its spread, and peak device memory."""
    steps = log_every * (1 + timed_intervals)
    section = trainer_overrides(point, model_dir, data_dir, work_dir, steps, log_every, extra)
    if point.reference_cache:
        # A folder of the point's own, emptied: its reference pass is computed and timed here, not read from an
        # earlier point's file (which would be a sweep's second run).
        section["reference_cache_dir"] = str(fresh_folder(work_dir / "reference_cache" / point.label))
    record = {"label": point.label, **point.__dict__, "compile_options": dict(point.compile_options),
              "trainer": dict(point.trainer),
              "steps": steps, "log_every": log_every}
    try:
        with peak_memory(device) as mem:
            summary = run_trainer(section, trainer_kernels(point))
    except Exception as exc:  # noqa: BLE001 - an OOM or a failure at one point must not end the sweep
        free_device_memory()
        out_of_memory = "out of memory" in str(exc).lower()
        record.update(status="out of memory" if out_of_memory else "failed", error=str(exc).splitlines()[0][:300])
        if not out_of_memory:
            record["traceback"] = traceback.format_exc()[-2000:]
        return record
    rates = interval_rates(work_dir)
    steady = rates[1:] or rates
    free_device_memory()
    record.update(
        status="ok",
        pairs_per_s=statistics.median(steady),
        pairs_per_s_intervals=steady,
        first_interval_pairs_per_s=rates[0] if rates else None,
        trainer_summary_pairs_per_s=summary.get("pairs_per_s"),
        peak_gib=mem["peak_gib"],
        final_loss=summary.get("final_metrics", {}).get("loss"),
        # Same seed, data and draws at every point: points that differ only in kernels (attention backend,
        # compile) should log the same losses to bf16 rounding.
        interval_losses=interval_values(work_dir, "loss"),
    )
    if point.reference_cache:
        record.update(reference_pass_figures(summary.get("reference_cache") or {}, record["pairs_per_s"]))
    return record


def fresh_folder(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def reference_pass_figures(reference: dict, loop_pairs_per_s: float) -> dict:
    """The reference pass of a ``reference_cache`` point next to its training loop: the pass's steady pairs/s, and
    pairs/s of one whole run that computes its pass (1 / (1/loop + 1/pass): both do every pair once) and of each
    further run of a sweep that reads it (the loop alone)."""
    rate = reference.get("pairs_per_s")
    return {
        "reference_pass": reference,
        "reference_pass_pairs_per_s": rate,
        "one_run_pairs_per_s": 1.0 / (1.0 / loop_pairs_per_s + 1.0 / rate) if rate else None,
    }


def count_step_flops_per_pair(point: TrainPoint, model_dir: Path, data_dir: Path, work_dir: Path,
                              extra: dict) -> float:
    """FLOPs of one real trainer step with 1 pair (FlopCounterMode; uncompiled, same maths). With the reference cache
    the trainer runs once uncounted first, so the counted run reads its reference losses and counts the step alone."""
    one = point.flop_count_point()
    section = trainer_overrides(one, model_dir, data_dir, work_dir, steps=1, log_every=1, extra=extra)
    if one.reference_cache:
        section["reference_cache_dir"] = str(fresh_folder(work_dir / "reference_cache" / "flop-count"))
        run_trainer(section)
    flops = count_flops(lambda: run_trainer(section))
    free_device_memory()
    return float(flops)


def unet_forward_flops(unet, inputs: dict) -> float:
    """FLOPs of one UNet forward (batch of ``inputs``) -> per sample."""
    batch = inputs["sample"].shape[0]
    with torch.no_grad():
        flops = count_flops(lambda: unet(**inputs, return_dict=False))
    return flops / batch


def add_throughput_figures(record: dict, flops_per_pair: float | None, unet_fwd_flops: float, peak_flops: float) -> None:
    """Achieved TFLOP/s (counted FLOPs) and MFU (6 UNet forward-equivalents per pair)."""
    if record.get("status") != "ok":
        return
    rate = record["pairs_per_s"]
    nominal = UNET_FORWARDS_PER_PAIR * unet_fwd_flops
    record["nominal_tflop_per_pair"] = nominal / 1e12
    record["mfu_6fwd"] = nominal * rate / peak_flops
    if flops_per_pair:
        record["counted_tflop_per_pair"] = flops_per_pair / 1e12
        record["achieved_tflops"] = flops_per_pair * rate / 1e12
        record["hfu_counted"] = flops_per_pair * rate / peak_flops
