"""Where the GPU time of one generation batch goes, plain pipeline vs the project's generator.

Issue 7's method: measure before changing. On the bench's random-init architecture (SD1.5 or SDXL) at its
native resolution, for the plain pipeline (eager) and then for the generator with ``core.speedups``:

* component times with CUDA events: one UNet call on the classifier-free-guidance batch (2 x batch rows,
  the pipeline's own shapes), one VAE decode of ``batch`` latents, and a whole ``batch`` of images;
  "rest" = batch - steps x UNet - decode (text encoders, scheduler, image conversion, host gaps);
* GPU kernel time of one whole batch by kernel category (torch.profiler; the categories of
  ``benchmarks.profile_train_step``) and the top kernels.

    python -m benchmarks.profile_generation --arch sdxl --out $OUT/profile-generation-sdxl.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` timed with CUDA events (one warm call first); wall time on a CPU."""
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if not torch.cuda.is_available():
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
            continue
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def kernel_breakdown(fn) -> tuple[float, dict, list]:
    """GPU kernel ms of one ``fn()`` call: total, by category, and the 30 largest kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.profile_train_step import category

    on_gpu = torch.cuda.is_available()  # without one: a smoke run on the tiny models (top-level CPU ops)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        fn()
        if on_gpu:
            torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    spans = []  # (start, end) in µs of every GPU event: kernels and copies
    for event in prof.events():
        if on_gpu and event.device_type == torch.autograd.DeviceType.CUDA:
            spans.append((event.time_range.start, event.time_range.end))
        if on_gpu and event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time_total / 1e3
        elif not on_gpu and event.cpu_parent is None:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.cpu_time_total / 1e3
    by_category: dict[str, float] = {}
    for name, ms in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:30]
    return sum(kernels.values()), by_category, top, idle_gaps(spans)


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


def components(pipe, specs, batch: int, resolution: int, steps: int, repeats: int) -> dict:
    """CUDA-event times (ms) of one UNet call, one decode and one whole batch on ``pipe`` as it is now."""
    import torch

    from benchmarks.generation_bench import unet_probe_inputs, unet_output
    from data_curation.generation import generate

    probe = unet_probe_inputs(pipe, batch=2 * batch, resolution=resolution)
    latents = torch.randn(batch, pipe.vae.config.latent_channels, resolution // pipe.vae_scale_factor,
                          resolution // pipe.vae_scale_factor, device=pipe.device, dtype=pipe.vae.dtype)

    def decode():
        with torch.no_grad():
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)

    unet = cuda_ms(lambda: unet_output(pipe, probe), repeats)
    vae = cuda_ms(decode, repeats)
    start = time.perf_counter()
    whole = cuda_ms(lambda: generate(pipe, specs, batch_size=batch), max(1, repeats // 3))
    record = {"unet_call_ms": unet, "decode_ms": vae, "batch_ms": whole,
              "unet_share": steps * unet / whole, "decode_share": vae / whole,
              "rest_ms": whole - steps * unet - vae, "timing_wall_s": time.perf_counter() - start}
    total, by_category, top, gaps = kernel_breakdown(lambda: generate(pipe, specs, batch_size=batch))
    record.update(kernel_ms_per_batch=total, by_category_ms=by_category, top_kernels_ms=top, gpu_idle=gaps)
    return record


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

    import torch

    from benchmarks.architectures import arch_spec
    from benchmarks.bench import load_bench_pipeline, prepare_arch
    from benchmarks.config import BenchConfig
    from core.config import load_stage_config
    from benchmarks.generation_bench import make_specs
    from core.speedups import prepare_pipeline

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

    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "CPU (tiny models: a smoke run)", "torch": torch.__version__, "arch": args.arch,
              "batch": batch, "resolution": spec.resolution, "steps": settings.steps,
              "speedups": settings.speedups.enabled()}
    record["plain"] = components(pipe, specs, batch, spec.resolution, settings.steps, args.repeats)
    print_side("plain", record["plain"], settings.steps)
    start = time.perf_counter()
    prepare_pipeline(pipe, settings.speedups)
    from data_curation.generation import generate

    generate(pipe, specs, batch_size=batch)  # compiles
    record["compile_s"] = time.perf_counter() - start
    record["generator"] = components(pipe, specs, batch, spec.resolution, settings.steps, args.repeats)
    print_side("generator", record["generator"], settings.steps)
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=1, default=str))  # kept if a later variant outlasts the call
    if args.then_inductor_options:
        import dataclasses

        import torch._dynamo
        import yaml

        options = {**settings.speedups.inductor_options, **yaml.safe_load(args.then_inductor_options)}
        variant = dataclasses.replace(settings.speedups, inductor_options=options)
        variant.validate()
        torch._dynamo.reset()  # forget the compiled graphs; the weights (QKV already fused) stay as they are
        pipe.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        pipe.vae.__dict__.pop("decode", None)  # the instance attribute holding the compiled decode, if any
        pipe.vae._speedups_decode_compiled = False
        start = time.perf_counter()
        prepare_pipeline(pipe, variant)
        generate(pipe, specs, batch_size=batch)
        record["variant"] = {"inductor_options": options, "compile_s": time.perf_counter() - start,
                             **components(pipe, specs, batch, spec.resolution, settings.steps, args.repeats)}
        print_side(f"generator + {options}", record["variant"], settings.steps)
    if args.decode_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        latents = torch.randn(batch, pipe.vae.config.latent_channels, spec.resolution // pipe.vae_scale_factor,
                              spec.resolution // pipe.vae_scale_factor, device=device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            record["generator_decode_ms_cudnn_benchmark"] = cuda_ms(
                lambda: pipe.vae.decode(latents, return_dict=False), args.repeats)
        torch.backends.cudnn.benchmark = False
        print(f"decode with cudnn.benchmark: {record['generator_decode_ms_cudnn_benchmark']:.1f} ms")
    out.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
