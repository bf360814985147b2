"""``make bench``: throughput of the project's trainer and generator on SD1.5/SDXL architectures.

    python -m benchmarks.bench [--config configs/bench.yaml] [--smoke] [--key value | key=value ...]

Builds random-init full-size pipelines from their published configs (no downloads), a synthetic
Pick-a-Pic-format set at native resolution, then per architecture: generation (plain pipeline vs
the project's generator), the training sweep (the project's trainer), and optionally multi-GPU
scaling under ``accelerate launch``. Writes ``benchmarks/results/<gpu>-<time>.json`` and prints a
table. ``--smoke`` runs everything on CPU with tiny models (the fast test).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.architectures import arch_spec, build_model_folder
from benchmarks.config import SMOKE_OVERRIDES, BenchConfig
from benchmarks.generation_bench import run_generation_bench, unet_probe_inputs
from benchmarks.measure import environment, free_device_memory, measure_matmul_peak
from benchmarks.report import format_table, results_path, stock_ratios
from benchmarks.scaling import run_scaling
from benchmarks.synthetic_data import write_synthetic_set
from benchmarks.train_bench import (
    TrainPoint,
    add_throughput_figures,
    count_step_flops_per_pair,
    time_point,
    unet_forward_flops,
)
from core.cli import StageCLI, resolve_device, run_main
from core.config import load_stage_config, to_dict, write_resolved_config
from core.errors import PipelineError
from core.io import atomic_write_json
from core.models import load_pipeline

DEFAULT_CONFIG = "configs/bench.yaml"


def prepare_arch(cfg, name: str, work: Path, device: str) -> tuple[Path, Path]:
    """The model folder and the synthetic set for ``name`` (built once, reused by later runs)."""
    spec = arch_spec(name, cfg.scale)
    model_dir = build_model_folder(name, cfg.scale, work / "models" / f"{name}-{cfg.scale}",
                                   dtype=torch.bfloat16, device=device)
    data_dir = write_synthetic_set(work / "sets" / f"{name}-{cfg.scale}-{spec.resolution}px",
                                   cfg.arch(name).num_pairs, spec.resolution)
    return model_dir, data_dir


def load_bench_pipeline(cfg, model_dir: Path, device: str):
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_pipeline(model_dir, dtype=dtype, device=device)


def measure_unet_forward(cfg, name: str, model_dir: Path, device: str) -> float:
    """FLOPs of one UNet forward of one sample at native resolution (FlopCounterMode)."""
    pipe = load_bench_pipeline(cfg, model_dir, device)
    flops = unet_forward_flops(pipe.unet, unet_probe_inputs(pipe, 1, arch_spec(name, cfg.scale).resolution))
    del pipe
    free_device_memory()
    return flops


def bench_generation(cfg, name: str, model_dir: Path, device: str) -> dict:
    """Plain pipeline call vs the project's generator (with the configured speedups)."""
    pipe = load_bench_pipeline(cfg, model_dir, device)
    record = run_generation_bench(pipe, cfg.arch(name).generation_batch, arch_spec(name, cfg.scale).resolution,
                                  cfg.generation, device)
    del pipe
    free_device_memory()
    return record


def train_points(arch) -> list:
    """The ``TrainPoint`` of each configured ``train_points`` entry of ``arch`` (ArchSettings), in order."""
    return [TrainPoint(p.micro_batch, p.gradient_checkpointing, p.path, p.regional_compile, p.channels_last,
                       p.full_compile, tuple(sorted(p.compile_options.items())), tuple(sorted(p.trainer.items())))
            for p in arch.train_points]


