"""The white-box attack's parts on the tiny random SD1.5 model: the differentiable sampler is the generation's own
(same images at the same seed), the adversarial prefix changes only its positions, and the gradient of a detector
reaches the adversarial embeddings and moves them up the detector."""

from __future__ import annotations

import numpy as np
import torch

from core.models import load_pipeline
from inference.generation import GenerationSpec, generate, set_sampler
from redteam.embedding import (
    AdversarialPrefix,
    attack_embeddings,
    decode,
    encode,
    generate_from_embeds,
    initial_latents,
    sample,
    word_tokens,
)


def _pipe(path):
    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_differentiable_sampler_draws_the_generation_images(tiny_sd15_path):
    pipe = _pipe(tiny_sd15_path)
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    spec = GenerationSpec(prompt="a photo of a cat", seed=5, steps=3, guidance=2.0, height=size, width=size,
                          sampler="dpmsolver")
    [expected] = generate(pipe, [spec], 1)
    set_sampler(pipe, "dpmsolver")
    with torch.no_grad():
        cond, uncond = encode(pipe, [spec.prompt], "cpu"), encode(pipe, [""], "cpu")
        x0 = sample(pipe.unet, type(pipe.scheduler), dict(pipe.scheduler.config), 3,
                    initial_latents(pipe, [5], size, size, "cpu", torch.float32), cond, uncond, 2.0)
        ours = (decode(pipe.vae, x0)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    # and generating from the conditioning itself gives the same image again
    [again] = generate_from_embeds(pipe, cond, uncond, [5], "dpmsolver", 3, 2.0, size, size)
    assert np.abs(again.astype(int) - expected.astype(int)).max() <= 1


def test_the_prefix_replaces_only_its_positions(tiny_sd15_path):
    pipe = _pipe(tiny_sd15_path)
    table = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.tokenizer(["a a cat"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    vectors = table[ids[0, 1:3]].unsqueeze(0).clone()
    with torch.no_grad():
        plain = pipe.text_encoder.get_input_embeddings()(ids)
        with AdversarialPrefix(pipe.text_encoder, vectors + 1.0):
            hooked = pipe.text_encoder.get_input_embeddings()(ids)
    assert torch.allclose(hooked[0, 1:3], vectors[0] + 1.0)
    assert torch.equal(hooked[0, :1], plain[0, :1]) and torch.equal(hooked[0, 3:], plain[0, 3:])
    words = word_tokens(pipe.tokenizer)
    assert "cat" in words.values() and all(len(w) >= 2 and w.isalpha() for w in words.values())


def test_the_attack_climbs_the_detector(tiny_sd15_path):
    pipe = _pipe(tiny_sd15_path)
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor

    def redness(images):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))

    words = word_tokens(pipe.tokenizer)
    allowed = [t for t, w in words.items() if w != "red"]
    with torch.enable_grad():
        conds, projected, moves = attack_embeddings(
            pipe, ["a photo of a cat", "a dog"], [[1], [2]], [redness, redness], [allowed, allowed], tokens=3,
            steps=8, learning_rate=0.5, sampler="ddim", sampler_steps=2, projection_weight=0.0, guidance=2.0,
            height=size, width=size, seed=0)
    for start, end in moves:
        assert end > start  # the optimised embeddings score higher on the detector than their random start
    assert all(len(p) == 3 and set(p) <= set(allowed) for p in projected)  # projected to allowed tokens only
    assert conds[0].shape[0] == 1 and conds[0].shape[-1] == pipe.text_encoder.config.hidden_size
