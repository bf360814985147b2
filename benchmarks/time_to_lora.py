"""Time to a trained LoRA, end to end: launch → LoRA saved, the stock diffusers DPO example against ours.

    python -m benchmarks.time_to_lora [--config configs/bench.yaml] [--key value | key=value ...]

Steady-state throughput (``make bench``) hides what a user waits for: set-up, caching, compiling and the
reference pass are paid once per run. This harness launches both trainers as a user would (a fresh process,
``accelerate launch`` for the stock script, ``python -m training.train`` for ours) on the same data, the same
random-init model folder and the same job size, and times the wall clock from launch to the LoRA file on disk.

Data: a synthetic Pick-a-Pic-format set of JPEG pairs at the architecture's resolution, written once with
the project's writer and exported for the stock script with ``preference_sets.ops.export`` (the stock
script reads the exported folder with ``datasets.load_dataset``).

Caches. ``cold``: fresh compile caches (inductor, triton), a fresh datasets cache for the stock side and a
fresh work folder (latent and reference caches) for ours. ``warm``: a second run of the same job that keeps
the compile caches and the datasets cache of the cold run (``warm_reuses: [compile]``); with
``warm_reuses: [compile, data]`` ours also keeps its latent and reference caches (a sweep over loss or LoRA
settings on one set).

Large jobs. Jobs with ``measure: false`` are extrapolated from the measured phases of the smallest measured
job of the same cache state (``extrapolate``), and their entries say ``measured: false``.

The stock script is peer code: it is never committed. ``benchmarks/fetch_stock_example.sh`` copies it from a
local diffusers checkout into the git-ignored ``benchmarks/stock/``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import yaml

from benchmarks.architectures import build_model_folder
from benchmarks.measure import environment
from benchmarks.report import results_path
from benchmarks.synthetic_data import write_synthetic_set
from core.cli import StageCLI, resolve_device, run_main
from core.config import load_stage_config, to_dict, write_resolved_config
from core.errors import ConfigError
from core.io import atomic_write_json
from preference_sets.ops import export

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/bench.yaml"
# tqdm bars: the stock script's "Steps:  1%|...| 1/96 [...]" and ours' "train:  1%|...| 1/48 [...]".
STOCK_STEP = re.compile(r"Steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
OURS_STEP = re.compile(r"train:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


@dataclass
class JobSettings:
    pairs: int = field(metadata={"help": "Preference pairs in the set."})
    passes: int = field(default=1, metadata={"help": "Passes over the set (pair visits = pairs x passes)."})
    measure: bool = field(default=True, metadata={
        "help": "Run it (true) or extrapolate it from the measured phases of a smaller job (false)."})

    @property
    def name(self) -> str:
        return f"{self.pairs}x{self.passes}"

    def validate(self) -> None:
        if self.pairs < 1 or self.passes < 1:
            raise ValueError(f"job {self.name}: pairs and passes must be >= 1")


@dataclass
class StockSettings:
    script: str = field(default="benchmarks/stock/train_diffusion_dpo.py", metadata={
        "help": "The stock diffusers example (git-ignored; benchmarks/fetch_stock_example.sh fetches it)."})
    train_batch_size: int = field(default=16, metadata={"help": "--train_batch_size (pairs per step)."})
    rank: int = field(default=8, metadata={"help": "--rank (LoRA rank)."})
    dataloader_num_workers: int = field(default=8, metadata={"help": "--dataloader_num_workers."})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="bf16", metadata={"help": "--mixed_precision."})
    learning_rate: float = field(default=1e-5, metadata={"help": "--learning_rate."})
    beta_dpo: int = field(default=2500, metadata={"help": "--beta_dpo, an integer in the script (ours: beta = 2 x this)."})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "More arguments, verbatim."})
    cudnn_attention: bool = field(default=True, metadata={
        "help": "false: torch's cuDNN attention backend off in the stock script's processes (a sitecustomize "
                "shim on its PYTHONPATH), where that backend's backward fails at the job's shapes (torch's "
                "'mha_graph.execute' error at SDXL's); the flash and memory-efficient kernels then run."})


@dataclass
class TimeToLoraConfig:
    arch: Literal["sd15", "sdxl"] = field(default="sd15", metadata={
        "help": "Architecture (random init from the published config). The stock side runs the SD1.5 example "
                "script; for sdxl point stock.script at train_diffusion_dpo_sdxl.py."})
    scale: Literal["full", "tiny"] = field(default="full", metadata={
        "help": "full: the real architecture; tiny: toy widths for a CPU smoke run."})
    resolution: Optional[int] = field(default=None, metadata={
        "help": "Image side in px; null: the architecture's native size (512 for SD1.5, 1024 for SDXL)."})
    jobs: list[JobSettings] = field(default_factory=lambda: [
        JobSettings(1536), JobSettings(20000, 1, False), JobSettings(20000, 4, False)], metadata={
        "help": "Job sizes. Measured ones run; the others are extrapolated."})
    caches: list[Literal["cold", "warm"]] = field(default_factory=lambda: ["cold", "warm"], metadata={
        "help": "Cache states to time; warm runs after cold and reuses its caches."})
    warm_reuses: list[Literal["compile", "data"]] = field(default_factory=lambda: ["compile"], metadata={
        "help": "What a warm run keeps from the cold one: compile caches (inductor, triton; the stock side's "
                "datasets cache), and with data also ours' latent and reference caches."})
    sides: list[Literal["stock", "ours", "ours_compiled"]] = field(
        default_factory=lambda: ["stock", "ours", "ours_compiled"], metadata={
            "help": "Which trainers to run. ours: the config as shipped (compile_unet auto decides per job); "
                    "ours_compiled: the same with compile_unet: full, run on the measured jobs only so that the "
                    "extrapolated large jobs (where auto compiles) rest on a measured compiled rate and compile "
                    "time."})
    stock: StockSettings = field(default_factory=StockSettings, metadata={"help": "The stock example's arguments."})
    ours_config: str = field(default="configs/sd15.yaml", metadata={
        "help": "The config whose train: section ours runs (as shipped, but for data, output and steps)."})
    ours_overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "train: keys changed for ours, e.g. {compile_unet: auto}."})
    work_dir: str = field(default="runs/time_to_lora", metadata={
        "help": "Model, sets, caches and outputs of the runs (reused between calls: the model and sets are built "
                "once)."})
    results_dir: str = field(default="benchmarks/results", metadata={"help": "Where the result JSON goes."})
    tag: str = field(default="time-to-lora", metadata={"help": "Suffix of the result file name."})
    timeout_s: int = field(default=3600, metadata={"help": "A run that takes longer is stopped and reported."})

    def validate(self) -> None:
        for job in self.jobs:
            job.validate()
        if not any(job.measure for job in self.jobs):
            raise ValueError("jobs: at least one job must be measured (the others are extrapolated from it)")
        if "warm" in self.caches and "cold" not in self.caches:
            raise ValueError("caches: warm runs reuse the cold run's caches; list cold too")

    def native_resolution(self) -> int:
        if self.resolution:
            return self.resolution
        if self.scale == "tiny":
            return 32  # core.tiny_models' sample size
        return 512 if self.arch == "sd15" else 1024


@dataclass
class RunTiming:
    """One launch of one trainer: seconds from launch (process start)."""

    side: str
    job: str
    caches: str
    wall_s: float
    first_step_s: Optional[float]
    steps: int
    pairs_per_step: int
    returncode: int
    phases_s: dict[str, float] = field(default_factory=dict)
    log_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}


def stream_with_first_step(command: list[str], env: dict[str, str], log_path: Path, timeout_s: int,
                           first_step_pattern: re.Pattern) -> tuple[int, float, Optional[float]]:
    """Run ``command``; return (exit status, wall seconds, seconds to the first completed step or None).

    The stock script reports steps only through its tqdm bar, written with carriage returns, so the output is
    read in chunks and split on both \\r and \\n; the first match of ``first_step_pattern`` with a count >= 1
    marks the first step done."""
    start = time.perf_counter()
    first_step: list[float] = []
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pump() -> None:
            pending = b""
            for chunk in iter(lambda: process.stdout.read1(65536), b""):
                log.write(chunk)
                pending += chunk
                *pieces, pending = re.split(rb"[\r\n]", pending)
                if not first_step:
                    for piece in pieces:
                        found = first_step_pattern.search(piece.decode("utf-8", "replace"))
                        if found and int(found.group(1)) >= 1:
                            first_step.append(time.perf_counter() - start)
                            break

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = -9
        reader.join(timeout=30)
    return returncode, time.perf_counter() - start, (first_step[0] if first_step else None)


def cache_env(root: Path) -> dict[str, str]:
    """Compile and dataset caches of one cache state, all under ``root``."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton"),
            "HF_DATASETS_CACHE": str(root / "datasets"), "SAFE_DPO_COMPILE_CACHE": str(root / "torch_compile")}


