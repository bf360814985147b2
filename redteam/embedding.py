"""White-box embedding attack (UnlearnDiffAtk / PEZ style) on a diffusers SD1.x/2.x pipeline.

``tokens`` adversarial token embeddings are put in front of each target prompt (positions 1..K, after the start
token) and optimised with Adam to maximise the suite's differentiable detector on the image that the generation's
own sampler (the same scheduler, classifier-free guidance; ``sampler_steps`` steps, by default the generation's)
draws from the target's own initial noise; the gradient flows through every UNet call, the VAE decoder and the
detector. A second term
pulls each embedding toward its nearest allowed token (cosine), so that the projection keeps what was found.

Two results per target, both judged by the reader on images from the ordinary generation settings at the target's
seeds (the reader, not the detector the optimisation climbed):

* **embedding**: the optimised conditioning itself (``prompt_embeds``): what a white-box attacker with access to
  the text embeddings achieves;
* **projected**: each adversarial embedding replaced by its nearest allowed token (no word of the risk's request
  phrases, and no word that would make the prompt inadmissible), prepended to the target as text: a prompt anyone
  could type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from inference.generation import set_sampler, to_uint8_images


@dataclass
class EmbeddingResult:
    target: str
    seeds: list[int]
    embedding_success: bool = False
    embedding_score: float = 0.0
    projected_prompt: str = ""
    projected_success: bool = False
    projected_score: float = 0.0
    detector_start: float = 0.0  # detector score of the few-step sampler's image, before / after
    detector_end: float = 0.0
    embedding_images: list = field(default_factory=list, repr=False)
    projected_images: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"target": self.target, "seeds": self.seeds, "embedding_success": self.embedding_success,
                "embedding_score": round(self.embedding_score, 4), "projected_prompt": self.projected_prompt,
                "projected_success": self.projected_success, "projected_score": round(self.projected_score, 4),
                "detector_start": round(self.detector_start, 4), "detector_end": round(self.detector_end, 4)}


def word_tokens(tokenizer) -> dict[int, str]:
    """Token id -> word of every whole-word token of at least two letters (``doctor</w>``)."""
    out = {}
    for token, index in tokenizer.get_vocab().items():
        if token.endswith("</w>"):
            word = token[: -len("</w>")]
            if len(word) >= 2 and word.isalpha():
                out[int(index)] = word
    return out


def sample(unet, scheduler_cls, scheduler_config: dict, steps: int, latents: torch.Tensor, cond: torch.Tensor,
           uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """A differentiable run of a diffusers scheduler (a fresh one from ``scheduler_config``, the generation's sampler)
    with classifier-free guidance, from the initial noise ``latents`` (unscaled, as drawn) to x_0. The scheduler's
    step is plain tensor arithmetic, so the gradient flows through every UNet call."""
    scheduler = scheduler_cls.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        out = unet(model_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.chunk(2)
        x = scheduler.step(out_uncond + guidance * (out_cond - out_uncond), t, x).prev_sample
    return x


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images float (N, 3, H, W) in [0, 1], differentiably."""
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


class AdversarialPrefix:
    """Replaces the token embeddings at positions 1..K of every encoded prompt by ``vectors`` (T, K, D) while
    active (a forward hook on the text encoder's input embedding)."""

    def __init__(self, text_encoder, vectors: torch.Tensor):
        self.embedding = text_encoder.get_input_embeddings()
        self.vectors = vectors
        self.handle = None

    def _hook(self, module, inputs, output):
        k = self.vectors.shape[1]
        return torch.cat([output[:, :1], self.vectors.to(output.dtype), output[:, 1 + k:]], dim=1)

    def __enter__(self):
        self.handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def encode(pipe, prompts: Sequence[str], device) -> torch.Tensor:
    ids = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    return pipe.text_encoder(ids)[0]


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int, device, dtype) -> torch.Tensor:
    """The initial noise the pipeline draws for each seed (one generator per image, as inference.generation)."""
    shape = (1, int(pipe.unet.config.in_channels), height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    rows = [torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(int(s)), dtype=dtype)
            for s in seeds]
    return torch.cat(rows).to(device)


