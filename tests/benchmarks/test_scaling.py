"""The scaling launcher runs the project's trainer under `accelerate launch` (2 CPU processes, gloo)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench import prepare_arch
from benchmarks.config import SMOKE_OVERRIDES, BenchConfig
from benchmarks.scaling import NO_MULTICAST_ENV, run_scaling
from core.config import config_from_dict


@pytest.mark.slow
@pytest.mark.parametrize("reference_cache", [False, True])
def test_scaling_launches_trainer_on_two_processes(tmp_path, monkeypatch, reference_cache):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    overrides = SMOKE_OVERRIDES + ["scaling.gpus=[1, 2, 4]", "scaling.micro_batch=2", f"work_dir={tmp_path}"]
    if reference_cache:
        overrides.append("trainer_extra={reference_cache: on}")
    cfg = config_from_dict(BenchConfig, {}, overrides, where="bench")
    model_dir, data_dir = prepare_arch(cfg, "sd15", tmp_path, "cpu")
    result = run_scaling(cfg, model_dir, data_dir, tmp_path)
    runs = {r["gpus"]: r for r in result["runs"]}
    assert runs[1]["status"] == "ok" and runs[2]["status"] == "ok", runs
    assert runs[4]["status"] == "skipped"
    assert runs[1]["efficiency"] == 1.0 and runs[2]["efficiency"] > 0
    assert result["environment_flags"] == NO_MULTICAST_ENV
    for gpus in (1, 2):
        if reference_cache:  # each launch computes its pass (another pairs-per-step, another file) over its processes
            assert runs[gpus]["reference_pass"]["steps_computed"] == result["steps"]
            assert runs[gpus]["reference_pass_pairs_per_s"] > 0 and runs[gpus]["one_run_pairs_per_s"] > 0
        else:
            assert "reference_pass" not in runs[gpus]
