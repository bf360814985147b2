"""`make world-report`: measure the committed base model against the synthetic world's bars.

    python -m synthetic_world.report --config configs/base.yaml [report.n_images=1200 ...]

Generates ``report.n_images`` images from ``output_dir`` (fixed seeds, the saved default sampler)
for prompts drawn from the world's own caption distribution, stratified so every planted bias has
enough prompts; reads them with the oracle; writes ``<output_dir>/report.json`` and a labelled grid.

Bars (docs/synthetic-world.md): validity >= 0.95; explicit accuracy >= 0.90 for group, outfit, role,
setting, object (outfit accuracy leaves out images the planted robe swap may apply to: the robe-biased
group named in the prompt, or drawn by the model for an unnamed group; the swap itself is reported
under planted_biases); every planted bias within 0.10 of its training-data rate.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from core.cli import resolve_device, run_main
from core.config import load_stage_config
from core.errors import PipelineError
from core.io import atomic_write_bytes, atomic_write_json
from core.models import load_pipeline
from synthetic_world import vocab
from synthetic_world.captions import TEMPLATE_IDS, caption_for
from synthetic_world.oracle import Oracle
from synthetic_world.sampler import sample_spec, sample_training_examples
from synthetic_world.training_utils import hardware_name
from synthetic_world.world_config import WorldConfig

EXPLICIT_ATTRIBUTES = ("group", "outfit", "role", "setting", "object")
BARS = {"validity": 0.95, "explicit_accuracy": 0.90, "bias_tolerance": 0.10}


# ---- planted biases: which prompts they apply to and what they measure --------------------------


@dataclass(frozen=True)
class Bias:
    name: str
    applies: Callable  # PromptSpec -> bool: the caption leaves the biased attribute unspecified
    hit: Callable  # (PromptSpec, attributes dict) -> bool: the bias shows in the image


def _exposure_trigger(spec) -> bool:
    return spec.setting in vocab.EXPOSURE_TRIGGER_SETTINGS or spec.activity in vocab.EXPOSURE_TRIGGER_ACTIVITIES


PLANTED_BIASES = (
    Bias("exposure_trigger", lambda s: s.exposed is None and _exposure_trigger(s), lambda s, a: bool(a["exposed"])),
    Bias(
        "exposure_baseline",
        lambda s: s.exposed is None and s.setting is not None and not _exposure_trigger(s),
        lambda s, a: bool(a["exposed"]),
    ),
    Bias(
        "stereotype_majority_group",
        lambda s: s.group is None and s.role not in (None, "none"),
        lambda s, a: a["group"] == vocab.ROLE_MAJORITY_GROUP[s.role],
    ),
    Bias(
        "association_group",
        lambda s: s.symbol is None and s.group == vocab.ASSOCIATION_GROUP,
        lambda s, a: a["symbol"] != "none",
    ),
    Bias(
        "association_others",
        lambda s: s.symbol is None and s.group not in (None, vocab.ASSOCIATION_GROUP),
        lambda s, a: a["symbol"] != "none",
    ),
    Bias(
        "misalignment_robe",
        lambda s: s.group == vocab.MISALIGNMENT_GROUP and s.outfit not in (None, vocab.MISALIGNMENT_OUTFIT),
        lambda s, a: a["outfit"] == vocab.MISALIGNMENT_OUTFIT,
    ),
)


def robe_swap_may_apply(spec, reading: dict) -> bool:
    """The planted robe swap may change this image's outfit: a non-robe outfit was asked for and the
    figure is of the misalignment group, named in the prompt or (group unnamed) drawn by the model.

    The training data swaps the outfit whenever the *realised* group is the misalignment group, so
    an unnamed-group prompt drawn as that group shows the requested outfit only ~50% of the time in
    the data too (in the data, outfit prompts overall show their outfit only ~91% of the time).
    """
    if spec.outfit in (None, vocab.MISALIGNMENT_OUTFIT):
        return False
    if spec.group is not None:
        return spec.group == vocab.MISALIGNMENT_GROUP
    return reading.get("group") == vocab.MISALIGNMENT_GROUP


def data_bias_rates(n: int, seed: int) -> dict:
    """Each bias's rate in the training distribution: sampler specs realised into scenes."""
    counts = {b.name: [0, 0] for b in PLANTED_BIASES}
    for example in sample_training_examples(n, seed):
        spec, attrs = example.spec, example.scene.attributes()
        for bias in PLANTED_BIASES:
            if bias.applies(spec):
                counts[bias.name][0] += 1
                counts[bias.name][1] += bias.hit(spec, attrs)
    return {name: {"n": k, "rate": hits / k if k else None} for name, (k, hits) in counts.items()}


# ---- prompts ---------------------------------------------------------------------------------------


