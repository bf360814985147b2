"""The trainer's command line (``--config`` plus ``--key value`` flags and ``key=value`` words) and its metric
tracker (``report_to``: tensorboard, wandb offline, none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.cli import config_key_docs
from core.errors import ConfigError
from tests.training.conftest import tiny_config
from training import train as train_module
from training.callbacks import start_tracker
from training.config import TrainConfig
from training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def test_python_m_training_train_help_lists_every_key():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    for doc in config_key_docs(TrainConfig):
        assert f"--{doc.key} ({doc.type}" in out and " ".join(doc.help.split()) in out, doc.key
    assert "--report_to (tensorboard | wandb | none, default: tensorboard)" in out


def test_demo_config_with_flag_overrides(tiny_sd15_path, tiny_set, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs/demo.yaml as the README runs it
    out = tmp_path / "lora"
    status = train_module.main([
        "--config", "configs/demo.yaml", "--max_train_steps", "2", "--output_dir", str(out),
        "--model", str(tiny_sd15_path), f"data={tiny_set}", "--work_dir", str(tmp_path / "work"),
        "--lora.rank", "4", "lora.alpha=4", "--retain.weight", "0", "--rpo_alpha_per_risk", "{}",
        "rpo_rejected_share_per_risk={}", "--pairs_per_step", "2", "--mixed_precision", "fp32",
        "--report_to", "none", "--progress_bar", "false", "--log_every=1"])
    assert status == 0
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert (resolved["max_train_steps"], resolved["lora"]["rank"], resolved["lora"]["alpha"]) == (2, 4, 4.0)
    assert resolved["beta"] == 1000.0  # from configs/demo.yaml
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "work" / "logs" / "tensorboard").exists()  # report_to none


def test_report_to_wandb_runs_offline(tiny_sd15_path, tiny_set, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # recorded, so the value the trainer sets is undone afterwards
    monkeypatch.delenv("WANDB_MODE")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_module.train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", "report_to=wandb",
                                   "max_train_steps=2"))
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "run" / "work" / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_report_to_keeps_the_users_wandb_mode(monkeypatch, tmp_path):
    started = {}

    class FakeAccelerator:
        def init_trackers(self, project, config=None, init_kwargs=None):
            started.update(project=project, config=config, init_kwargs=init_kwargs, mode=os.environ.get("WANDB_MODE"))

    cfg = tiny_config(Path("m"), Path("d"), tmp_path / "run", "report_to=wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    start_tracker(cfg, FakeAccelerator(), tmp_path / "logs")
    assert started["mode"] == "online"
    assert started["init_kwargs"]["wandb"]["dir"] == str(tmp_path / "logs")
    assert started["config"]["lora.rank"] == 4 and started["config"]["max_train_steps"] == 3
    monkeypatch.delenv("WANDB_MODE")
    start_tracker(cfg, FakeAccelerator(), tmp_path / "logs")
    assert started["mode"] == "offline"


def test_report_to_wandb_without_the_package_is_a_clear_error(tiny_sd15_path, tiny_set, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"train.report_to=wandb needs the wandb package.*pip install wandb"):
        train_module.train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", "report_to=wandb"))
    assert not (tmp_path / "run" / "lora").exists()
    assert train_module.main(["--model", str(tiny_sd15_path), f"data={tiny_set}", "--report_to", "wandb",
                              "--work_dir", str(tmp_path / "w"), "--output_dir", str(tmp_path / "o")]) == 2
