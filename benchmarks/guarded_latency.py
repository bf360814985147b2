"""What the guards cost: median generation latency of one request with and without the guard stack, on the CPU.

    python -m benchmarks.guarded_latency [--requests 200] [--threads 1] [--lora runs/demo/lora] [--out FILE]

Each request is one prompt at one seed. "Plain" is the model alone through the generation engine
(``inference.generation.generate``); "guarded" is the same prompt and seed through ``mitigations.stack``: the prompt
filter, the rewriter, the model and the output check (the world's configs and its oracle by default), with
regeneration off, so that the figure is the guards' own cost and not that of a second image. The two run
alternately (plain first on even requests, guarded first on odd ones), so that drift in the machine's load falls
on both alike. Prompts are the synthetic world's eval-split prompts of the neutral, stereotype, exposure and
association families that the filter lets through, in turn.

Prints the medians, the overhead of the guarded request over the plain one (the bar: at most 10%), the guards'
own time per layer, and, as in the moderation-proxy write-up this service follows, the moderation time as a share
of generation latency.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from core.config import config_from_dict
from core.io import atomic_write_json
from inference.config import GenerationConfig
from inference.generation import GenerationSpec, generate
from mitigations.stack import GuardedGenerator, StackConfig, load_model
from synthetic_world.prompts import prompt_records

FAMILIES = ("neutral", "stereotype", "exposure", "association")
GUARD_LAYERS = ("filter", "rewrite", "output_check", "blur")
BAR = 0.10


def benign_prompts(generator: GuardedGenerator, count: int) -> list[str]:
    """``count`` world eval prompts the filter allows, taken from each family in turn."""
    pools = [[r["prompt"] for r in prompt_records(family, "eval")] for family in FAMILIES]
    prompts, index = [], 0
    while len(prompts) < count:
        prompt = pools[index % len(pools)][index // len(pools) % len(pools[index % len(pools)])]
        index += 1
        if not generator.prompt_filter.check(prompt).blocked:
            prompts.append(prompt)
    return prompts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/synthetic-sd")
    parser.add_argument("--lora", default=None, help="LoRA folder loaded into the model (both arms)")
    parser.add_argument("--filter", default="configs/filters/world.yaml")
    parser.add_argument("--rewrite", default="configs/rewrite/world.yaml")
    parser.add_argument("--moderation", default="configs/moderation/world.yaml")
    parser.add_argument("--requests", type=int, default=200, help="requests per arm")
    parser.add_argument("--warmup", type=int, default=3, help="requests per arm run first and not counted")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="dpmsolver")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    torch.set_num_threads(args.threads)

    generation = config_from_dict(GenerationConfig, {"sampler": args.sampler, "steps": args.steps,
                                                     "guidance": args.guidance, "batch_size": 1}, where="generation")
    stack = config_from_dict(StackConfig, {
        "prompt_filter": {"config": args.filter}, "rewrite": {"config": args.rewrite},
        "output_check": {"config": args.moderation}, "regenerate": {"mode": "off"}}, where="stack")
    pipe = load_model(args.model, args.lora, device="cpu")
    guarded = GuardedGenerator(pipe, stack, generation)
    resolution = guarded.resolution

    def plain_request(prompt: str, seed: int) -> float:
        spec = GenerationSpec(prompt=prompt, seed=seed, steps=args.steps, guidance=args.guidance, height=resolution,
                              width=resolution, sampler=args.sampler)
        started = time.perf_counter()
        generate(pipe, [spec], 1)
        return (time.perf_counter() - started) * 1000.0

    def guarded_request(prompt: str, seed: int) -> dict:
        started = time.perf_counter()
        _, record = guarded.run_one(prompt, seed)
        return {"total": (time.perf_counter() - started) * 1000.0, "outcome": record.outcome, **record.latency_ms}

    prompts = benign_prompts(guarded, args.requests + args.warmup)
    plain, guards = [], []
    for i, prompt in enumerate(prompts):
        seed = 1000 + i
        if i % 2 == 0:
            p, g = plain_request(prompt, seed), guarded_request(prompt, seed)
        else:
            g, p = guarded_request(prompt, seed), plain_request(prompt, seed)
        if i >= args.warmup:
            plain.append(p)
            guards.append(g)

    median_plain = statistics.median(plain)
    median_guarded = statistics.median(g["total"] for g in guards)
    layers = {layer: statistics.median(g.get(layer, 0.0) for g in guards) for layer in GUARD_LAYERS}
    median_model = statistics.median(g["generate"] for g in guards)
    guard_time = [sum(g.get(layer, 0.0) for layer in GUARD_LAYERS) for g in guards]
    result = {
        "requests": args.requests, "threads": args.threads, "model": args.model, "lora": args.lora,
        "generation": {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                       "resolution": resolution},
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "plain_ms": {"median": median_plain, "p10": percentile(plain, 0.1), "p90": percentile(plain, 0.9)},
        "guarded_ms": {"median": median_guarded, "p10": percentile([g["total"] for g in guards], 0.1),
                       "p90": percentile([g["total"] for g in guards], 0.9)},
        "guarded_model_ms_median": median_model,
        "overhead_of_median": median_guarded / median_plain - 1.0,
        # per request: guarded minus plain on the same prompt and seed, run back to back
        "paired_overhead": statistics.median(g["total"] - p for g, p in zip(guards, plain)) / median_plain,
        "guard_layers_ms_median": layers,
        "guard_ms_median": statistics.median(guard_time),
        "guard_share_of_generation": statistics.median(guard_time) / median_plain,
        "outcomes": {o: sum(g["outcome"] == o for g in guards) for o in sorted({g["outcome"] for g in guards})},
        "bar": BAR,
    }
    result["meets_bar"] = result["overhead_of_median"] <= BAR

    print(f"guarded generation latency, CPU ({args.threads} thread{'s' * (args.threads != 1)}), {args.requests} "
          f"requests per arm, {args.model}{' + ' + args.lora if args.lora else ''}, {args.sampler} {args.steps} steps, "
          f"{resolution} px")
    print(f"  plain (model only):       median {median_plain:8.1f} ms  (p10 {result['plain_ms']['p10']:.1f}, "
          f"p90 {result['plain_ms']['p90']:.1f})")
    print(f"  guarded (filter+rewrite+model+output check): median {median_guarded:8.1f} ms  "
          f"(p10 {result['guarded_ms']['p10']:.1f}, p90 {result['guarded_ms']['p90']:.1f})")
    print(f"  overhead of the median:   {100 * result['overhead_of_median']:+.2f}%  "
          f"(bar: at most +{100 * BAR:.0f}%: {'met' if result['meets_bar'] else 'NOT met'})")
    print(f"  paired overhead (median of guarded - plain per request, over the plain median): "
          f"{100 * result['paired_overhead']:+.2f}%")
    print("  guard layers, median ms:  " + ", ".join(f"{k} {v:.2f}" for k, v in layers.items()))
    print(f"  moderation (filter + rewrite + output check + blur): {result['guard_ms_median']:.2f} ms per request = "
          f"{100 * result['guard_share_of_generation']:.2f}% of the generation latency")
    print(f"  outcomes of the guarded requests: {result['outcomes']}")
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
