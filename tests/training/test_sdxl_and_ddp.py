"""SDXL end to end (two text encoders, pooled embeds, time ids) and a 2-process gloo DDP run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.conftest import tiny_config
from training.lora import LORA_WEIGHT_NAME
from training.metrics import read_metrics
from training.train import train

REPO = Path(__file__).resolve().parents[2]


def test_sdxl_lora_trains_and_loads_in_stock_pipeline(tiny_sdxl_path, tiny_set, tmp_path):
    run = tmp_path / "sdxl"
    summary = train(tiny_config(tiny_sdxl_path, tiny_set, run, "lora.alpha=8"))  # alpha != rank: metadata
    losses = {r["step"]: r["loss"] for r in read_metrics(run / "lora" / "metrics.jsonl")}
    assert losses[1] == pytest.approx(math.log(2.0), abs=1e-6)
    assert math.isfinite(summary["final_metrics"]["loss"])
    weights = load_file(str(run / "lora" / LORA_WEIGHT_NAME))
    assert weights and all("lora" in k for k in weights)

    from core.models import load_pipeline

    pipe = load_pipeline(tiny_sdxl_path)

    def generate():
        return pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images

    before = generate()
    pipe.load_lora_weights(str(run / "lora"))
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8  # restored from the file's metadata
    assert abs(generate() - before).max() > 1e-4


EQUIVALENCE_SETTINGS = {"adam_epsilon": 1.0, "learning_rate": 0.05, "beta": 100.0}  # see test_train._assert_same_run


def train_two_processes(model: Path, data: Path, run: Path, port: int, kernels: dict | None = None, **extra) -> None:
    """accelerate launch with configs/accelerate/ddp.yaml on CPU (gloo): 2 processes x micro-batch 2,
    3 steps, ``EQUIVALENCE_SETTINGS`` plus ``extra`` train: keys; output under ``run``. ``kernels``: the trainer's
    KernelOptions as keyword arguments (tests/training/launch_with_kernels.py), for example a compile backend."""
    config = run / "ddp.yaml"
    train_section = {
        "model": str(model), "data": str(data), "output_dir": str(run / "lora"),
        "work_dir": str(run / "work"), "mixed_precision": "fp32", "max_train_steps": 3,
        # The recipe's global batch: 4 pairs per step = 2 per process here (micro_batch_size is ignored).
        "pairs_per_step": 4, "micro_batch_size": 3,
        "lr_warmup_steps": 0, "log_every": 1, "progress_bar": False, "report_to": "none",
        "lora": {"rank": 4, "alpha": 4.0}, **EQUIVALENCE_SETTINGS, **extra,
    }
    run.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"train": train_section}))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    accelerate = Path(sys.executable).with_name("accelerate")
    entry = (["-m", "training.train", "--config", str(config)] if kernels is None else
             ["-m", "tests.training.launch_with_kernels", str(config), json.dumps(kernels)])
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"), "--num_processes", "2",
         "--main_process_port", str(port), *entry],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((run / "lora" / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["pairs_per_step"] == 4
    assert summary["micro_batch_per_process"]["pairs"] == 2


def train_one_process_micro_4(model: Path, data: Path, run: Path) -> None:
    """The single-process run that :func:`train_two_processes` must reproduce."""
    train(tiny_config(model, data, run, "micro_batch_size=4", *(f"{k}={v}" for k, v in EQUIVALENCE_SETTINGS.items())))


def assert_same_as_single_process(single: Path, ddp: Path) -> None:
    def metric(run, name):
        return {r["step"]: r[name] for r in read_metrics(run / "lora" / "metrics.jsonl")}

    # Continuous metrics only: an accuracy flips when a margin sits within float32 rounding of 0.
    for name in ("loss", "grad_norm", "mse/policy"):
        for step, value in metric(single, name).items():
            assert metric(ddp, name)[step] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, step)
    a = load_file(str(single / "lora" / LORA_WEIGHT_NAME))
    b = load_file(str(ddp / "lora" / LORA_WEIGHT_NAME))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_two_process_gloo_matches_single_process(tiny_sd15_path, tiny_set, tmp_path):
    """2 processes x micro-batch 2 == 1 process x micro-batch 4."""
    train_one_process_micro_4(tiny_sd15_path, tiny_set, tmp_path / "single")
    train_two_processes(tiny_sd15_path, tiny_set, tmp_path / "ddp", port=29517)
    assert_same_as_single_process(tmp_path / "single", tmp_path / "ddp")
