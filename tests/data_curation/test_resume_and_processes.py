"""A killed run restarted gives exactly the uninterrupted run's pairs; 2 CPU processes give the same set."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import yaml

from preference_sets.io import shard_paths

REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, model: Path) -> Path:
    curate = {
        "model": str(model),
        # Batches split across processes (as on GPUs); on a CPU launch "auto" would split by task, which
        # test_two_cpu_processes_split_by_task_make_the_same_set covers.
        "process_split": "batches",
        "output_dir": str(folder / "set"),
        "work_dir": str(folder / "work"),
        "generation": {"steps": 3, "batch_size": 2},
        "scorers": {"nudenet": {}},
        "risks": {
            "exposure": {
                "prompts": {
                    "source": "templates",
                    "templates": ["a photo of a {animal} at the {place}", "a {animal} in a {place}"],
                    # 40 prompts x 2 seeds: every image gives a pair, so the first 64 specs (one block:
                    # lcm(batch 2 x processes, scoring chunk 64)) give the 12 pairs and the run stops before the last 16.
                    "slots": {"animal": ["cat", "dog", "person", "horse"],
                              "place": ["beach", "park", "office", "forest", "street"]},
                },
                "strategy": "minimal_pair",
                "target_pairs": 12,
                "images_per_prompt": 2,
                "detector": {"scorer": "nudenet", "key": "nudenet_max", "threshold": 0.0, "safe_below": 1.0},
                "corrective": [{"negative_prompt": "nude"}],
            }
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"curate": curate}))
    return path


def command(config: Path, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "data_curation.curate", "--config", str(config)]
    accelerate = Path(sys.executable).with_name("accelerate")
    # As `make curate GPUS=N` does; ACCELERATE_USE_CPU=1 (see env()) makes the processes use gloo on CPU.
    return [str(accelerate), "launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"),
            "--num_processes", str(processes), "-m", "data_curation.curate", "--config", str(config)]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


def load_rows(folder: Path):
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(folder / "set")], split="train")
    return {r["pair_id"]: (r["jpg_0"], r["jpg_1"], r["label_0"], r["caption"]) for r in rows}


def pngs(folder: Path) -> int:
    return sum(1 for _ in (folder / "work" / "images").rglob("*.png")) if (folder / "work" / "images").exists() else 0


@pytest.mark.slow
def test_killed_run_restarts_to_identical_pairs(tiny_sd15_path, tmp_path):
    reference = write_config(tmp_path / "uninterrupted", tiny_sd15_path)
    subprocess.run(command(reference), cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)

    resumed = write_config(tmp_path / "killed", tiny_sd15_path)
    proc = subprocess.Popen(command(resumed), cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while pngs(tmp_path / "killed") < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = pngs(tmp_path / "killed")
    assert not (tmp_path / "killed" / "set").exists()
    # No temp files count as images: only complete PNGs are in the store.
    subprocess.run(command(resumed), cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    assert done_before_kill < pngs(tmp_path / "killed") == pngs(tmp_path / "uninterrupted") == 64 + 64
    assert load_rows(tmp_path / "killed") == load_rows(tmp_path / "uninterrupted")
    report = json.loads((tmp_path / "killed" / "set" / "curation_report.json").read_text())["per_risk"]["exposure"]
    assert (report["prompts"], report["original_images"], report["pairs_kept"]) == (40, 64, 12)  # stopped early


@pytest.mark.slow
def test_two_cpu_processes_make_the_same_set(tiny_sd15_path, tmp_path):
    single = write_config(tmp_path / "one", tiny_sd15_path)
    subprocess.run(command(single), cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    double = write_config(tmp_path / "two", tiny_sd15_path)
    result = subprocess.run(command(double, processes=2), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1/2: generated" in result.stdout and "rank 0/2: generated" in result.stdout
    assert load_rows(tmp_path / "two") == load_rows(tmp_path / "one")
    # Both processes stopped at the same point (early: ws.realise is collective, a divergence would hang).
    report = json.loads((tmp_path / "two" / "set" / "curation_report.json").read_text())
    assert report["per_risk"]["exposure"]["original_images"] == 64


def write_two_task_config(folder: Path, model: Path, process_split: str) -> Path:
    """Two risks and a retain set: three tasks for two processes (process_split: tasks)."""
    path = write_config(folder, model)
    config = yaml.safe_load(path.read_text())
    curate = config["curate"]
    curate["process_split"] = process_split
    curate["cross_risk_check"] = False  # the tiny detector flags every image (see test_curate_tiny.py)
    curate["risks"]["exposure"]["target_pairs"] = 6
    curate["risks"]["exposure_park"] = {
        "kind": "exposure",
        "prompts": {"source": "templates", "templates": ["a {animal} asleep in the {place}"],
                    "slots": {"animal": ["cat", "dog", "owl"], "place": ["park", "garden"]}},
        "strategy": "minimal_pair", "target_pairs": 4, "images_per_prompt": 1,
        "detector": {"scorer": "nudenet", "key": "nudenet_max", "threshold": 0.0, "safe_below": 1.0},
        "corrective": [{"negative_prompt": "nude"}],
    }
    curate["retain"] = {"prompts": {"source": "templates", "templates": ["a {thing} on a shelf"],
                                    "slots": {"thing": ["cup", "book", "lamp", "vase"]}},
                        "output_dir": str(folder / "retain"), "drop_risky": False}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_cpu_processes_split_by_task_make_the_same_set(tiny_sd15_path, tmp_path):
    single = write_two_task_config(tmp_path / "one", tiny_sd15_path, "auto")  # one process: batches
    subprocess.run(command(single), cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    double = write_two_task_config(tmp_path / "two", tiny_sd15_path, "auto")  # CPU launch: tasks
    result = subprocess.run(command(double, processes=2), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_rows(tmp_path / "two") == load_rows(tmp_path / "one")
    retain = [datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / run / "retain")],
                                    split="train")["jpg"] for run in ("one", "two")]
    assert retain[0] == retain[1] and len(retain[0]) == 4

    report = json.loads((tmp_path / "two" / "set" / "curation_report.json").read_text())
    generation = report["generation"]
    assert generation["process_split"] == "tasks"
    tasks = [p["tasks"] for p in generation["per_process"]]
    assert all(tasks) and sorted(sum(tasks, [])) == ["exposure", "exposure_park", "retain"]  # each task once
    # The main process's replay found every image in the shared store; together the processes made exactly
    # the images of the one-process run.
    assert generation["images_generated_in_replay"] == 0
    assert generation["images_generated"] == pngs(tmp_path / "two") == pngs(tmp_path / "one")
    one = json.loads((tmp_path / "one" / "set" / "curation_report.json").read_text())
    assert report["per_risk"] == one["per_risk"]


def test_process_split_is_validated(tmp_path, tiny_sd15_path, capsys):
    from data_curation.curate import main

    config = write_two_task_config(tmp_path, tiny_sd15_path, "risks")
    assert main(["--config", str(config)]) == 2
    assert "curate.process_split must be one of ['auto', 'tasks', 'batches']" in capsys.readouterr().err
