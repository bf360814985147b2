"""Every generation fast path (inference/speedups.py) recomputes the plain pipeline's images on fixed inputs (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.generation_bench import (
    GenerationBenchSettings, make_specs, plain_pipeline_call, unet_output, unet_probe_inputs,
)
from core.models import load_pipeline
from inference.generation import generate
from inference.speedups import InferenceSpeedups, prepare_pipeline

NONE = dict(fuse_qkv=False, channels_last=False, compile_unet=False, compile_vae=False)


def _run(path, speedups: InferenceSpeedups):
    pipe = load_pipeline(path, dtype=torch.float32)
    specs = make_specs(2, 32, GenerationBenchSettings(steps=3))
    plain = plain_pipeline_call(pipe, specs)
    probe = unet_probe_inputs(pipe, 2, 32)
    reference = unet_output(pipe, probe)
    prepare_pipeline(pipe, speedups)
    fast = np.stack(generate(pipe, specs, batch_size=2))
    rel = float((unet_output(pipe, probe) - reference).norm() / reference.norm())
    return plain, fast, rel


@pytest.mark.parametrize(
    "options",
    [
        {},  # no speedups: the generator is the plain call, bit for bit
        {"fuse_qkv": True},
        {"channels_last": True},
        {"compile_unet": True, "compile_vae": True, "compile_backend": "aot_eager"},
    ],
    ids=["none", "fuse_qkv", "channels_last", "compile_graphs"],
)
def test_fast_path_matches_plain_sd15(tiny_sd15_path, options):
    plain, fast, rel = _run(tiny_sd15_path, InferenceSpeedups(**{**NONE, **options}))
    diff = np.abs(plain.astype(int) - fast.astype(int))
    if not options:
        assert diff.max() == 0 and rel == 0.0
    assert diff.max() <= 1 and rel < 1e-5


def test_all_fast_paths_match_plain_sdxl(tiny_sdxl_path):
    speedups = InferenceSpeedups(compile_backend="aot_eager")
    plain, fast, rel = _run(tiny_sdxl_path, speedups)
    assert np.abs(plain.astype(int) - fast.astype(int)).max() <= 1 and rel < 1e-5


@pytest.mark.slow
def test_inductor_compiled_pipeline_matches_plain(tiny_sd15_path):
    plain, fast, rel = _run(tiny_sd15_path, InferenceSpeedups())
    assert np.abs(plain.astype(int) - fast.astype(int)).max() <= 2 and rel < 1e-4


def test_fast_paths_refuse_lora_layers_and_match_after_merging(tiny_sd15_path, random_lora):
    """Fused QKV would bypass a LoRA on to_q/to_k/to_v, so a pipeline with adapters is refused; merged into the
    weights first, the fast pipeline makes the LoRA pipeline's images."""
    from inference.speedups import has_lora_layers, merge_lora

    specs = make_specs(2, 32, GenerationBenchSettings(steps=3))
    base = plain_pipeline_call(load_pipeline(tiny_sd15_path, dtype=torch.float32), specs)

    pipe = load_pipeline(tiny_sd15_path, dtype=torch.float32)
    pipe.load_lora_weights(str(random_lora))  # stock diffusers loading, as curation does
    with_lora = plain_pipeline_call(pipe, specs)
    assert np.abs(with_lora.astype(int) - base.astype(int)).max() > 10, "fixture broken: the LoRA changes nothing"
    with pytest.raises(ValueError, match="holds LoRA layers"):
        prepare_pipeline(pipe, InferenceSpeedups(compile_backend="aot_eager"))
    merge_lora(pipe)
    assert not has_lora_layers(pipe.unet)
    prepare_pipeline(pipe, InferenceSpeedups(compile_backend="aot_eager"))
    fast = np.stack(generate(pipe, specs, batch_size=2))
    assert np.abs(fast.astype(int) - with_lora.astype(int)).max() <= 1


def test_inductor_options_are_checked():
    with pytest.raises(ValueError, match=r"inductor_options \['no_such_option'\]"):
        InferenceSpeedups(inductor_options={"no_such_option": True}).validate()
    InferenceSpeedups(inductor_options={"epilogue_fusion": False}).validate()