def wandb_stand_in(work_dir: Path) -> Path | None:
    """A folder holding an empty ``wandb`` module, or None when wandb is installed. The stock script imports
    wandb at its top although it reports to tensorboard here (it calls wandb only with ``--report_to wandb``), and
    the GPU machine has no wandb wheel: the empty module lets it start without changing what it runs."""
    if importlib.util.find_spec("wandb") is not None:
        return None
    folder = work_dir / "stand_ins"
    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    (folder / "wandb" / "__init__.py").write_text('"""Empty stand-in: the stock script imports wandb but reports to '
                                                  'tensorboard (benchmarks/time_to_lora.py)."""\n')
    return folder


def cudnn_attention_off(work_dir: Path) -> Path:
    """A folder holding a ``sitecustomize`` that turns torch's cuDNN attention backend off at interpreter start, so
    the unchanged stock script runs on the flash / memory-efficient kernels (``stock.cudnn_attention: false``)."""
    folder = work_dir / "cudnn_attention_off"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        '"""stock.cudnn_attention: false (benchmarks/time_to_lora.py)."""\nimport torch\n\n'
        'torch.backends.cuda.enable_cudnn_sdp(False)\n')
    return folder


def run_stock(cfg: TimeToLoraConfig, job: JobSettings, caches: str, model_dir: Path, stock_set: Path,
              cache_root: Path) -> RunTiming:
    script = REPO / cfg.stock.script
    if not script.is_file():
        raise ConfigError(f"stock.script {script} is missing: run benchmarks/fetch_stock_example.sh "
                          "/path/to/a/diffusers/checkout first (the stock example is never committed)")
    steps = math.ceil(job.pairs * job.passes / cfg.stock.train_batch_size)
    out = Path(cfg.work_dir) / "outputs" / f"stock-{job.name}-{caches}"
    shutil.rmtree(out, ignore_errors=True)  # written by this harness only (under its work_dir)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", cfg.stock.mixed_precision, "--dynamo_backend", "no", str(script),
               "--pretrained_model_name_or_path", str(model_dir), "--dataset_name", str(stock_set), "--dataset_split_name", "train",
               "--output_dir", str(out), "--resolution", str(cfg.native_resolution()),
               "--train_batch_size", str(cfg.stock.train_batch_size), "--rank", str(cfg.stock.rank),
               "--dataloader_num_workers", str(cfg.stock.dataloader_num_workers),
               "--mixed_precision", cfg.stock.mixed_precision, "--learning_rate", str(cfg.stock.learning_rate),
               "--beta_dpo", str(cfg.stock.beta_dpo), "--max_train_steps", str(steps),
               "--checkpointing_steps", str(10 * steps + 1), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
               "--seed", "0", "--report_to", "tensorboard", *cfg.stock.extra_args]
    env = {**os.environ, **cache_env(cache_root)}
    stand_ins = [folder for folder in (wandb_stand_in(Path(cfg.work_dir)),
                                       None if cfg.stock.cudnn_attention else cudnn_attention_off(Path(cfg.work_dir)))
                 if folder is not None]
    if stand_ins:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, stand_ins),
                                             *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    log_path = Path(cfg.work_dir) / "logs" / f"stock-{job.name}-{caches}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    returncode, wall, first = stream_with_first_step(command, env, log_path, cfg.timeout_s, STOCK_STEP)
    saved = (out / "pytorch_lora_weights.safetensors").is_file()
    return RunTiming("stock", job.name, caches, wall, first, steps, cfg.stock.train_batch_size,
                     returncode if saved or returncode else 1, log_tail=_tail(log_path))