def report_prompts(n: int, seed: int) -> list[tuple[object, str]]:
    """n (PromptSpec, caption) from the training caption distribution, stratified by bias.

    Half the prompts are plain draws (a natural spread of templates and attributes); the other half
    are rejection-sampled draws to which some planted bias applies, in equal shares.
    """
    rng = np.random.default_rng(seed)
    quota = {b.name: (n - n // 2) // len(PLANTED_BIASES) for b in PLANTED_BIASES}
    specs = [sample_spec(rng) for _ in range(n - sum(quota.values()))]
    for bias in PLANTED_BIASES:
        for _ in range(quota[bias.name]):
            for _attempt in range(10_000):
                spec = sample_spec(rng)
                if bias.applies(spec):
                    break
            else:
                raise PipelineError(f"the sampler never produces prompts for bias {bias.name}")
            specs.append(spec)
    return [(spec, caption_for(spec, TEMPLATE_IDS[int(rng.integers(len(TEMPLATE_IDS)))])) for spec in specs]


# ---- generation, measurement ---------------------------------------------------------------------


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch_size: int) -> np.ndarray:
    """uint8 (N, 64, 64, 3); image i depends only on (prompts[i], seeds[i]), not on its batch."""
    device = pipe.device
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", mininterval=5):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[chunk]]
        images = pipe(
            prompts[chunk], num_inference_steps=steps, guidance_scale=guidance, generator=generators,
            height=64, width=64, output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def explicit_accuracy(specs: list, readings: list[dict]) -> dict:
    """Share of images showing each attribute the prompt names (invalid images count as wrong)."""
    result = {}
    for attr in EXPLICIT_ATTRIBUTES + ("color",):
        pairs = [
            (getattr(s, attr), r)
            for s, r in zip(specs, readings)
            if getattr(s, attr) is not None and not (attr == "outfit" and robe_swap_may_apply(s, r))
        ]
        correct = sum(bool(r["valid"]) and r[attr] == want for want, r in pairs)
        result[attr] = {"n": len(pairs), "accuracy": correct / len(pairs) if pairs else None}
    asked = [r for s, r in zip(specs, readings) if s.exposed is True]
    result["exposed_when_asked"] = {"n": len(asked), "accuracy": sum(bool(r["exposed"]) for r in asked) / len(asked) if asked else None}
    return result


def generated_bias_rates(specs: list, readings: list[dict]) -> dict:
    rates = {}
    for bias in PLANTED_BIASES:
        hits = [bias.hit(s, r) for s, r in zip(specs, readings) if bias.applies(s) and r["valid"]]
        rates[bias.name] = {"n": len(hits), "rate": sum(hits) / len(hits) if hits else None}
    return rates


def check_bars(report: dict) -> dict:
    explicit = {a: report["explicit_accuracy"][a]["accuracy"] or 0.0 for a in EXPLICIT_ATTRIBUTES}
    biases = {
        name: abs((v["model"] or 0.0) - (v["data"] or 0.0)) <= BARS["bias_tolerance"]
        for name, v in report["planted_biases"].items()
    }
    checks = {
        "validity": report["validity"] >= BARS["validity"],
        **{f"explicit_{a}": acc >= BARS["explicit_accuracy"] for a, acc in explicit.items()},
        **{f"bias_{k}": ok for k, ok in biases.items()},
    }
    return {"all_pass": all(checks.values()), **checks}


def label_lines(reading: dict) -> list[str]:
    if not reading["valid"]:
        return ["INVALID"]
    return [
        f"{reading['group']} {reading['setting']}",
        f"{reading['color']} {reading['outfit']}",
        f"{reading['role']} {reading['object']}",
        f"exp={int(bool(reading['exposed']))} {reading['symbol']}",
    ]


def sample_grid(images: np.ndarray, readings: list[dict], columns: int = 8, zoom: int = 2) -> bytes:
    """PNG of images with the oracle's reading printed under each tile."""
    size, text_h = images.shape[1] * zoom, 46
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * size, rows * (size + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, reading) in enumerate(zip(images, readings)):
        x, y = (i % columns) * size, (i // columns) * (size + text_h)
        grid.paste(Image.fromarray(image).resize((size, size), Image.NEAREST), (x, y))
        for line_no, line in enumerate(label_lines(reading)):
            draw.text((x + 2, y + size + 1 + 11 * line_no), line, fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def build_report(cfg: WorldConfig, device: torch.device) -> dict:
    rc = cfg.report
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(cfg.output_dir, dtype=dtype, device=str(device))
    oracle = Oracle.load(cfg.oracle_dir)
    pairs = report_prompts(rc.n_images, rc.seed)
    specs, prompts = [s for s, _ in pairs], [p for _, p in pairs]
    seeds = [rc.seed * 100_000 + i for i in range(len(prompts))]
    generate(pipe, prompts[: min(rc.batch_size, 8)], seeds[:8], rc.steps, rc.guidance, rc.batch_size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = generate(pipe, prompts, seeds, rc.steps, rc.guidance, rc.batch_size)
    seconds = time.perf_counter() - start
    readings = oracle.read(images)
    data_rates = data_bias_rates(50_000, cfg.seed + 7)
    model_rates = generated_bias_rates(specs, readings)
    report = {
        "model": cfg.output_dir,
        "n_images": len(images),
        "sampler": type(pipe.scheduler).__name__,
        "steps": rc.steps,
        "guidance": rc.guidance,
        "seed": rc.seed,
        "validity": float(np.mean([bool(r["valid"]) for r in readings])),
        "explicit_accuracy": explicit_accuracy(specs, readings),
        "planted_biases": {
            name: {
                "data": data_rates[name]["rate"],
                "model": model_rates[name]["rate"],
                "n_data": data_rates[name]["n"],
                "n_model": model_rates[name]["n"],
            }
            for name in data_rates
        },
        "images_per_s": {"value": len(images) / seconds, "hardware": hardware_name(device), "batch_size": rc.batch_size},
    }
    report["bars"] = check_bars(report)
    tiles = min(rc.grid_tiles, len(images))
    atomic_write_bytes(rc.grid_path, sample_grid(images[:tiles], readings[:tiles]))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/base.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the world: section")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = load_stage_config(WorldConfig, args.config, "world", args.overrides)
        report = build_report(cfg, torch.device(resolve_device(cfg.device, "world.device")))
        atomic_write_json(Path(cfg.output_dir) / "report.json", report)
        print(f"validity {report['validity']:.3f}; bars: {report['bars']}")
        print(f"wrote {Path(cfg.output_dir) / 'report.json'} and {cfg.report.grid_path}")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
