"""Where the GPU time of one generation batch goes, plain pipeline vs the project's generator.

Measure before changing. On the bench's random-init architecture (SD1.5 or SDXL) at its
native resolution, for the plain pipeline (eager) and then for the generator with ``inference.speedups``:

* component times (a device synchronise closes each timed call): one UNet call on the classifier-free-guidance
  batch (2 x batch rows, the pipeline's own shapes), one VAE decode of ``batch`` latents, and a whole batch;
  "rest" = batch - steps x UNet - decode (text encoders, scheduler, image conversion, host gaps);
* GPU kernel time of one whole batch by kernel category (torch.profiler; the categories of
  ``benchmarks.profile_train_step``), the top kernels, and the GPU's idle gaps;
* optionally the same after recompiling with more inductor options (``--then-inductor-options``).

    python -m benchmarks.profile_generation --arch sdxl --out $OUT/profile-generation-sdxl.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from benchmarks.architectures import arch_spec
from benchmarks.bench import load_bench_pipeline, prepare_arch
from benchmarks.config import BenchConfig
from benchmarks.generation_bench import make_specs, unet_output, unet_probe_inputs
from benchmarks.measure import time_steady_state
from benchmarks.profile_train_step import kernel_ms, ms_by_category
from core.config import load_stage_config
from inference.generation import generate
from inference.speedups import prepare_pipeline, uncompile


def call_ms(fn, repeats: int) -> float:
    """Median milliseconds of one ``fn()`` call, one untimed call first (``benchmarks.measure``'s timing rules:
    a device synchronise closes each timed call)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return 1e3 * time_steady_state(fn, device, warmup=1, steps=1, repeats=repeats).seconds_per_call


def kernel_breakdown(fn) -> tuple[float, dict, list, dict]:
    """One ``fn()`` call under torch.profiler: kernel ms in total, by category, the 30 largest kernels, and the
    GPU's idle gaps."""
    on_gpu = torch.cuda.is_available()  # without one: a smoke run on the tiny models (top-level CPU ops)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        fn()
        if on_gpu:
            torch.cuda.synchronize()
    events = prof.events()
    kernels = kernel_ms(events, on_gpu)
    # (start, end) in µs of every GPU event (kernels and copies) for the idle gaps
    spans = [(e.time_range.start, e.time_range.end) for e in events
             if on_gpu and e.device_type == torch.autograd.DeviceType.CUDA]
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:30]
    return sum(kernels.values()), ms_by_category(kernels), top, idle_gaps(spans)


def idle_gaps(spans: list[tuple[float, float]], min_gap_us: float = 50.0) -> dict:
    """Where the GPU waits: gaps between consecutive GPU events (µs spans, one stream), in ms, with their
    offset from the first event, so a gap can be placed (batch start, between steps, batch end)."""
    spans = sorted(spans)
    if not spans:
        return {"busy_span_ms": 0.0, "idle_ms": 0.0, "gaps_over_50us": 0, "largest_gaps_ms_at_ms": []}
    gaps, reach = [], spans[0][1]
    for start, end in spans[1:]:
        if start - reach > min_gap_us:
            gaps.append(((start - reach) / 1e3, (reach - spans[0][0]) / 1e3))
        reach = max(reach, end)
    return {"busy_span_ms": (reach - spans[0][0]) / 1e3, "idle_ms": sum(g for g, _ in gaps),
            "gaps_over_50us": len(gaps),
            "largest_gaps_ms_at_ms": sorted(gaps, reverse=True)[:25]}


def decode_latents(pipe, batch: int, resolution: int):
    """Random latents of ``batch`` images at ``resolution``, scaled as the pipeline hands them to the decoder."""
    size = resolution // pipe.vae_scale_factor
    latents = torch.randn(batch, pipe.vae.config.latent_channels, size, size, device=pipe.device, dtype=pipe.vae.dtype)
    return latents / pipe.vae.config.scaling_factor


def decode_ms(pipe, latents, repeats: int) -> float:
    def decode():
        with torch.no_grad():
            pipe.vae.decode(latents, return_dict=False)

    return call_ms(decode, repeats)


