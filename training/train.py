"""LoRA Diffusion-DPO training: ``python -m training.train --config configs/demo.yaml [--key value | key=value ...]``.

Reads ``train.data`` (a preference set), writes ``train.output_dir`` (``pytorch_lora_weights.safetensors``,
README.md model card, resolved config, metrics) atomically at the end; checkpoints, the latent cache and
logs live in ``train.work_dir``. Multi-GPU/multi-node: run the same module under ``accelerate launch``.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from core.cli import StageCLI, run_main
from core.config import config_name, load_stage_config
from training.callbacks import TrainerCallback
from training.config import TrainConfig, resolve_paths
from training.kernels import KernelOptions
from training.trainer import Trainer


def train(cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = (), kernels: KernelOptions | None = None) -> dict:
    """Run (or resume) training of ``cfg``; return the summary (``training_summary.json``), or ``{"stopped_at": s}``
    when a callback stopped the run. ``callbacks``: training/callbacks.py (profiling, test hooks); ``kernels``:
    kernel choices of the benchmarks and tests (training/kernels.py)."""
    return Trainer(cfg, callbacks, kernels).train()


def load_config(config_path: str | None, overrides: list[str]) -> TrainConfig:
    cfg = load_stage_config(TrainConfig, config_path, "train", overrides)
    return resolve_paths(cfg, config_name(config_path))


CLI = StageCLI(TrainConfig, "train", prog="python -m training.train", description=__doc__)


def build_parser():
    parser = CLI.parser()
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="latest or a checkpoint folder (= resume=...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])

    def work() -> None:
        cfg = load_config(args.config, overrides)
        summary = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
            print(f"wrote {cfg.output_dir} ({summary['pairs_per_s']:.2f} pairs/s steady, "
                  f"{summary['pairs_per_s_wall']:.2f} pairs/s over the whole run)")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
