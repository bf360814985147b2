"""The time-to-LoRA harness: step detection in tqdm output, the linear cost model, the result shape, config errors."""

from __future__ import annotations

import sys

import pytest

from benchmarks.time_to_lora import (
    OURS_STEP,
    STOCK_STEP,
    JobSettings,
    RunTiming,
    TimeToLoraConfig,
    cudnn_attention_off,
    end_to_end_entries,
    extrapolate,
    fixed_and_rates,
    run_stock,
    stream_with_first_step,
)
from core.errors import ConfigError

FAKE_BAR = r"""
import sys, time
sys.stderr.write("loading\n"); sys.stderr.flush(); time.sleep(0.4)
sys.stderr.write("\rSteps:   0%|          | 0/3 [00:00<?, ?it/s]"); sys.stderr.flush(); time.sleep(0.6)
sys.stderr.write("\rSteps:  33%|###       | 1/3 [00:01<00:02, 1.0it/s]"); sys.stderr.flush(); time.sleep(0.3)
sys.stderr.write("\rSteps: 100%|##########| 3/3 [00:01<00:00, 3.0it/s]\n"); sys.stderr.flush()
"""


def test_first_step_is_read_from_a_carriage_return_progress_bar(tmp_path):
    code, wall, first = stream_with_first_step([sys.executable, "-c", FAKE_BAR], {}, tmp_path / "log.txt", 60,
                                               STOCK_STEP)
    assert code == 0
    assert first is not None and 0.9 <= first < wall  # after the 0/3 bar, not at it
    assert "3/3" in (tmp_path / "log.txt").read_text()


def test_step_patterns_tell_the_training_bar_from_other_bars():
    assert OURS_STEP.search("train:   6%|6         | 1/16 [00:05<01:17,  5.15s/it]").group(1) == "1"
    assert OURS_STEP.search("reference losses:   6%|6   | 1/16 [00:04<01:14]") is None
    assert STOCK_STEP.search("train:   6%|6         | 1/16 [00:05<01:17]") is None


def _timing(side, wall, first, steps, pairs_per_step, phases=None, job="100x1", caches="cold"):
    return RunTiming(side, job, caches, wall, first, steps, pairs_per_step, 0, phases or {})


def test_cost_model_reproduces_the_measured_run_and_scales_linearly():
    # 100 pairs, 10 steps of 10: first step at 30 s, 9 more steps in 9 s (1 s per 10 pairs), latent caching 4 s,
    # a reference pass of 3 s of which 2 s compiling: its 1 s of rows is per pair visit, its compile is fixed.
    run = _timing("ours", 39.0, 30.0, 10, 10,
                  {"latent_cache_s": 4.0, "reference_pass_s": 3.0, "reference_compile_s": 2.0})
    model = fixed_and_rates(run, pairs=100, pair_visits=100)
    assert model["per_pair_visit_s"] == pytest.approx(0.1 + 0.01)
    assert model["once_per_pair_s"] == pytest.approx(0.04)
    assert extrapolate(model, JobSettings(100, 1)) == pytest.approx(39.0)
    # 10x the pairs, 4 passes: fixed + 0.04 x 1000 + 0.11 x 4000.
    assert extrapolate(model, JobSettings(1000, 4)) == pytest.approx(model["fixed_s"] + 40 + 440)


def test_cost_model_refuses_a_run_without_a_first_step():
    with pytest.raises(ConfigError, match="first-step"):
        fixed_and_rates(_timing("stock", 10.0, None, 10, 10), 100, 100)


def test_end_to_end_entries_have_the_fixed_shape():
    cfg = TimeToLoraConfig(jobs=[JobSettings(100), JobSettings(1000, 4, measure=False)], caches=["cold"])
    runs = [_timing("stock", 60.0, 20.0, 10, 10), _timing("ours", 39.0, 30.0, 10, 10)]
    entries = end_to_end_entries(cfg, runs, "NVIDIA H100 80GB HBM3", {})
    assert [(e["job"], e["caches"], e["measured"]) for e in entries] == [("100x1", "cold", True),
                                                                          ("1000x4", "cold", False)]
    for entry in entries:
        assert {"job", "caches", "stock_wall_s", "ours_wall_s", "measured", "gpu"} <= set(entry)
        assert entry["gpu"] == "NVIDIA H100 80GB HBM3"
    assert entries[0]["stock_wall_s"] == 60.0 and entries[0]["ours_wall_s"] == 39.0
    assert entries[1]["extrapolated_from"] == "100x1"
    assert entries[1]["ours_wall_s"] > entries[0]["ours_wall_s"]


def test_large_jobs_take_the_compiled_run_where_it_repays_its_compile():
    """The measured job is the shipped config's run (eager there); a large job is extrapolated from whichever of the
    eager and the compiled run predicts less, as compile_unet auto compiles once a job repays it."""
    cfg = TimeToLoraConfig(jobs=[JobSettings(100), JobSettings(100_000, 4, measure=False)], caches=["cold"])
    # Eager: 1 s per 10 pairs after a 10 s start. Compiled: a 60 s start (compiling), then 0.5 s per 10 pairs.
    runs = [_timing("stock", 60.0, 20.0, 10, 10), _timing("ours", 19.0, 10.0, 10, 10),
            _timing("ours_compiled", 64.5, 60.0, 10, 10)]
    measured, large = end_to_end_entries(cfg, runs, "gpu", {})
    assert measured["ours_wall_s"] == 19.0  # the measured job reports the shipped config's own run
    assert large["ours_mode"] == "compiled"
    assert large["ours_wall_s"] < extrapolate(fixed_and_rates(runs[1], 100, 100), JobSettings(100_000, 4))
    small = end_to_end_entries(TimeToLoraConfig(jobs=[JobSettings(100), JobSettings(200, 1, measure=False)],
                                                caches=["cold"]), runs, "gpu", {})[1]
    assert small["ours_mode"] == "as measured (auto)"


def test_a_failed_run_is_not_reported_as_a_time():
    cfg = TimeToLoraConfig(jobs=[JobSettings(100)], caches=["cold"])
    failed = RunTiming("ours", "100x1", "cold", 5.0, None, 10, 10, 1)
    entry = end_to_end_entries(cfg, [_timing("stock", 60.0, 20.0, 10, 10), failed], "gpu", {})[0]
    assert entry["ours_wall_s"] is None and "speedup" not in entry


def test_config_errors():
    with pytest.raises(ValueError, match="at least one job must be measured"):
        TimeToLoraConfig(jobs=[JobSettings(100, measure=False)]).validate()
    with pytest.raises(ValueError, match="list cold too"):
        TimeToLoraConfig(caches=["warm"]).validate()
    with pytest.raises(ValueError, match="pairs and passes"):
        JobSettings(0).validate()


def test_missing_stock_script_names_the_fetch_script(tmp_path):
    cfg = TimeToLoraConfig(work_dir=str(tmp_path))
    cfg.stock.script = "benchmarks/stock/no_such_script.py"
    with pytest.raises(ConfigError, match="fetch_stock_example.sh"):
        run_stock(cfg, JobSettings(10), "cold", tmp_path, tmp_path, tmp_path)


def test_the_stock_script_gets_an_empty_wandb_only_where_wandb_is_missing(tmp_path, monkeypatch):
    """The stock example imports wandb at its top; where it is not installed the harness puts an empty module on
    the stock run's path, and leaves an installed wandb alone."""
    import importlib.util
    import subprocess
    import sys

    from benchmarks import time_to_lora

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    folder = time_to_lora.wandb_stand_in(tmp_path)
    assert folder is not None and folder.is_relative_to(tmp_path)
    found = subprocess.run([sys.executable, "-c", "import wandb; print(wandb.__file__)"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(folder)}, check=True).stdout
    assert found.strip().startswith(str(folder))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert time_to_lora.wandb_stand_in(tmp_path / "other") is None


def test_cudnn_attention_off_reaches_a_fresh_interpreter(tmp_path):
    import os
    import subprocess

    folder = cudnn_attention_off(tmp_path)
    probe = [sys.executable, "-c", "import torch; print(torch.backends.cuda.cudnn_sdp_enabled())"]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "False"
    env.pop("PYTHONPATH")
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"