def ours_train_section(cfg: TimeToLoraConfig, job: JobSettings, data: Path, out: Path, work: Path) -> dict:
    section = dict(yaml.safe_load((REPO / cfg.ours_config).read_text())["train"])
    section.update(cfg.ours_overrides)
    pairs_per_step = section.get("pairs_per_step") or (
        section.get("micro_batch_size", 8) * section.get("gradient_accumulation_steps", 1))
    section.update(model=None, data=str(data), output_dir=str(out), work_dir=str(work), overwrite=True,
                   max_train_steps=math.ceil(job.pairs * job.passes / pairs_per_step),
                   checkpoint_every=10 ** 9, report_to="none", progress_bar=True, resume=None)
    return section


def run_ours(cfg: TimeToLoraConfig, job: JobSettings, caches: str, model_dir: Path, our_set: Path,
             cache_root: Path, side: str = "ours") -> RunTiming:
    base = Path(cfg.work_dir)
    out = base / "outputs" / f"{side}-{job.name}-{caches}"
    work = base / f"{side}_work" / f"{job.name}-{caches}"
    cold_work = base / f"{side}_work" / f"{job.name}-cold"
    shutil.rmtree(work, ignore_errors=True)  # written by this harness only (under its work_dir)
    if caches == "warm" and "data" in cfg.warm_reuses and (cold_work / "cache").is_dir():
        shutil.copytree(cold_work / "cache", work / "cache")
    section = ours_train_section(cfg, job, our_set, out, work)
    section["model"] = str(model_dir)
    if side == "ours_compiled":
        section["compile_unet"] = "full"
    section.setdefault("compile_cache_dir", str(cache_root / "torch_compile"))  # cold means cold for ours too
    config_path = base / "configs" / f"{side}-{job.name}-{caches}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump({"train": section}))
    command = [sys.executable, "-m", "training.train", "--config", str(config_path)]
    env = {**os.environ, **cache_env(cache_root), "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    log_path = base / "logs" / f"{side}-{job.name}-{caches}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Ours prints a tqdm bar too ("train: ... | n/N"); its summary's timeline is preferred when present.
    returncode, wall, first = stream_with_first_step(command, env, log_path, cfg.timeout_s, OURS_STEP)
    summary_file = out / "training_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    phases = dict(summary.get("timeline_s") or {})
    if "first_step_done" in phases:
        first = phases["first_step_done"]
    saved = (out / "pytorch_lora_weights.safetensors").is_file()
    return RunTiming(side, job.name, caches, wall, first, section["max_train_steps"],
                     summary.get("pairs_per_step", 0), returncode if saved or returncode else 1, phases,
                     _tail(log_path))


def _tail(path: Path, chars: int = 1500) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text[-chars:]


def fixed_and_rates(run: RunTiming, pairs: int, pair_visits: int) -> dict[str, float]:
    """Linear cost model of one run: wall = fixed + once_per_pair x pairs + per_visit x pair_visits.

    per_visit comes from the steps after the first (the steady loop, saving included) plus, for ours, its reference
    pass without the pass's compile (one row per pair visit), once_per_pair from ours' latent caching
    (``timeline_s``: latent_cache_s), and fixed is the rest (start-up, compiling)."""
    if run.first_step_s is None or run.steps < 2:
        raise ConfigError(f"{run.side} {run.job} {run.caches}: no first-step time or too few steps to extrapolate")
    reference = max(run.phases_s.get("reference_pass_s", 0.0) - run.phases_s.get("reference_compile_s", 0.0), 0.0)
    per_visit = (run.wall_s - run.first_step_s) / max(pair_visits - run.pairs_per_step, 1) + reference / pair_visits
    once = run.phases_s.get("latent_cache_s", 0.0) / pairs
    fixed = run.wall_s - once * pairs - per_visit * pair_visits
    return {"fixed_s": fixed, "once_per_pair_s": once, "per_pair_visit_s": per_visit}


def extrapolate(model: dict[str, float], job: JobSettings) -> float:
    return model["fixed_s"] + model["once_per_pair_s"] * job.pairs + model["per_pair_visit_s"] * job.pairs * job.passes


def prepare(cfg: TimeToLoraConfig, job: JobSettings, device: str) -> tuple[Path, Path, Path]:
    """The model folder, our set and its stock export for ``job`` (built once under work_dir)."""
    base = Path(cfg.work_dir)
    resolution = cfg.native_resolution()
    model_dir = build_model_folder(cfg.arch, cfg.scale, base / "models" / f"{cfg.arch}-{cfg.scale}",
                                   dtype=torch.bfloat16, device=device)
    our_set = write_synthetic_set(base / "sets" / f"{job.pairs}-{resolution}px", job.pairs, resolution,
                                  image_format="jpeg")
    stock_set = base / "sets" / f"{job.pairs}-{resolution}px-stock"
    if not (stock_set / "README.md").is_file():
        export(our_set, stock_set, overwrite=True)
    return model_dir, our_set, stock_set


def run(cfg: TimeToLoraConfig) -> dict[str, Any]:
    device = resolve_device("auto")
    env = environment(device)
    gpu = env.get("gpu_name") or device
    runs: list[RunTiming] = []
    result = {"config": to_dict(cfg), "environment": env, "runs": [], "end_to_end": [], "cost_models": {}}
    path = results_path(cfg.results_dir, env, cfg.tag)
    for job in (j for j in cfg.jobs if j.measure):
        model_dir, our_set, stock_set = prepare(cfg, job, device)
        cache_root = Path(cfg.work_dir) / "caches" / job.name
        for caches in cfg.caches:
            if caches == "cold":
                shutil.rmtree(cache_root, ignore_errors=True)  # written by this harness only
            for side in cfg.sides:
                if side == "stock":
                    timing = run_stock(cfg, job, caches, model_dir, stock_set, cache_root / side)
                else:
                    timing = run_ours(cfg, job, caches, model_dir, our_set, cache_root / side, side)
                runs.append(timing)
                print(f"[time_to_lora] {side:13s} {job.name:>8s} {caches}: wall {timing.wall_s:7.1f} s, first step "
                      f"{timing.first_step_s if timing.first_step_s is None else round(timing.first_step_s, 1)} s, "
                      f"rc {timing.returncode}", flush=True)
                result["runs"] = [r.as_dict() for r in runs]
                atomic_write_json(path, result)
    result["end_to_end"] = end_to_end_entries(cfg, runs, gpu, result["cost_models"])
    atomic_write_json(path, result)
    write_resolved_config(cfg, Path(cfg.work_dir))
    print(format_end_to_end(result["end_to_end"]))
    print(f"wrote {path}")
    return result


def end_to_end_entries(cfg: TimeToLoraConfig, runs: list[RunTiming], gpu: str, cost_models: dict) -> list[dict]:
    """The fixed-shape ``end_to_end`` list: one entry per job and cache state, measured or extrapolated."""
    by_key = {(r.side, r.job, r.caches): r for r in runs if r.returncode == 0}
    measured_jobs = [j for j in cfg.jobs if j.measure]
    entries = []
    for job in cfg.jobs:
        for caches in cfg.caches:
            entry: dict[str, Any] = {"job": job.name, "caches": caches, "measured": job.measure, "gpu": gpu}
            for side in ("stock", "ours"):
                if job.measure:
                    timing = by_key.get((side, job.name, caches))
                    entry[f"{side}_wall_s"] = round(timing.wall_s, 1) if timing else None
                    entry[f"{side}_first_step_s"] = (round(timing.first_step_s, 1)
                                                     if timing and timing.first_step_s else None)
                    continue
                source = min(measured_jobs, key=lambda j: j.pairs * j.passes)
                # Ours: the eager and the compiled run's cost models; the large job takes the one that predicts
                # less, as compile_unet auto compiles once the job repays it (its decision is logged per run).
                predictions = {}
                for variant in ((side,) if side == "stock" else ("ours", "ours_compiled")):
                    timing = by_key.get((variant, source.name, caches))
                    if timing is None:
                        continue
                    model = fixed_and_rates(timing, source.pairs, timing.steps * timing.pairs_per_step)
                    cost_models[f"{variant}-{source.name}-{caches}"] = model
                    predictions[variant] = extrapolate(model, job)
                if not predictions:
                    entry[f"{side}_wall_s"] = None
                    continue
                chosen = min(predictions, key=predictions.get)
                entry[f"{side}_wall_s"] = round(predictions[chosen], 1)
                entry["extrapolated_from"] = source.name
                if side == "ours":
                    entry["ours_mode"] = "compiled" if chosen == "ours_compiled" else "as measured (auto)"
            if entry.get("stock_wall_s") and entry.get("ours_wall_s"):
                entry["speedup"] = round(entry["stock_wall_s"] / entry["ours_wall_s"], 2)
            entries.append(entry)
    return entries


def format_end_to_end(entries: list[dict]) -> str:
    lines = ["| job | caches | stock s | ours s | stock/ours | measured |", "|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['job']} | {e['caches']} | {e.get('stock_wall_s')} | {e.get('ours_wall_s')} | "
                     f"{e.get('speedup', '')} | {'yes' if e['measured'] else 'no (extrapolated)'} |")
    return "\n".join(lines)


CLI = StageCLI(TimeToLoraConfig, "time_to_lora", prog="python -m benchmarks.time_to_lora", description=__doc__,
               config_default=DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv)

    def work() -> None:
        cfg = load_stage_config(TimeToLoraConfig, args.config or DEFAULT_CONFIG, "time_to_lora",
                                list(args.overrides))
        run(cfg)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
