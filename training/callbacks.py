"""Trainer callbacks: what watches or steers a run from outside the recipe (training/trainer.py).

The trainer calls every callback's hooks, in order, at its phase boundaries and around each optimiser step:

    on_phase_end(trainer, phase, seconds)   after each phase of Trainer.PHASES (setup, caches, model,
                                            reference_pass, steps, save): the run's timing points
    on_step_form(trainer, form)             once, before the step function is built: may ask for the CUDA graph's
                                            static-input step where nothing is captured (StepForm)
    on_steps_begin(trainer)                 before the first optimiser step of this run (after a resume, too)
    on_step_begin(trainer, step)            before optimiser step ``step`` (0-based) draws its pairs
    on_step_end(trainer, done, control)     after ``done`` = step + 1 steps: may ask for a log record, a checkpoint
                                            or a stop (StepControl)
    on_log(trainer, done, values)           a log record: global means since the last one, checked finite
    on_steps_end(trainer, done)             after the last step run (or a stop), before the output is written

The default callbacks write ``metrics.jsonl`` (MetricFile), feed the ``report_to`` tracker (Tracker) and draw the
progress bar (ProgressBar). The others replace what used to be monkey-patching or test-only arguments: a profiler
stepped once per optimiser step (ProfilerSteps), a simulated crash (StopAtStep), the static-input step on a CPU
(StaticInputStep).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from core.config import to_dict
from core.errors import ConfigError
from training.config import TrainConfig
from training.metrics import MetricLogger


@dataclass
class StepControl:
    """What the loop does after an optimiser step. The trainer fills in its own schedule (``log_every``,
    ``checkpoint_every``, the last step); a callback may ask for more. A checkpoint always comes with a log record,
    so no checkpoint is written after a non-finite loss. ``stop``: end the run after this step's checkpoint,
    without an output folder, as a crash there would (``Trainer.train`` returns ``{"stopped_at": done}``)."""

    log: bool
    checkpoint: bool
    stop: bool = False


@dataclass
class StepForm:
    """How each optimiser step runs (training/graph.py). ``capture``: the step is CUDA-graph captured
    (``train.cuda_graph`` resolved). ``static_inputs``: the graph path's step on static inputs; without ``capture``
    it runs eagerly, which the CPU tests compare with the eager step. Neither: the eager step."""

    capture: bool
    static_inputs: bool

    @property
    def graph_path(self) -> bool:
        return self.capture or self.static_inputs


class TrainerCallback:
    """Every hook is a no-op here; subclasses override the ones they need (module docstring)."""

    def on_phase_end(self, trainer, phase: str, seconds: float) -> None:
        pass

    def on_step_form(self, trainer, form: StepForm) -> None:
        pass

    def on_steps_begin(self, trainer) -> None:
        pass

    def on_step_begin(self, trainer, step: int) -> None:
        pass

    def on_step_end(self, trainer, done: int, control: StepControl) -> None:
        pass

    def on_log(self, trainer, done: int, values: dict[str, float]) -> None:
        pass

    def on_steps_end(self, trainer, done: int) -> None:
        pass


class MetricFile(TrainerCallback):
    """Main process: one JSON record per log step in ``<work_dir>/logs/metrics.jsonl``. On resume the records of
    steps after the checkpoint are dropped first, so the file reads as one clean run."""

    def __init__(self, log_dir: str | Path) -> None:
        self.logger = MetricLogger(log_dir)

    def on_steps_begin(self, trainer) -> None:
        self.logger.truncate_after(trainer.start_step)

    def on_log(self, trainer, done: int, values: dict[str, float]) -> None:
        self.logger.log(done, values)


class Tracker(TrainerCallback):
    """accelerate's ``report_to`` tracker, started with the resolved config before the first step; each log record
    goes to it (accelerate keeps it to the main process)."""

    def on_steps_begin(self, trainer) -> None:
        start_tracker(trainer.cfg, trainer.accelerator, trainer.work_dir / "logs")

    def on_log(self, trainer, done: int, values: dict[str, float]) -> None:
        trainer.accelerator.log(values, step=done)


class ProgressBar(TrainerCallback):
    """The training progress bar (``train.progress_bar``, main process): loss, accuracy, and per log two rates:
    ``pairs_s`` (steady, over the last interval) and ``pairs_s_wall`` (over the run's wall time so far)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar = None

    def on_steps_begin(self, trainer) -> None:
        self.bar = tqdm(total=trainer.cfg.max_train_steps, initial=trainer.start_step, desc="train",
                        disable=not self.show)

    def on_step_end(self, trainer, done: int, control: StepControl) -> None:
        self.bar.update(1)

    def on_log(self, trainer, done: int, values: dict[str, float]) -> None:
        # The first interval holds the first step's compiling and warm-up: its rate is labelled as such, and the
        # steady rate appears from the second interval on.
        first = len(trainer.clock.timed) == 1
        rate = {"pairs_s_first_interval" if first else "pairs_s": f"{values['pairs_per_s']:.1f}",
                "pairs_s_wall": f"{values['pairs_per_s_wall']:.1f}"}
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values.get('implicit_accuracy', 0):.2f}", **rate)

    def on_steps_end(self, trainer, done: int) -> None:
        self.bar.close()


class ProfilerSteps(TrainerCallback):
    """Steps a ``torch.profiler.profile`` (anything with ``step()``) at the start of every optimiser step, so its
    schedule (wait, warm-up, active) counts optimiser steps (benchmarks/profile_train_step.py)."""

    def __init__(self, profiler) -> None:
        self.profiler = profiler

    def on_step_begin(self, trainer, step: int) -> None:
        self.profiler.step()


class StopAtStep(TrainerCallback):
    """Simulates a crash right after step ``step`` (1-based count of steps done) and its checkpoint: the resume
    tests and benchmarks/cuda_graph_check.py continue from there with ``resume=latest``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, done: int, control: StepControl) -> None:
        if done == self.step:
            control.log = control.checkpoint = control.stop = True


class StaticInputStep(TrainerCallback):
    """Runs the CUDA graph's static-input step (training/graph.py) where nothing is captured, eagerly: on a CPU the
    tests compare it with the eager step, which it must train exactly."""

    def on_step_form(self, trainer, form: StepForm) -> None:
        form.static_inputs = True


def check_tracker(report_to: str) -> None:
    """A tracker whose package is missing fails here, by name (accelerate would drop it without a word)."""
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(f"train.report_to={report_to} needs the {package} package, which is not installed "
                          f"({exc}): pip install {package}, or set report_to: none") from exc


def start_tracker(cfg: TrainConfig, accelerator, log_dir: Path) -> None:
    """accelerate's tracker for ``report_to``: tensorboard in ``log_dir/tensorboard``, wandb in ``log_dir/wandb``
    (offline unless the user set WANDB_MODE: nothing leaves the machine unasked). Given the resolved config."""
    if cfg.report_to == "none":
        return
    init_kwargs = {}
    if cfg.report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        log_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"wandb": {"dir": str(log_dir), "name": Path(cfg.output_dir).parent.name or None}}
    project = "tensorboard" if cfg.report_to == "tensorboard" else "safe-diffusion-dpo"
    accelerator.init_trackers(project, config=_flat_config(to_dict(cfg)), init_kwargs=init_kwargs)


def _flat_config(tree: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as dotted keys with scalar values (what trackers store as hyper-parameters)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat
