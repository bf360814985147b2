import numpy as np
import pytest

from core.errors import ConfigError
from core.models import load_pipeline
from inference.generation import (
    GenerationSpec,
    ImageStore,
    derive_seed,
    generate,
    make_batches,
    native_resolution,
)


@pytest.fixture(scope="module")
def sd15(tiny_sd15_path):
    return load_pipeline(tiny_sd15_path)


def _specs(n, size=32, sampler="ddim", prompt="a photo of a cat"):
    return [GenerationSpec(prompt, seed=derive_seed(0, prompt, i), steps=3, height=size, width=size, sampler=sampler) for i in range(n)]


def test_image_depends_on_seed_not_on_batch(sd15):
    specs = _specs(4)
    batched = generate(sd15, specs, batch_size=4)
    reversed_single = generate(sd15, specs[::-1], batch_size=1)[::-1]
    for a, b in zip(batched, reversed_single):
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        # Same initial noise; only float reduction order differs across batch shapes (<= 1 level).
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(batched[0], batched[1])


def test_samplers_and_unknown_sampler(sd15):
    ddim = generate(sd15, _specs(1, sampler="ddim"))[0]
    euler = generate(sd15, _specs(1, sampler="euler"))[0]
    dpm = generate(sd15, _specs(1, sampler="dpmsolver++"))[0]
    assert not np.array_equal(ddim, euler) and dpm.shape == ddim.shape
    with pytest.raises(ConfigError, match="unknown sampler"):
        generate(sd15, _specs(1, sampler="nope"))


def test_keys_are_content_keys():
    a = GenerationSpec("x", seed=1)
    assert a.key("m") == GenerationSpec("x", seed=1).key("m")
    assert a.key("m") != a.key("m2") != a.key("m", "lora")
    assert a.key("m") != GenerationSpec("x", seed=2).key("m")
    assert a.key("m") != GenerationSpec("x", seed=1, negative_prompt="y").key("m")


def test_batches_do_not_mix_signatures():
    specs = _specs(3) + _specs(2, sampler="euler") + _specs(1)
    batches = make_batches(specs, 2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len({specs[i].batch_signature() for i in batch}) == 1 and len(batch) <= 2


def test_store_resume_generates_only_missing(sd15, tmp_path):
    store = ImageStore(tmp_path / "images")
    specs = _specs(5)
    first = store.generate_missing(sd15, specs[:2], model_id="tiny", batch_size=2, progress=False)
    assert (first.generated, first.already_present) == (2, 0)
    second = store.generate_missing(sd15, specs, model_id="tiny", batch_size=2, progress=False)
    assert second.requested == 5 and second.already_present == 2 and second.generated == 3
    assert all(s.key("tiny") in store for s in specs)
    again = store.generate_missing(sd15, specs, model_id="tiny", batch_size=2, progress=False)
    assert again.generated == 0
    image = store.get(specs[0].key("tiny"))
    assert image.shape == (32, 32, 3)


def test_sdxl_fixture(tiny_sdxl_path):
    pipe = load_pipeline(tiny_sdxl_path)
    size = native_resolution(pipe)
    images = generate(pipe, _specs(2, size=size), batch_size=2)
    assert images[0].shape == (size, size, 3) and not np.array_equal(images[0], images[1])


def test_switching_to_ddim_from_a_dpm_config_keeps_latent_settings(tiny_sd15_path):
    """DDIM's own defaults clip x0 to [-1, 1] (pixel models); latents must not be clipped."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from inference.generation import latent_defaults, set_sampler

    pipe = load_pipeline(tiny_sd15_path)
    # A checkpoint shipped with a DPM-Solver config (like models/synthetic-sd): no clip_sample key.
    pipe.scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert "clip_sample" not in pipe.scheduler.config
    set_sampler(pipe, "ddim")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.set_alpha_to_one is False
    assert latent_defaults(DDIMScheduler, {"clip_sample": True}) == {"set_alpha_to_one": False}


def test_uint8_conversion_on_the_device_matches_diffusers_numpy_path():
    """to_uint8_images gives the bytes of diffusers' output_type="np" + numpy_to_pil rounding, for bf16 and
    fp32 images, values outside [0, 1] and exact half-level ties (round half to even in both)."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from inference.generation import to_uint8_images

    gen = torch.Generator().manual_seed(0)
    ties = torch.tensor([0.5, 1.5, 2.5, 253.5, 254.5]) / 255.0
    for dtype in (torch.float32, torch.bfloat16):
        images = (torch.rand(3, 3, 8, 8, generator=gen) * 1.2 - 0.1).to(dtype)
        images.view(-1)[: ties.numel()] = ties.to(dtype)
        numpy_path = VaeImageProcessor.pt_to_numpy(images)  # (N, H, W, 3) float32, as output_type="np"
        expected = (np.clip(numpy_path, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        got = to_uint8_images(images)
        assert got.dtype == np.uint8 and got.shape == (3, 8, 8, 3)
        assert np.array_equal(got, expected)


def test_compiled_pipeline_pads_short_batches_instead_of_recompiling(tiny_sd15_path, sd15):
    """A pipeline compiled by inference.speedups has static shapes: a short batch (the last of a call, a single
    retry) runs padded to batch_size, so no new graph is compiled, and the kept images are the unpadded ones."""
    import torch
    from torch._dynamo.utils import counters

    from inference.speedups import InferenceSpeedups, prepare_pipeline

    specs = _specs(5)
    expected = generate(sd15, specs, batch_size=2)  # not compiled: batches of 2, 2 and 1 rows
    pipe = load_pipeline(tiny_sd15_path)
    prepare_pipeline(pipe, InferenceSpeedups(fuse_qkv=False, channels_last=False, compile_backend="aot_eager"))
    generate(pipe, specs[:2], batch_size=2)  # compiles the UNet and decoder graphs for 2 images
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "the pipeline did not compile: the test would prove nothing"
    padded = generate(pipe, specs, batch_size=2)  # its last batch holds 1 image
    single = generate(pipe, specs[4:], batch_size=2)
    assert counters["stats"]["unique_graphs"] == graphs, "a short batch compiled a new graph"
    assert len(padded) == 5 and len(single) == 1
    for got, want in zip(padded + single, expected + expected[4:]):
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    torch._dynamo.reset()
