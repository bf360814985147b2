"""The results file name and the printed table (also pasted into docs/performance.md)."""

from __future__ import annotations

import re
import time
from pathlib import Path

# The performance targets (one H100; docs/performance.md, "Against the targets"): (what, key path, threshold).
TARGETS = {
    "sd15": {"pairs_per_s": 70.0, "mfu": 0.40, "generation_speedup": 1.5},
    "sdxl": {"pairs_per_s": 6.4, "mfu": 0.35, "generation_speedup": 1.3},
    "scaling_efficiency": 0.90,
}


# The stock diffusers example and plain pipeline on one H100 80GB (../shared/gpu/README.md): the
# baselines of the targets' ratios. Reference facts, not settings.
STOCK_H100 = {
    "sd15": {"pairs_per_s": 23.7, "plain_images_per_s": 4.86},
    "sdxl": {"pairs_per_s": 3.20, "plain_images_per_s": 0.824},
}


def stock_ratios(name: str, arch: dict) -> dict:
    """Our best fast pairs/s and generator images/s over the stock H100 figures."""
    stock, out = STOCK_H100.get(name), {}
    if not stock:
        return out
    best = (arch.get("train") or {}).get("best_fast_pairs_per_s")
    if best:
        out["train_over_stock_example_h100"] = best / stock["pairs_per_s"]
    gen = arch.get("generation") or {}
    if gen.get("generator_images_per_s"):
        out["generator_over_stock_plain_h100"] = gen["generator_images_per_s"] / stock["plain_images_per_s"]
    return out


def results_path(results_dir: str | Path, env: dict, tag: str = "") -> Path:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("gpu_name", "unknown"))).strip("-").lower()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    suffix = f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', tag)}" if tag else ""
    return Path(results_dir) / f"{gpu}-{stamp}{suffix}.json"


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mark(value, threshold) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= threshold else f"missed ({value / threshold:.0%} of target)"


def format_table(results: dict) -> str:
    env = results.get("environment", {})
    lines = [
        f"GPU: {env.get('gpu_name')} | torch {env.get('torch')} | diffusers {env.get('diffusers')} | "
        f"peak bf16 matmul {_f(results.get('peak_bf16_matmul_tflops'), 0)} TFLOP/s",
        "",
        "Training (project trainer; pairs/s steady state; MFU = 6 UNet forward-equivalents per pair;",
        " reference_cache points: the loop reads reference losses from a pass before it, timed apart as 'ref pass';",
        " '1 run' = one run that computes its own pass, 1 / (1/loop + 1/pass))",
        f"{'arch':5} {'point':22} {'pairs/s':>8} {'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>7} {'status':>10} "
        f"{'ref pass':>9} {'1 run':>7}",
    ]
    for name, arch in results.get("archs", {}).items():
        for p in arch.get("train", {}).get("points", []):
            lines.append(
                f"{name:5} {p['label']:22} {_f(p.get('pairs_per_s')):>8} {_f(p.get('peak_gib'), 1):>9} "
                f"{_f(p.get('achieved_tflops'), 0):>8} {_pct(p.get('mfu_6fwd')):>7} {p.get('status', ''):>10} "
                f"{_f(p.get('reference_pass_pairs_per_s')) if 'reference_pass' in p else '':>9} "
                f"{_f(p.get('one_run_pairs_per_s')) if 'reference_pass' in p else '':>7}"
            )
        train = arch.get("train")
        if train:
            lines.append(
                f"{name:5} fast/simple = {_f(train.get('fast_over_simple'))}x; best fast/stock example on H100 "
                f"{STOCK_H100[name]['pairs_per_s']} = {_f(stock_ratios(name, arch).get('train_over_stock_example_h100'))}x; "
                "counted TFLOP/pair "
                + ", ".join(f"{k} {_f(v)}" for k, v in train.get("counted_tflop_per_pair", {}).items())
                + f"; UNet fwd {_f(arch.get('unet_forward_tflop'), 3)} TFLOP"
            )
    lines += ["", "Generation (same batch, sampler, steps, CFG, dtype, seeds)",
              f"{'arch':5} {'batch':>5} {'plain img/s':>11} {'generator img/s':>15} {'speedup':>8} "
              f"{'max|d|':>6} {'mean|d|':>8} {'UNet rel err':>12}"]
    for name, arch in results.get("archs", {}).items():
        g = arch.get("generation")
        if not g:
            continue
        cmp = g["images_vs_plain"]
        lines.append(
            f"{name:5} {g['batch']:>5} {_f(g['plain_images_per_s']):>11} {_f(g['generator_images_per_s']):>15} "
            f"{_f(g['speedup_vs_plain']):>7}x {cmp['max_abs_diff_levels']:>6} {_f(cmp['mean_abs_diff_levels'], 3):>8} "
            f"{g['unet_step_rel_error']:>12.2e}"
        )
    scaling = results.get("scaling")
    if scaling:
        lines += ["", f"Scaling ({scaling.get('arch')}, micro-batch {scaling.get('micro_batch')} per GPU, accelerate DDP)",
                  f"{'GPUs':>4} {'pairs/s':>8} {'efficiency':>10} {'status':>10}"]
        for r in scaling.get("runs", []):
            lines.append(f"{r['gpus']:>4} {_f(r.get('pairs_per_s')):>8} {_pct(r.get('efficiency')):>10} "
                         f"{r.get('status', ''):>10}")
    for name, arch in results.get("archs", {}).items():
        ratio = stock_ratios(name, arch).get("generator_over_stock_plain_h100")
        if ratio:
            lines.append(f"{name:5} generator / stock plain pipeline on H100 "
                         f"({STOCK_H100[name]['plain_images_per_s']} img/s) = {ratio:.2f}x")
    lines += ["", f"Targets (defined on one H100; this GPU: {env.get('gpu_name')})"]
    for name in ("sd15", "sdxl"):
        arch = results.get("archs", {}).get(name)
        if not arch:
            continue
        t = TARGETS[name]
        train = arch.get("train") or {}
        best = next((p for p in train.get("points", []) if p.get("label") == train.get("best_fast")), {})
        gen = arch.get("generation") or {}
        lines.append(f"  {name} pairs/s >= {t['pairs_per_s']}: {_mark(best.get('pairs_per_s'), t['pairs_per_s'])}"
                     + (f" in the training loop ({best['label']}); one run with its reference pass: "
                        f"{_mark(best.get('one_run_pairs_per_s'), t['pairs_per_s'])}" if "reference_pass" in best else ""))
        lines.append(f"  {name} MFU >= {t['mfu']:.0%}: {_mark(best.get('mfu_6fwd'), t['mfu'])}")
        lines.append(f"  {name} generation >= {t['generation_speedup']}x plain: "
                     f"{_mark(gen.get('speedup_vs_plain'), t['generation_speedup'])}")
    if scaling:
        for r in scaling.get("runs", []):
            if r["gpus"] > 1:
                lines.append(f"  scaling at {r['gpus']} GPUs >= 90%: {_mark(r.get('efficiency'), TARGETS['scaling_efficiency'])}")
    return "\n".join(lines)
