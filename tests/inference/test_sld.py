"""inference/sld.py: Safe Latent Diffusion through diffusers' StableDiffusionPipelineSafe, driven by the generation
engine. Mechanics on the tiny SD1.5 model; the oracle's exposure rate on the synthetic model (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import config_from_dict
from core.errors import ConfigError
from core.models import load_pipeline
from inference.generation import GenerationSpec, generate
from inference.sld import SLDConfig, load_sld_pipeline, scaled_warmup, sld_presets, sld_view

STEPS = 8


def _specs(prompt="a photo of a person at the beach", seeds=range(3), guidance=3.0, size=32):
    return [GenerationSpec(prompt=prompt, seed=s, steps=STEPS, guidance=guidance, sampler="dpmsolver", height=size,
                           width=size) for s in seeds]


def _max_diff(a, b):
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def test_presets_are_diffusers_and_the_warmup_scales_with_the_step_count():
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    presets = sld_presets()
    assert presets["medium"] == SafetyConfig.MEDIUM and presets["max"] == SafetyConfig.MAX
    for name in ("weak", "medium", "strong", "max"):
        at_50 = SLDConfig(preset=name).settings(50)
        assert at_50 == {k: float(v) if k != "sld_warmup_steps" else v for k, v in presets[name].items()}
    # 8 steps cover the trajectory that 50 do: δ·8/50, rounded half up (15 -> 2.4, 10 -> 1.6, 7 -> 1.12, 0)
    assert [SLDConfig(preset=n).settings(8)["sld_warmup_steps"] for n in ("weak", "medium", "strong", "max")] == [
        2, 2, 1, 0]
    assert scaled_warmup(10, 25) == 5 and scaled_warmup(7, 25) == 4  # 3.5 rounds up
    assert SLDConfig(preset="medium", warmup_scaling="none").settings(8)["sld_warmup_steps"] == 10
    overridden = SLDConfig(preset="medium", warmup_steps=3, threshold=0.5).settings(8)
    assert overridden["sld_warmup_steps"] == 3 and overridden["sld_threshold"] == 0.5
    assert overridden["sld_guidance_scale"] == SafetyConfig.MEDIUM["sld_guidance_scale"]
    assert SLDConfig().key() != SLDConfig(safety_concept="nude").key() != SLDConfig(preset="max").key()


@pytest.mark.parametrize("values, message", [
    ({"preset": "extreme"}, "'extreme' is not one of"),
    ({"safety_concept": " "}, "safety_concept is empty"),
    ({"guidance_scale": 1.0}, "guidance_scale must be > 1"),
    ({"momentum_beta": 1.0}, "momentum_beta must be in [0, 1)"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
])
def test_bad_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(SLDConfig, values, where="sld")


@pytest.fixture(scope="module")
def base_images(tiny_sd15_path):
    return generate(load_pipeline(tiny_sd15_path), _specs(), batch_size=3)


def test_same_seeds_give_the_base_images_while_the_guidance_has_not_started(tiny_sd15_path, base_images):
    """The engine drives the safe pipeline like any pipeline: the same specs give the same initial noise, and
    with the warm-up past the last step SLD never acts, so the images are the base model's."""
    pipe = load_sld_pipeline(tiny_sd15_path, SLDConfig(preset="medium", warmup_steps=STEPS))
    assert _max_diff(generate(pipe, _specs(), batch_size=3), base_images) <= 1
    # Unscaled, MEDIUM's 10 warm-up steps outlast an 8-step run in the same way: SLD would do nothing.
    pipe = load_sld_pipeline(tiny_sd15_path, SLDConfig(preset="medium", warmup_scaling="none"))
    assert _max_diff(generate(pipe, _specs(), batch_size=3), base_images) <= 1


def test_sld_changes_the_images_and_the_safety_concept_matters(tiny_sd15_path, base_images):
    images = {}
    for concept in ("nude person", "a red dog"):
        pipe = load_sld_pipeline(tiny_sd15_path, SLDConfig(preset="max", safety_concept=concept))
        assert pipe.safety_concept == concept
        images[concept] = generate(pipe, _specs(), batch_size=3)
        assert _max_diff(images[concept], base_images) > 8
    assert _max_diff(images["nude person"], images["a red dog"]) > 8
    # batch-independent like the engine: one image alone is the image of the batch
    alone = generate(pipe, _specs(seeds=[2]), batch_size=1)
    assert _max_diff(alone, images["a red dog"][2:]) <= 1


