"""Metric accumulation on device (no host sync per step) and logging to JSONL (the trainer also hands each record
to accelerate's tracker, ``train.report_to``).

Per step, metric tensors are summed on device. Every ``log_every`` steps the sums are averaged over
the steps, then over processes with ``accelerator.reduce(mean)`` (all processes run the same number of
micro-steps, so the mean of process means is the global mean), and only then copied to the host.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


class MetricAccumulator:
    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        # add_vector's running sum: (M,) float32 for the names in vector_names.
        self.vector_names: tuple[str, ...] = ()
        self.vector_sum: torch.Tensor | None = None

    def add(self, metrics: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for name, value in metrics.items():
            value = value.detach().float() * weight
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def add_vector(self, names: tuple[str, ...], values: torch.Tensor) -> None:
        """Add one step's metrics given as one (M,) tensor, ``values[i]`` being metric ``names[i]``.

        For the CUDA-graph step (training/graph.py), whose metrics are a static output that the next replay
        overwrites: the values are added into a sum of our own (one kernel per step instead of one per
        metric, no host sync). Equal to ``add(dict(zip(names, values)))`` element for element."""
        names = tuple(names)
        if self.vector_sum is None:
            self.vector_names, self.vector_sum = names, values.detach().float().clone()
            return
        if names != self.vector_names:
            raise ValueError(f"metric names changed between steps: {self.vector_names} -> {names}")
        self.vector_sum.add_(values.detach().float())

    def end_step(self) -> None:
        self.count += 1

    def reduce(self, accelerator) -> dict[str, float]:
        """Global means since the last call (one host sync); resets the sums."""
        if (not self.sums and self.vector_sum is None) or self.count == 0:
            return {}
        sums = dict(self.sums)
        if self.vector_sum is not None:
            overlap = set(sums) & set(self.vector_names)
            if overlap:
                raise ValueError(f"metrics {sorted(overlap)} were added both per name and as a vector")
            sums.update(zip(self.vector_names, self.vector_sum.unbind()))
        names = sorted(sums)
        local = torch.stack([sums[n] for n in names]) / self.count
        reduced = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
        values = reduced.cpu().tolist()
        self.sums, self.count = {}, 0
        self.vector_names, self.vector_sum = (), None
        return dict(zip(names, values))


def all_finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values())


class MetricLogger:
    """Main process only: appends one JSON object per log step to ``metrics.jsonl``."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.log_dir / "metrics.jsonl"

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines from steps after the checkpoint, so the file reads as one clean run."""
        if not self.jsonl_path.is_file():
            return
        kept = [line for line in self.jsonl_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.jsonl_path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, **values}
        with open(self.jsonl_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