def components(pipe, specs, batch: int, resolution: int, steps: int, repeats: int) -> dict:
    """Times (ms) of one UNet call, one decode and one whole batch on ``pipe`` as it is now, and the kernel
    breakdown of one batch."""
    probe = unet_probe_inputs(pipe, batch=2 * batch, resolution=resolution)
    unet = call_ms(lambda: unet_output(pipe, probe), repeats)
    vae = decode_ms(pipe, decode_latents(pipe, batch, resolution), repeats)
    start = time.perf_counter()
    whole = call_ms(lambda: generate(pipe, specs, batch_size=batch), max(1, repeats // 3))
    record = {"unet_call_ms": unet, "decode_ms": vae, "batch_ms": whole,
              "unet_share": steps * unet / whole, "decode_share": vae / whole,
              "rest_ms": whole - steps * unet - vae, "timing_wall_s": time.perf_counter() - start}
    total, by_category, top, gaps = kernel_breakdown(lambda: generate(pipe, specs, batch_size=batch))
    record.update(kernel_ms_per_batch=total, by_category_ms=by_category, top_kernels_ms=top, gpu_idle=gaps)
    return record


def prepared_components(pipe, speedups, specs, batch: int, resolution: int, steps: int, repeats: int) -> dict:
    """``prepare_pipeline`` with ``speedups``, one batch to compile (timed as ``compile_s``), then components."""
    start = time.perf_counter()
    prepare_pipeline(pipe, speedups)
    generate(pipe, specs, batch_size=batch)
    compile_s = time.perf_counter() - start
    return {"compile_s": compile_s, **components(pipe, specs, batch, resolution, steps, repeats)}


def print_side(label: str, record: dict, steps: int) -> None:
    print(f"[{label}] batch {record['batch_ms']:.1f} ms = {steps} x UNet {record['unet_call_ms']:.2f} ms "
          f"({100 * record['unet_share']:.1f}%) + decode {record['decode_ms']:.1f} ms "
          f"({100 * record['decode_share']:.1f}%) + rest {record['rest_ms']:.1f} ms; "
          f"kernels {record['kernel_ms_per_batch']:.1f} ms")
    idle = record["gpu_idle"]
    if idle["largest_gaps_ms_at_ms"]:
        print(f"    GPU idle {idle['idle_ms']:.1f} ms in {idle['gaps_over_50us']} gaps > 50 µs over a "
              f"{idle['busy_span_ms']:.1f} ms span; largest (ms, at ms): "
              + ", ".join(f"{g:.1f}@{at:.0f}" for g, at in idle["largest_gaps_ms_at_ms"][:12]))
    for name, ms in sorted(record["by_category_ms"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:38s} {ms:9.1f} ms  {100 * ms / record['kernel_ms_per_batch']:5.1f}%")
    for name, ms in record["top_kernels_ms"][:20]:
        print(f"    {ms:8.2f} ms  {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sdxl", choices=["sd15", "sdxl"])
    parser.add_argument("--batch", type=int, default=None, help="default: the bench config's generation batch")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--work", default="/tmp/profile-gen-work")
    parser.add_argument("--out", default="profile_generation.json")
    parser.add_argument("--config", default="configs/bench.yaml")
    parser.add_argument("--decode-cudnn-benchmark", action="store_true",
                        help="also time the generator's decode with torch.backends.cudnn.benchmark on")
    parser.add_argument("--then-inductor-options", default=None,
                        help="YAML mapping: after the generator's figures, recompile it with these inductor options "
                             "added and measure again in the same process (a paired comparison)")
    parser.add_argument("overrides", nargs="*", help="bench config key=value overrides")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # a smoke run of this script: tiny models, no compile
        args.overrides = ["scale=tiny", "generation.steps=2", "generation.speedups.compile_unet=false",
                          "generation.speedups.compile_vae=false"] + list(args.overrides)
    cfg = load_stage_config(BenchConfig, args.config, "bench", args.overrides)
    settings = cfg.generation
    spec = arch_spec(args.arch, cfg.scale)
    batch = args.batch or cfg.arch(args.arch).generation_batch
    model_dir, _ = prepare_arch(cfg, args.arch, Path(args.work), device)
    pipe = load_bench_pipeline(cfg, model_dir, device)
    specs = make_specs(batch, spec.resolution, settings)
    measure = dict(specs=specs, batch=batch, resolution=spec.resolution, steps=settings.steps, repeats=args.repeats)
    out = Path(args.out)

    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "CPU (tiny models: a smoke run)",
              "torch": torch.__version__, "arch": args.arch, "batch": batch, "resolution": spec.resolution,
              "steps": settings.steps, "speedups": settings.speedups.enabled()}
    record["plain"] = components(pipe, **measure)
    print_side("plain", record["plain"], settings.steps)
    record["generator"] = prepared_components(pipe, settings.speedups, **measure)
    record["compile_s"] = record["generator"]["compile_s"]
    print_side("generator", record["generator"], settings.steps)
    out.write_text(json.dumps(record, indent=1, default=str))  # kept if a later variant outlasts the call
    if args.then_inductor_options:
        options = {**settings.speedups.inductor_options, **yaml.safe_load(args.then_inductor_options)}
        variant = dataclasses.replace(settings.speedups, inductor_options=options)
        variant.validate()
        uncompile(pipe)
        record["variant"] = {"inductor_options": options, **prepared_components(pipe, variant, **measure)}
        print_side(f"generator + {options}", record["variant"], settings.steps)
    if args.decode_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        record["generator_decode_ms_cudnn_benchmark"] = decode_ms(
            pipe, decode_latents(pipe, batch, spec.resolution), args.repeats)
        torch.backends.cudnn.benchmark = False
        print(f"decode with cudnn.benchmark: {record['generator_decode_ms_cudnn_benchmark']:.1f} ms")
    out.write_text(json.dumps(record, indent=1, default=str))

if __name__ == "__main__":
    main()