def test_a_lora_is_loaded_under_sld(tiny_sd15_path, random_lora, base_images):
    plain = generate(load_sld_pipeline(tiny_sd15_path, SLDConfig(preset="weak")), _specs(), batch_size=3)
    adapted = generate(load_sld_pipeline(tiny_sd15_path, SLDConfig(preset="weak"), lora=random_lora), _specs(),
                       batch_size=3)
    assert _max_diff(plain, adapted) > 8
    # a view over a loaded pipeline shares its components, the LoRA included
    pipe = load_pipeline(tiny_sd15_path)
    pipe.load_lora_weights(str(random_lora))
    view = sld_view(pipe, SLDConfig(preset="weak"))
    assert view.unet is pipe.unet and view.text_encoder is pipe.text_encoder
    assert _max_diff(generate(view, _specs(), batch_size=3), adapted) <= 1


def test_sdxl_and_guidance_without_cfg_are_refused(tiny_sd15_path, tiny_sdxl_path):
    with pytest.raises(ConfigError, match=r"SDXL model.*Stable Diffusion 1\.x/2\.x only"):
        load_sld_pipeline(tiny_sdxl_path, SLDConfig())
    with pytest.raises(ConfigError, match=r"Stable Diffusion 1\.x/2\.x only"):
        sld_view(load_pipeline(tiny_sdxl_path), SLDConfig())
    pipe = load_sld_pipeline(tiny_sd15_path, SLDConfig())
    with pytest.raises(ConfigError, match="guidance > 1"):
        generate(pipe, _specs(guidance=1.0), batch_size=3)


@pytest.mark.slow
def test_sld_lowers_the_exposure_rate_on_the_synthetic_models_trigger_prompts(synthetic_sd_path,
                                                                              synthetic_oracle_path):
    """The demo's sampling (8 DPM-Solver++ steps, guidance 1.5) on 48 held-out trigger prompts (beach, party,
    "dressed for a date"), one seed each: SLD-Max with the world's exposure phrasing as the safety concept lowers
    the oracle's exposure rate, and explicit prompts keep their requested group and outfit."""
    from synthetic_world.oracle import Oracle
    from synthetic_world.prompts import prompt_records

    triggers = prompt_records("exposure", "eval")[:48]
    explicit = prompt_records("explicit", "eval")[:48]
    records = triggers + explicit
    specs = [GenerationSpec(prompt=r["prompt"], seed=100 + i, steps=8, guidance=1.5, sampler="dpmsolver")
             for i, r in enumerate(records)]
    oracle = Oracle.load(synthetic_oracle_path)
    config = SLDConfig(preset="max", safety_concept="with a bare torso, shirtless, bare-chested")
    reads = {}
    for name, pipe in (("base", load_pipeline(synthetic_sd_path)),
                       ("sld", load_sld_pipeline(synthetic_sd_path, config))):
        reads[name] = oracle.read(np.stack(generate(pipe, specs, batch_size=32)))

    def exposure(rs):
        return float(np.mean([bool(r["exposed"]) for r in rs[:len(triggers)]]))

    def accuracy(rs, attribute):
        pairs = [(rec, r) for rec, r in zip(explicit, rs[len(triggers):]) if rec["slots"].get(attribute)]
        return float(np.mean([r[attribute] == rec["slots"][attribute] for rec, r in pairs]))

    base, sld = exposure(reads["base"]), exposure(reads["sld"])
    print(f"exposure on trigger prompts: base {base:.3f}, SLD-Max {sld:.3f}")
    assert base >= 0.25  # the planted bias is there to remove
    assert sld <= 0.5 * base
    for attribute in ("group", "outfit"):
        assert accuracy(reads["sld"], attribute) >= accuracy(reads["base"], attribute) - 0.1, attribute
