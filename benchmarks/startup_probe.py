"""Where a training run's start-up goes, piece by piece, on one machine: the parts of the trainer's set-up and
latent-cache phases timed alone (the time-to-LoRA harness times them only together).

    python -m benchmarks.startup_probe [pairs=512] [work_dir=/tmp/startup-probe] [out=PATH.json]
        [parts=vae [compile=0]]   (the VAE variants only; compile=0 leaves out the compiled one)

Pieces: importing the trainer; loading the model's components; validating the set (every image decoded, as
``train`` does before any weights load); decoding the images through the latent cache's DataLoader alone; the VAE
encoder alone on ready pixels in a few variants (bf16 / fp16, NCHW / channels_last, eager / compiled; cuDNN
autotuned; images/s after a warm-up call, with the encoder's FLOPs for the rate in TFLOP/s); and the whole batched
latent cache of the set.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.architectures import build_model_folder
from benchmarks.synthetic_data import write_synthetic_set
from preference_sets.validate import validate_set
from training.cache import _PairImages, encode_pair_latents_batched
from training.data import load_pairs
from training.models import encode_images, load_components


def _timed(results: dict, name: str, fn):
    start = time.perf_counter()
    value = fn()
    results[name] = round(time.perf_counter() - start, 3)
    print(f"[probe] {name}: {results[name]} s", flush=True)
    return value


def _encode_rate(vae, pixels, calls: int) -> float:
    """Images/s of ``calls`` encoder calls on ``pixels`` after one warm-up call (cuDNN autotuning, compiling)."""
    with torch.no_grad():
        encode_images(vae, pixels)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            encode_images(vae, pixels)
        torch.cuda.synchronize()
    return calls * pixels.shape[0] / (time.perf_counter() - start)


def vae_variants(results: dict, vae_fp32, device: str, batch: int = 32, compiled_variant: bool = True) -> None:
    """The VAE encoder alone at ``batch`` images of 512 px: bf16 / fp16, NCHW / channels_last, eager / compiled;
    and one GroupNorm + SiLU of the first block's shape in both layouts (cuDNN autotuned)."""
    torch.backends.cudnn.benchmark = True
    counted = copy.deepcopy(vae_fp32).to(device=device, dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        counted.encode(torch.zeros(1, 3, 512, 512, device=device, dtype=torch.bfloat16))
    flops = counter.get_total_flops()
    del counted  # only for the count: the variants below each make their own copy
    results["vae_encoder_tflop_per_image"] = round(flops / 1e12, 3)
    variants = [("bf16_nchw", torch.bfloat16, torch.contiguous_format, False),
                ("bf16_channels_last", torch.bfloat16, torch.channels_last, False),
                ("fp16_nchw", torch.float16, torch.contiguous_format, False)]
    if compiled_variant:
        variants.append(("bf16_nchw_compiled", torch.bfloat16, torch.contiguous_format, True))
    for name, dtype, layout, compiled in variants:
        vae = copy.deepcopy(vae_fp32).to(device=device, dtype=dtype, memory_format=layout)
        if compiled:
            vae.encoder = torch.compile(vae.encoder)
        pixels = torch.randn(batch, 3, 512, 512, device=device, dtype=dtype).contiguous(memory_format=layout)
        start = time.perf_counter()
        try:
            rate = _encode_rate(vae, pixels, 8)
        except Exception as exc:  # a variant that fails is reported, the others still run
            results[f"vae_{name}_error"] = repr(exc)[:300]
            continue
        results[f"vae_{name}_images_per_s"] = round(rate, 1)
        results[f"vae_{name}_tflops"] = round(rate * flops / 1e12, 1)
        results[f"vae_{name}_first_and_timed_s"] = round(time.perf_counter() - start, 1)
        print(f"[probe] VAE {name}: {rate:.1f} images/s", flush=True)
        del vae, pixels
        torch.cuda.empty_cache()
    norm = torch.nn.GroupNorm(32, 128, eps=1e-6).to(device=device, dtype=torch.bfloat16)
    for layout_name, layout in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.randn(batch, 128, 512, 512, device=device, dtype=torch.bfloat16).contiguous(memory_format=layout)
        with torch.no_grad():
            torch.nn.functional.silu(norm(x))
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                torch.nn.functional.silu(norm(x))
            torch.cuda.synchronize()
        results[f"groupnorm_silu_{layout_name}_ms"] = round((time.perf_counter() - start) / 10 * 1000, 2)
        del x
    results["vae_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    torch.cuda.empty_cache()


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv)
    pairs_count = int(args.get("pairs", 512))
    work = Path(args.get("work_dir", "/tmp/startup-probe"))
    out = Path(args.get("out", work / "startup_probe.json"))
    results: dict = {"pairs": pairs_count}
    # A fresh interpreter, as a launch pays it (this process has imported everything already).
    _timed(results, "import_trainer_s", lambda: subprocess.run([sys.executable, "-c", "import training.trainer"],
                                                                check=True))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    model_dir = _timed(results, "build_model_s", lambda: build_model_folder(
        "sd15", "full", work / "sd15-full", dtype=torch.bfloat16, device=device))
    components = _timed(results, "load_components_s", lambda: load_components(str(model_dir)))
    if args.get("parts") == "vae":
        if device == "cuda":
            vae_variants(results, components.vae, device, compiled_variant=args.get("compile", "1") == "1")
        _write(results, out)
        return 0
    folder = _timed(results, "write_set_s", lambda: write_synthetic_set(
        work / f"set-{pairs_count}", pairs_count, 512, image_format="jpeg"))
    _timed(results, "validate_set_s", lambda: validate_set(folder, expected_size=512))
    pairs = _timed(results, "load_pairs_s", lambda: load_pairs(folder, 512))
    for workers in (0, 8, 15):
        loader = torch.utils.data.DataLoader(_PairImages(pairs, 512), batch_size=32, num_workers=workers,
                                             prefetch_factor=4 if workers else None)
        seconds = _timed(results, f"decode_only_workers{workers}_s", lambda: sum(1 for _ in loader))
        del seconds
        results[f"decode_only_workers{workers}_images_per_s"] = round(
            2 * pairs_count / results[f"decode_only_workers{workers}_s"], 1)

    if device == "cuda":
        vae_variants(results, components.vae, device)
    # The trainer's whole latent-cache pass, with its own decode workers and VAE copy.
    latents = _timed(results, "latent_cache_s", lambda: encode_pair_latents_batched(
        components, pairs, device, "bf16" if device == "cuda" else "fp32", show_progress=False))
    results["latent_cache_images_per_s"] = round(2 * pairs_count / results["latent_cache_s"], 1)
    results["latent_shape"] = list(latents.shape)
    _write(results, out)
    return 0


def _write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
