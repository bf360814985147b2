"""GPU check of ``train.cuda_graph``: the captured step against the eager one, resume, and speed.

Runs the project's trainer (``training.train.train``) on the demo recipe (configs/demo.yaml's ``train:`` section:
16 pairs + 4 retain images per step, bf16, retain anchor) over the demo's curated sets, in one process:

1. bf16: eager, eager again (the eager run's own run-to-run spread), captured; per-step loss and grad norm, and
   the final LoRA, each against the first eager run;
2. fp32 with TF32 off: eager vs captured (should agree to float32 rounding);
3. resume: a captured run stopped at half way and resumed (``resume=latest``) against the uninterrupted
   captured run of 1.;
4. speed: eager vs captured over ``--timing-steps`` steps at the demo's log interval (pairs/s of the trainer's
   steady intervals, i.e. without the first, which holds start-up, warm-up and the capture).

Usage (on the GPU machine, after the wheels are installed as in benchmarks/run_on_gpu.sh):
    python3 -m benchmarks.cuda_graph_check --data runs/demo/preference_set --retain runs/demo/retain_set \\
        --out $OUT [--steps 40] [--timing-steps 200]
Writes ``cuda_graph_check.json`` under --out and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from training.callbacks import StopAtStep
from training.kernels import KernelOptions
from training.train import load_config, train


def _run(name: str, args, extra: list[str], stop_at_step: int | None = None, allow_tf32: bool = True) -> dict:
    """One trainer run of the demo recipe with ``extra`` overrides; ``stop_at_step``: a crash after that step's
    checkpoint (StopAtStep); ``allow_tf32`` False: full float32 products (KernelOptions)."""
    work = Path(args.work) / name
    cache = Path(args.work) / "cache"
    if cache.is_dir() and not (work / "cache").exists():
        shutil.copytree(cache, work / "cache")  # the latent cache is keyed by content: build it once
    overrides = [f"data={args.data}", f"retain.data={args.retain}", f"work_dir={work}",
                 f"output_dir={work / 'lora'}", "progress_bar=false", "report_to=none", *extra]
    cfg = load_config("configs/demo.yaml", overrides)
    start = time.perf_counter()
    callbacks = [StopAtStep(stop_at_step)] if stop_at_step is not None else []
    summary = train(cfg, callbacks, KernelOptions(allow_tf32=allow_tf32))
    wall = time.perf_counter() - start
    if not cache.is_dir() and (work / "cache").is_dir():
        shutil.copytree(work / "cache", cache)
    metrics = _metrics(work / ("lora" if stop_at_step is None else "logs") / "metrics.jsonl")
    print(f"[{name}] {wall:.1f} s, cuda_graph={summary.get('cuda_graph')}, "
          f"pairs/s={summary.get('pairs_per_s', float('nan')):.1f}", flush=True)
    return {"name": name, "summary": summary, "wall_s": wall, "metrics": metrics, "lora": work / "lora"}


def _metrics(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def _compare(reference: dict, other: dict, steps: list[int] | None = None) -> dict:
    """Largest per-step |Δloss| and relative |Δgrad_norm| over ``steps``; the final LoRA's ||Δ|| / ||ref||."""
    steps = steps or sorted(reference["metrics"])
    loss = max(abs(other["metrics"][s]["loss"] - reference["metrics"][s]["loss"]) for s in steps)
    grad = max(abs(other["metrics"][s]["grad_norm"] - reference["metrics"][s]["grad_norm"])
               / max(abs(reference["metrics"][s]["grad_norm"]), 1e-12) for s in steps)
    a, b = _lora(reference["lora"]), _lora(other["lora"])
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5
    norm = sum(float(a[k].double().pow(2).sum()) for k in a) ** 0.5
    return {"max_abs_loss_diff": loss, "max_rel_grad_norm_diff": grad, "lora_rel_diff": diff / norm,
            "final_loss": (reference["metrics"][steps[-1]]["loss"], other["metrics"][steps[-1]]["loss"])}


def _reset_accelerate() -> None:
    # accelerate keeps one process-wide state whose mixed precision cannot change; fp32 runs follow bf16 ones.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--retain", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/cuda-graph-check")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--timing-steps", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    shutil.rmtree(args.work, ignore_errors=True)
    n, half = args.steps, args.steps // 2
    common = [f"max_train_steps={n}", "log_every=1", "checkpoint_every=0"]
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": n}

    eager = _run("bf16-eager", args, [*common, "cuda_graph=off"])
    eager2 = _run("bf16-eager-again", args, [*common, "cuda_graph=off"])
    graphed = _run("bf16-graph", args, [*common, "cuda_graph=on"])
    result["bf16"] = {"eager_vs_eager": _compare(eager, eager2), "graph_vs_eager": _compare(eager, graphed)}

    resume_common = [f"max_train_steps={n}", "log_every=1", f"checkpoint_every={half}", "cuda_graph=on"]
    _run("bf16-graph-parted", args, resume_common, stop_at_step=half)
    resumed = _run("bf16-graph-parted", args, [*resume_common, "resume=latest"])
    result["resume"] = _compare(graphed, resumed, steps=list(range(half + 1, n + 1)))

    _reset_accelerate()
    fp32 = ["mixed_precision=fp32"]
    fp32_eager = _run("fp32-eager", args, [*common, *fp32, "cuda_graph=off"], allow_tf32=False)
    fp32_graph = _run("fp32-graph", args, [*common, *fp32, "cuda_graph=on"], allow_tf32=False)
    result["fp32_no_tf32"] = {"graph_vs_eager": _compare(fp32_eager, fp32_graph)}

    _reset_accelerate()
    timing = [f"max_train_steps={args.timing_steps}", "log_every=10", "checkpoint_every=0"]
    speed = {}
    for mode in ("off", "on"):
        run = _run(f"timing-{mode}", args, [*timing, f"cuda_graph={mode}"])
        first = run["metrics"][min(run["metrics"])]["pairs_per_s"]
        speed[mode] = {"pairs_per_s": run["summary"]["pairs_per_s"], "first_interval_pairs_per_s": first,
                       "wall_s": run["wall_s"], "cuda_graph": run["summary"]["cuda_graph"]}
    result["speed"] = speed

    for record in (eager, eager2, graphed, resumed, fp32_eager, fp32_graph):
        record.pop("lora", None)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "cuda_graph_check.json").write_text(json.dumps(result, indent=2, default=str))

    print(f"\nGPU {result['gpu']}, torch {result['torch']}, {n} steps of the demo recipe")
    print(f"{'comparison':34} {'max|Δloss|':>11} {'max rel Δgn':>12} {'LoRA ||Δ||/||ref||':>19}")
    rows = [("bf16 eager vs eager (spread)", result["bf16"]["eager_vs_eager"]),
            ("bf16 graph vs eager", result["bf16"]["graph_vs_eager"]),
            ("bf16 graph resumed vs graph", result["resume"]),
            ("fp32 (no TF32) graph vs eager", result["fp32_no_tf32"]["graph_vs_eager"])]
    for label, r in rows:
        print(f"{label:34} {r['max_abs_loss_diff']:11.3e} {r['max_rel_grad_norm_diff']:12.3e} {r['lora_rel_diff']:19.3e}")
    for mode, s in speed.items():
        print(f"speed cuda_graph={mode}: {s['pairs_per_s']:.1f} pairs/s steady "
              f"({16 / s['pairs_per_s'] * 1000:.1f} ms/step), first interval {s['first_interval_pairs_per_s']:.1f} "
              f"pairs/s, {args.timing_steps} steps in {s['wall_s']:.1f} s (captured: {s['cuda_graph']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
