"""Multi-GPU scaling: the project's trainer under ``accelerate launch`` on 1, 2, 4 ... GPUs of one host.

Weak scaling: each process keeps the same micro-batch, so the global batch grows with the GPU count.
efficiency(N) = pairs/s(N) / (N x pairs/s(1)); pairs/s is the trainer's own global figure (all
processes' pairs per step over the interval's wall time), median of the intervals after the first.

NVLink multicast stays off (it can take a shared host's GPUs out of service): NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are set for every launched process.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.train_bench import TrainPoint, interval_rates, reference_pass_figures, trainer_overrides

NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# NCCL INFO lines name the path between ranks, e.g. "Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read".
NCCL_TRANSPORT = re.compile(r"NCCL INFO Channel \S+ : \S+ -> \S+ via (\S+)")


def save_launch_output(results_dir: str | Path, gpus: int, output: str) -> None:
    """Each launch's stdout + stderr (NCCL's INFO lines included) beside the results JSON."""
    try:
        path = Path(results_dir) / f"scaling-{gpus}gpu-output.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(output[-2_000_000:])
    except OSError as exc:  # diagnostics only: never lose the measurement over them
        print(f"[bench] could not save the launch output: {exc}", flush=True)


def launch_command(accelerate_config: str, gpus: int, config_file: Path) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", accelerate_config,
        "--num_processes", str(gpus),
        "-m", "training.train", "--config", str(config_file),
    ]


def launch_reference_pass(output_dir: Path) -> dict | None:
    """The reference-loss pass of the launch that wrote ``output_dir`` (training_summary.json), or None."""
    summary = output_dir / "training_summary.json"
    return json.loads(summary.read_text()).get("reference_cache") if summary.is_file() else None


def run_scaling(cfg, model_dir: Path, data_dir: Path, work: Path, output_dir: str | Path | None = None) -> dict:
    """``output_dir``: where each launch's output is kept (``scaling-<N>gpu-output.txt``); None: not kept."""
    settings = cfg.scaling
    available = torch.cuda.device_count()
    point = TrainPoint(settings.micro_batch, settings.gradient_checkpointing, "fast", settings.regional_compile,
                       full_compile=settings.full_compile)
    work_dir = work / "scaling" / settings.arch
    steps = cfg.log_every * (1 + cfg.timed_intervals)
    section = trainer_overrides(point, model_dir, data_dir, work_dir, steps, cfg.log_every, dict(cfg.trainer_extra))
    config_file = work_dir / "scaling_train.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump({"train": section}, sort_keys=False))
    env = {**os.environ, **NO_MULTICAST_ENV, "PYTHONUNBUFFERED": "1"}
    env.setdefault("NCCL_DEBUG", "INFO")  # the transport between GPUs (NVLink P2P, SHM, ...) goes to the launch output
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH", "")]))

    runs = []
    for gpus in settings.gpus:
        record = {"gpus": gpus}
        if gpus > available:
            record.update(status="skipped", error=f"only {available} GPU(s) visible")
            runs.append(record)
            continue
        print(f"[bench] scaling: {gpus} GPU(s)", flush=True)
        started = time.perf_counter()
        done = subprocess.run(launch_command(settings.accelerate_config, gpus, config_file), env=env,
                              capture_output=True, text=True)
        record["launch_wall_s"] = round(time.perf_counter() - started, 1)
        output = done.stdout + done.stderr
        transports = sorted({m.group(1) for m in NCCL_TRANSPORT.finditer(output)})
        if transports:
            record["nccl_transports"] = transports
        if output_dir is not None:
            save_launch_output(output_dir, gpus, output)
        if done.returncode != 0:
            record.update(status="failed", error=(done.stderr or done.stdout)[-1500:])
        else:
            rates = interval_rates(work_dir)
            steady = rates[1:] or rates
            record.update(status="ok", pairs_per_s=statistics.median(steady), pairs_per_s_intervals=steady,
                          first_interval_pairs_per_s=rates[0] if rates else None)
            reference = launch_reference_pass(Path(section["output_dir"]))
            if reference is not None:  # train.reference_cache: the pass before the loop, split over the GPUs
                record.update(reference_pass_figures(reference, record["pairs_per_s"]))
        print(f"[bench]   -> {record.get('status')} {record.get('pairs_per_s')} pairs/s, intervals "
              f"{record.get('pairs_per_s_intervals')}, launch {record['launch_wall_s']} s, NCCL {transports}",
              flush=True)
        runs.append(record)
    single = next((r.get("pairs_per_s") for r in runs if r["gpus"] == 1 and r.get("status") == "ok"), None)
    for r in runs:
        if single and r.get("status") == "ok":
            r["efficiency"] = r["pairs_per_s"] / (r["gpus"] * single)
    return {"arch": settings.arch, "micro_batch": settings.micro_batch, "steps": steps,
            "environment_flags": NO_MULTICAST_ENV, "runs": runs}