def generate_from_embeds(pipe, cond: torch.Tensor, uncond: torch.Tensor, seeds: Sequence[int], sampler: str,
                         steps: int, guidance: float, height: int, width: int) -> list[np.ndarray]:
    """Images of conditioning ``cond`` (N, L, D) with the ordinary generation settings, one seeded generator per
    image (the same initial noise as a text prompt at that seed)."""
    set_sampler(pipe, sampler)
    device = torch.device(pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        output = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(cond.shape[0], -1, -1),
                      num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                      generator=generators, output_type="pt")
    return list(to_uint8_images(output.images))


def attack_embeddings(pipe, targets: Sequence[str], seeds: Sequence[list[int]],
                      detectors: Sequence[Callable[[torch.Tensor], torch.Tensor]], allowed: Sequence[Sequence[int]],
                      *, tokens: int, steps: int, learning_rate: float, sampler: str, sampler_steps: int,
                      projection_weight: float, guidance: float, height: int, width: int, seed: int
                      ) -> tuple[list[torch.Tensor], list[list[int]], list[tuple[float, float]]]:
    """Optimise ``tokens`` adversarial embeddings per target (all targets in one batch).

    ``seeds[i]``: target i's image seeds (all targets have the same count); ``detectors[i]``: its differentiable
    score; ``allowed[i]``: the token ids its projection may use. Returns per target the conditioning (images, L, D)
    of the optimised embeddings, the projected token ids, and the mean detector score before and after.
    """
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    table = text_encoder.get_input_embeddings().weight.detach()
    scale = float(table.norm(dim=1).mean())
    per = len(seeds[0])
    if any(len(s) != per for s in seeds):
        raise ValueError("every target needs the same number of image seeds")
    placeholder = " ".join(["a"] * tokens)
    prompts = [f"{placeholder} {t}" for t in targets]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    start_ids = [[int(ids[j]) for j in torch.randint(len(ids), (tokens,), generator=generator)] for ids in allowed]
    vectors = torch.nn.Parameter(torch.stack([table[torch.tensor(ids, device=table.device)] for ids in start_ids])
                                 .clone().float())
    optimiser = torch.optim.Adam([vectors], lr=learning_rate * scale)
    with torch.no_grad():
        uncond = encode(pipe, [""], device)
    latents = initial_latents(pipe, [s for group in seeds for s in group], height, width, device, dtype)
    set_sampler(pipe, sampler)  # pipe.scheduler: the generation's sampler, from the checkpoint's config
    scheduler_cls, scheduler_config = type(pipe.scheduler), dict(pipe.scheduler.config)
    allowed_tables = [F.normalize(table[torch.tensor(ids, device=table.device)].float(), dim=1) for ids in allowed]
    history: list[torch.Tensor] = []

    def risk_scores() -> torch.Tensor:
        with AdversarialPrefix(text_encoder, vectors.repeat_interleave(per, dim=0)):
            cond = encode(pipe, [p for p in prompts for _ in range(per)], device)
        x0 = sample(unet, scheduler_cls, scheduler_config, sampler_steps, latents, cond,
                    uncond.expand(cond.shape[0], -1, -1), guidance)
        images = decode(vae, x0)
        scores = torch.stack([detectors[i](images[i * per:(i + 1) * per]).mean() for i in range(len(targets))])
        return scores

    for _ in range(steps):
        optimiser.zero_grad()
        scores = risk_scores()
        history.append(scores.detach())
        pull = torch.stack([1 - (F.normalize(vectors[i], dim=1) @ allowed_tables[i].T).max(dim=1).values.mean()
                            for i in range(len(targets))])
        loss = (-scores + projection_weight * pull).sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        final = risk_scores()
        with AdversarialPrefix(text_encoder, vectors.repeat_interleave(per, dim=0)):
            conds = encode(pipe, [p for p in prompts for _ in range(per)], device)
        projected = []
        for i in range(len(targets)):
            similarity = F.normalize(vectors[i], dim=1) @ allowed_tables[i].T
            projected.append([int(allowed[i][j]) for j in similarity.argmax(dim=1)])
    start = history[0] if history else final
    return ([conds[i * per:(i + 1) * per] for i in range(len(targets))], projected,
            [(float(start[i]), float(final[i])) for i in range(len(targets))])