def bench_training(cfg, name: str, model_dir: Path, data_dir: Path, work: Path, device: str,
                   unet_fwd_flops: float, peak_flops: float, on_progress=lambda summary: None) -> dict:
    trainer_work = work / "train" / f"{name}-{cfg.scale}"
    points = train_points(cfg.arch(name))
    # Configured order, except that a fast point without checkpointing goes first: it builds the latent
    # cache that later points and the fast-path FLOP count reuse (its peak memory includes the cache
    # build; no other measurement does).
    first = next((p for p in points if p.path == "fast" and not p.gradient_checkpointing), None)
    if first is not None:
        points.remove(first)
        points.insert(0, first)
    summary: dict = {"points": [], "counted_tflop_per_pair": {}}
    flops_per_pair: dict[str, float] = {}

    def figures() -> None:
        for record in summary["points"]:
            add_throughput_figures(record, flops_per_pair.get(record["flops_key"]), unet_fwd_flops, peak_flops)
        ok = [r for r in summary["points"] if r.get("status") == "ok"]
        best_fast = max((r for r in ok if r["path"] == "fast"), key=lambda r: r["pairs_per_s"], default=None)
        simple = max((r for r in ok if r["path"] == "simple"), key=lambda r: r["pairs_per_s"], default=None)
        summary.update(
            counted_tflop_per_pair={k: v / 1e12 for k, v in flops_per_pair.items()},
            best_fast=best_fast["label"] if best_fast else None,
            best_fast_pairs_per_s=best_fast["pairs_per_s"] if best_fast else None,
            simple_pairs_per_s=simple["pairs_per_s"] if simple else None,
            fast_over_simple=best_fast["pairs_per_s"] / simple["pairs_per_s"] if best_fast and simple else None,
        )
        on_progress(summary)

    for point in points:
        print(f"[bench] {name}: training {point.label}", flush=True)
        record = time_point(point, model_dir, data_dir, trainer_work, cfg.log_every, cfg.timed_intervals,
                            dict(cfg.trainer_extra), device)
        record["flops_key"] = point.flops_key
        summary["points"].append(record)
        print(f"[bench]   -> {record.get('status')} {record.get('pairs_per_s', '')} pairs/s", flush=True)
        figures()
    if cfg.count_flops:
        for point in {p.flop_count_point() for p in points}:
            print(f"[bench] {name}: counting FLOPs of one {point.flops_key} step", flush=True)
            try:
                flops_per_pair[point.flops_key] = count_step_flops_per_pair(
                    point, model_dir, data_dir, trainer_work, dict(cfg.trainer_extra))
            except Exception as exc:  # noqa: BLE001 - report, keep the timings
                flops_per_pair[point.flops_key] = float("nan")
                print(f"[bench] FLOP count failed for {point.flops_key}: {exc}", flush=True)
            figures()
    return summary


def run(cfg, config_path: str | None) -> dict:
    device = resolve_device(cfg.device, "bench.device")
    work = Path(cfg.work_dir or "runs/bench")
    write_resolved_config(cfg, work)
    started = time.time()
    env = environment(device)
    print(f"[bench] {env.get('gpu_name')} | torch {env['torch']} | diffusers {env['diffusers']}", flush=True)
    peak_flops = measure_matmul_peak(device, cfg.matmul_size)
    results: dict = {
        "environment": env,
        "config": to_dict(cfg),
        "config_file": config_path,
        "peak_bf16_matmul_tflops": peak_flops / 1e12,
        "archs": {},
    }
    target = results_path(cfg.results_dir, env, cfg.tag)

    def save() -> None:  # after every part: a run cut short still leaves what it measured
        results["wall_seconds"] = time.time() - started
        atomic_write_json(target, results)

    for name in cfg.archs if {"train", "generation"} & set(cfg.parts) else []:
        model_dir, data_dir = prepare_arch(cfg, name, work, device)
        arch_result = results["archs"].setdefault(name, {})
        arch_result["unet_forward_tflop"] = measure_unet_forward(cfg, name, model_dir, device) / 1e12
        for part in cfg.arch(name).parts or cfg.parts:  # in the configured order
            if part == "train":

                def progress(summary, arch_result=arch_result):
                    arch_result["train"] = summary
                    save()

                bench_training(cfg, name, model_dir, data_dir, work, device,
                               arch_result["unet_forward_tflop"] * 1e12, peak_flops, progress)
            elif part == "generation":
                try:
                    arch_result["generation"] = bench_generation(cfg, name, model_dir, device)
                except Exception as exc:  # noqa: BLE001 - keep the other parts' results
                    if isinstance(exc, PipelineError):
                        raise

                    arch_result["generation_error"] = traceback.format_exc()[-3000:]
                    print(f"[bench] {name}: generation failed: {exc}", flush=True)
            arch_result.update(stock_ratios(name, arch_result))
            save()
    if "scaling" in cfg.parts:
        model_dir, data_dir = prepare_arch(cfg, cfg.scaling.arch, work, device)
        results["scaling"] = run_scaling(cfg, model_dir, data_dir, work, output_dir=cfg.results_dir)
        save()
    save()
    print(format_table(results))
    print(f"[bench] wrote {target}")
    results["results_file"] = str(target)
    return results


CLI = StageCLI(BenchConfig, "bench", prog="python -m benchmarks.bench", description=__doc__,
               config_default=DEFAULT_CONFIG)


def build_parser():
    parser = CLI.parser()
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU, < 1 minute")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())
    config_path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    overrides = (SMOKE_OVERRIDES if args.smoke else []) + list(args.overrides)

    def work() -> None:
        run(load_stage_config(BenchConfig, config_path, "bench", overrides), config_path)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
